"""`mmlab doctor`: one line per check, each a `Finding`: `ok`, `warn` (an optional part is off)
or `fail` (a batch cannot run), with how to fix it. Exit code 1 only when a check fails."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

MIN_PYTHON = (3, 10)
MIN_FREE_GB = 2.0  # a default batch writes a few hundred MB; features and models add more


@dataclass(frozen=True)
class Finding:
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""


def check_python() -> Finding:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Finding("fail", f"{version} at {sys.executable}", f"use Python {need} or newer")
    return Finding("ok", f"{version} at {sys.executable}")


def check_mmlab() -> Finding:
    import mmlab

    where = Path(mmlab.__file__).resolve().parent.parent
    try:
        installed = metadata.version("mmlab")
    except metadata.PackageNotFoundError:
        fix = "make setup (or: pip install -e '.[all]')"
        return Finding("warn", f"{mmlab.__version__} from {where} (not installed)", fix)
    return Finding("ok", f"{installed} from {where}")


def check_torch() -> Finding:
    try:
        import torch
    except ImportError as error:
        return Finding("fail", f"cannot import torch ({error})", "make setup")
    threads = torch.get_num_threads()
    if torch.cuda.is_available():
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Finding("ok", f"{torch.__version__}, CUDA {torch.version.cuda}: {gpus}")
    return Finding("ok", f"{torch.__version__}, CPU only ({threads} threads); no CUDA device")


def check_extras() -> Finding:
    from mmlab.core.extras import EXTRAS

    missing: dict[str, list[str]] = {}
    for extra in EXTRAS.values():
        try:
            metadata.version(extra.distribution)
        except metadata.PackageNotFoundError:
            missing.setdefault(extra.extra, []).append(extra.distribution)
    if missing:
        names = "; ".join(f"[{e}] {', '.join(d)}" for e, d in sorted(missing.items()))
        wanted = ",".join(sorted(missing))
        return Finding("warn", f"not installed: {names}", f"pip install 'mmlab[{wanted}]'")
    return Finding("ok", "lab, audio, video, text")


def check_java() -> Finding:
    java = shutil.which("java")
    if java is None:
        fix = "install a JRE (apt-get install default-jre-headless; conda: openjdk)"
        return Finding("warn", "java not on PATH: caption evaluation leaves METEOR out", fix)
    return Finding("ok", f"{java} (METEOR)")


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def check_chromium() -> Finding:
    found = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if found is None:
        default = Path.home() / ".cache/ms-playwright"
        cache = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH", default))
        browsers = sorted(cache.glob("chromium*")) if cache.is_dir() else []
        found = str(browsers[-1]) if browsers else None
    if found is None:
        fix = "apt-get install chromium (or: playwright install chromium)"
        return Finding("warn", "no Chromium: browser tests and page screenshots cannot run", fix)
    return Finding("ok", found)


def check_kernel() -> Finding:
    from mmlab.batch.kernels import KERNEL, kernel_python

    python = kernel_python()
    if python is None:
        why = f"no '{KERNEL}' Jupyter kernel: JupyterLab will not list it"
        return Finding("warn", why, "make kernel")
    if os.path.abspath(python) != os.path.abspath(sys.executable):
        return Finding(
            "warn",
            f"'{KERNEL}' runs {python}, not this Python ({sys.executable}); "
            "batches fall back to the 'python3' kernel",
            "make kernel (from this checkout)",
        )
    return Finding("ok", f"'{KERNEL}' runs this Python")


def check_store() -> Finding:
    """Reads the store without creating it: a new workspace's SQLite file is made by its first
    run (MLflow's schema migrations take a while on a busy machine)."""
    from mlflow.tracking import MlflowClient

    from mmlab.tracking import store

    uri = store.tracking_uri()
    db = store.sqlite_path(uri)
    if db is not None and not db.exists():
        folder = next(p for p in (db.parent, *db.parent.parents) if p.exists())
        if not os.access(folder, os.W_OK):
            fix = "set MMLAB_HOME or MLFLOW_TRACKING_URI to a writable place"
            return Finding("fail", f"{uri}: cannot create it, {folder} is not writable", fix)
        return Finding("ok", f"{uri} (created by the first run)")
    if not store.answers(uri):  # before MLflow's retries, which take minutes
        fix = "start it (`make server`, or ask whoever runs it), or unset MLFLOW_TRACKING_URI"
        return Finding("fail", f"the tracking server {uri} does not answer", fix)
    try:
        found = store.retry(MlflowClient(uri).search_experiments, attempts=3)
    except Exception as error:  # any failure to reach the store is this check's finding
        fix = "check MLFLOW_TRACKING_URI (unset: the workspace's mlflow.db)"
        return Finding("fail", f"{uri}: {type(error).__name__}: {error}", fix)
    return Finding("ok", f"{uri} ({len(found)} experiments)")


def check_disk() -> Finding:
    from mmlab.core import workspace

    root = workspace.root()
    free = shutil.disk_usage(root if root.exists() else Path.cwd()).free / 1e9
    detail = f"{free:.1f} GB free at {root}"
    if free < MIN_FREE_GB:
        return Finding("warn", detail, f"free at least {MIN_FREE_GB:.0f} GB (make clean)")
    return Finding("ok", detail)


CHECKS: dict[str, Callable[[], Finding]] = {
    "python": check_python,
    "mmlab": check_mmlab,
    "torch": check_torch,
    "extras": check_extras,
    "java": check_java,
    "chromium": check_chromium,
    "kernel": check_kernel,
    "store": check_store,
    "disk": check_disk,
}


def run_checks(names: list[str] | None = None) -> dict[str, Finding]:
    unknown = sorted(set(names or ()) - set(CHECKS))
    if unknown:
        raise KeyError(f"unknown check(s) {unknown}; valid: {sorted(CHECKS)}")
    findings = {}
    for name in names or list(CHECKS):
        try:
            findings[name] = CHECKS[name]()
        except Exception as error:  # a broken check is reported, never a traceback
            findings[name] = Finding("fail", f"the check itself failed: {error!r}")
    return findings


def report(findings: dict[str, Finding], as_json: bool = False) -> str:
    if as_json:
        return json.dumps({n: vars(f) for n, f in findings.items()}, indent=2)
    width = max(map(len, findings))
    lines = []
    for name, f in findings.items():
        lines.append(f"{f.status:<4}  {name:<{width}}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {f.fix}")
    return "\n".join(lines)
