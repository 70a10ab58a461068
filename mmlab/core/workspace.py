"""Where the workspace keeps its files: `MMLAB_HOME`, else the checkout holding this package,
else the current directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote


def root() -> Path:
    env = os.environ.get("MMLAB_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists() and (checkout / "notebooks").is_dir():
        return checkout
    return Path.cwd().resolve()


def data_dir() -> Path:
    """Generated and downloaded datasets."""
    return Path(os.environ.get("MMLAB_DATA_DIR") or root() / "data")


def cache_dir() -> Path:
    """Feature cache and other derived, rebuildable files."""
    return Path(os.environ.get("MMLAB_CACHE_DIR") or root() / "cache")


def runs_dir() -> Path:
    """Executed notebooks of batches."""
    return root() / "runs"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI wins; else a SQLite store in the workspace."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///relative` or `sqlite:////absolute` URI (else None)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = unquote(uri[len(prefix) :].split("?", 1)[0])
    return Path(path).absolute() if path and path != ":memory:" else None


def artifact_root() -> str:
    """Artifacts of the embedded store live beside it."""
    return (root() / "mlartifacts").as_uri()


def claim(final: Path, owner: str):
    """Take `final` for this process (a file lock `.NAME.lock` the OS drops when the process dies),
    or None if another holds it. Keep the lock referenced until `.release()`."""
    from filelock import FileLock, Timeout

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # not thread-local: a claim taken in one thread may be released in another
    lock = FileLock(str(final.parent / f".{final.name}.lock"), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        return None
    with atomic_path(final.parent / f".{final.name}.owner") as tmp:
        tmp.write_text(owner)
    return lock


def claimant(final: Path) -> str:
    """Who holds (or last held) the claim on `final`, as its owner wrote it."""
    final = Path(final)
    try:
        return (final.parent / f".{final.name}.owner").read_text().strip()
    except OSError:
        return "another process"


def sweep_stale(final: Path) -> None:
    """Remove the temporary siblings a killed `atomic_path(final)` left; only under `claim(final)`."""
    final = Path(final)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_path(final: Path, replace: bool = True):
    """Yield a temporary sibling path (file or folder), renamed onto `final` only on success.
    `replace=False`: a folder another process put at `final` first stays, and the rename raises
    OSError instead."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if replace and final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
