"""MLflow conventions: the one package that knows run names, tags, artifacts and the store.
`store` (URI, client, retries), `runs` (a notebook's run and what it logs), `experiments`,
`lineage`, `notebook_status`, and `models` (registry and URIs). Each name is imported on first
use, so reading a cached model never loads MLflow."""

import importlib

_HOMES = {
    "experiments": ("experiment_id",),
    "runs": """HEADLINE_TAG MAX_PARAM_LENGTH NOTEBOOK_TAG child_run device environment finish flatten
        headline kernel_parameters log_dataset log_environment log_figure log_file log_history
        log_metrics log_params log_table log_text notebook_file pip_freeze set_tags start""".split(),
    "store": """TrackingServerError active_run_id answers client default_artifact_root ensure_store
        is_server retry server_down tracking_uri unreachable why_unreachable""".split(),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
SUBMODULES = ("experiments", "lineage", "models", "notebook_status", "runs", "store")
__all__ = sorted(_HOME_OF)


def __getattr__(name: str):
    if name in _HOME_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME_OF[name]}"), name)
    elif name in SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_HOME_OF, *SUBMODULES])
