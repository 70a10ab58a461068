"""MLflow's entry point for the captioner model ("models from code": nothing is pickled).

MLflow copies this file into every logged captioner and runs it when the model loads; the
model's own copy of `mmlab` (under `code/`) is on the path by then.
"""

from mlflow.models import set_model

from mmlab.captioning.serving import CaptionerModel

set_model(CaptionerModel())
