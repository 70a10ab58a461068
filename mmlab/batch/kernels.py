"""The Jupyter kernel notebooks run on: `mmlab`, registered by `make kernel`, so JupyterLab opens
them on this checkout's Python. The runner uses it when it is the runner's own Python, else
ipykernel's `python3`: a batch never runs on another venv's packages."""

from __future__ import annotations

import os
import sys
from functools import cache

KERNEL = "mmlab"
DISPLAY_NAME = "Python (mmlab)"
FALLBACK = "python3"  # ipykernel's native kernel: always sys.executable


def kernel_python(name: str = KERNEL) -> str | None:
    """The interpreter the kernelspec `name` starts, or None if it is not registered."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return None
    return spec.argv[0] if spec.argv else None


@cache
def kernel_name() -> str:
    """`mmlab` if its kernelspec runs this interpreter, else `python3`."""
    python = kernel_python()
    if python and os.path.abspath(python) == os.path.abspath(sys.executable):
        return KERNEL
    return FALLBACK
