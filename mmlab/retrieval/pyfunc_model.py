"""The MLflow pyfunc of a retrieval model, as models from code: MLflow runs this file to get the
model, so nothing of ours is pickled. Input: a DataFrame with a `text` column (captions to find
images for) or an `image` column (image paths to find captions for); output: one row per hit."""

import mlflow
import mlflow.pyfunc
import pandas as pd

from mmlab.retrieval.saving import FILES
from mmlab.retrieval.searcher import Searcher


class SearchModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: `predict(DataFrame with text or image column, params={"k": 5})`."""

    searcher: Searcher | None = None

    def load_context(self, context) -> None:
        self.searcher = Searcher.load(context.artifacts[FILES])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        k = int((params or {}).get("k", 5))
        for column, modality in (("text", "text"), ("image", "image"), ("audio", "audio")):
            if column in model_input.columns:
                return self.searcher.search(modality, list(model_input[column]), k)
        raise KeyError(
            f"the input needs a 'text', 'image' or 'audio' column; got {list(model_input.columns)}"
        )


mlflow.models.set_model(SearchModel())
