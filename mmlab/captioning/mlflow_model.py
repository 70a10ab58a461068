"""MLflow's entry point for the captioner model ("models from code": nothing is pickled).
MLflow copies this file into each logged captioner and runs it at load, with the model's own
copy of `mmlab` (under `code/`) on the path."""

from mlflow.models import set_model

from mmlab.captioning.serving import CaptionerModel

set_model(CaptionerModel())
