"""mmlab: a Jupyter-first experiment workspace for multimodal learning."""

__version__ = "0.1.0"
