"""The MLflow pyfunc entry point (models from code: MLflow runs this file to get the model, so
nothing of ours is pickled). Input: a DataFrame with a `text` column (captions to find images
for) or an `image` column (image paths to find captions for); output: one row per hit."""

import mlflow

from mmlab.retrieval.saving import SearchModel

mlflow.models.set_model(SearchModel())
