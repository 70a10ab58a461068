"""MLflow's entry point for the generator model ("models from code": nothing is pickled).
MLflow copies this file into each logged generator and runs it at load, with the model's own
copy of `mmlab` (under `code/`) on the path. A bad prompt or setting is a 400 over HTTP."""

from __future__ import annotations

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import set_model

PROMPT_COLUMN = "prompt"


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Loads the generator folder logged beside it; `predict` draws one image per prompt."""

    def load_context(self, context):
        from mmlab.generation.saving import FILES, read_generator

        self.generator = read_generator(context.artifacts[FILES])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from mmlab.generation.saving import DEFAULT_GUIDANCE, png_bytes

        if isinstance(model_input, pd.DataFrame):
            if PROMPT_COLUMN not in model_input.columns:
                raise MlflowException.invalid_parameter_value(
                    f"expected a column {PROMPT_COLUMN!r} of sentences, got columns "
                    f"{list(map(str, model_input.columns))}"
                )
            prompts = model_input[PROMPT_COLUMN].tolist()
        else:
            prompts = list(model_input) if isinstance(model_input, list | tuple) else [model_input]
        params = params or {}
        try:
            images = self.generator.generate(
                prompts,
                guidance=float(params.get("guidance", DEFAULT_GUIDANCE)),
                steps=int(params.get("steps", self.generator.default_steps)),
                seed=int(params.get("seed", 0)),
            )
        except ValueError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None
        return pd.DataFrame({"image": png_bytes(images)})


set_model(GeneratorModel())
