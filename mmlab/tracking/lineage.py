"""Datasets as MLflow run inputs, one per split: an `mlflow.data` dataset `<name>/<split>` with
our fingerprint as digest and the split as `context`, so metrics can link to their split."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

DIGEST_LENGTH = 36  # MLflow's limit on a dataset digest


def split_dataset(table: Any, name: str, digest: str, source: str):
    """One split as an `mlflow.data` dataset (schema and row count, never the rows)."""
    import mlflow.data

    with warnings.catch_warnings():  # schema inference warns about image and list columns
        warnings.simplefilter("ignore")
        if hasattr(table, "features") and hasattr(table, "column_names"):
            return mlflow.data.from_huggingface(table, name=name, digest=digest, source=source)
        return mlflow.data.from_pandas(table, name=name, digest=digest, source=source)


def log_splits(
    dataset: Mapping[str, Any], fingerprint: str, name: str, source: str = ""
) -> dict[str, Any]:
    """Log every split as a run input (context = the split); returns them by split."""
    import mlflow

    from mmlab.tracking import store

    digest = fingerprint[:DIGEST_LENGTH]
    where = source or json.dumps({"dataset": name})
    inputs = {
        split: split_dataset(table, f"{name}/{split}", digest, where)
        for split, table in dataset.items()
    }
    for split, entity in inputs.items():
        store.retry(mlflow.log_input, entity, context=split)
    return inputs


def log_metrics(
    metrics: Mapping[str, float], step: int = 0, *, model_id: str | None = None, dataset: Any = None
) -> None:
    """Log metrics to the run, linked to the logged model and the split they measure."""
    import mlflow

    from mmlab.tracking import store

    store.active_run_id()  # a clear error when no run is active
    values = {k: float(v) for k, v in metrics.items()}
    store.retry(mlflow.log_metrics, values, step=step, model_id=model_id, dataset=dataset)
