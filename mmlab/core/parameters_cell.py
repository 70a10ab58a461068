"""A notebook's `parameters` cell (Papermill's tag): the names it assigns and their defaults.

The batch runner checks batch files against the names and logs the defaults it can read;
`tracking.start` reads the names to log the kernel's values of them, and the torchrun scripts
take options from them (`argument_parser`): no one lists a notebook's parameters twice.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

import nbformat


def _tree(notebook: Path) -> ast.Module | None:
    """The parsed parameters cell, None if the notebook has none; SyntaxError names the file."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            # IPython magics and shell lines are not Python; they assign nothing either.
            lines = [
                ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!"))
            ]
            try:
                return ast.parse("\n".join(lines))
            except SyntaxError as error:
                raise SyntaxError(
                    f"{notebook}: parameters cell is not valid Python: {error}"
                ) from None
    return None


def _assignments(tree: ast.Module | None) -> list[ast.Assign | ast.AnnAssign]:
    if tree is None:
        return []
    return [n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))]


def names(notebook: Path) -> list[str]:
    """Names the parameters cell assigns, in the cell's order (tuple targets included)."""
    found: list[str] = []
    for node in _assignments(_tree(notebook)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.id not in found:
                    found.append(name.id)
    return found


def defaults(notebook: Path) -> dict[str, Any]:
    """`name = literal` defaults of the parameters cell; a computed value (`os.cpu_count()`)
    is left out: only the kernel knows it."""
    values: dict[str, Any] = {}
    for node in _assignments(_tree(notebook)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if node.value is None or not all(isinstance(t, ast.Name) for t in targets):
            continue
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            continue
        for target in targets:
            values[target.id] = value
    return values


def _json(text: str, strict: bool = True) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:  # argparse's message names the option
        if not strict:
            return text
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {text!r}") from None


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"{text!r} is not true/false, 1/0 or yes/no")
    return text.lower() in ("true", "1", "yes")


# How an option reads its text, by the type of the default; int, float and str read their own.
_READERS = {bool: _boolean, dict: _json, list: _json, tuple: _json}
_READERS[type(None)] = lambda text: _json(text, strict=False)  # JSON, else the text as given


def argument_parser(
    notebook: Path, names: list[str], prog: str, help: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    """A `--kebab-case` option per name of the notebook's parameters cell, of its default and
    type: a script that runs the notebook's recipe keeps the notebook's defaults."""
    found = defaults(notebook)
    parser = argparse.ArgumentParser(prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name in names:
        if name not in found:
            raise ValueError(f"{notebook}: no parameter {name!r} with a literal default")
        kind = _READERS.get(type(found[name]), type(found[name]))
        option, text = "--" + name.replace("_", "-"), (help or {}).get(name, "as in the notebook")
        metavar = "JSON" if kind is _json else None
        parser.add_argument(option, type=kind, default=found[name], help=text, metavar=metavar)
    return parser


def torchrun_parser(notebook: str, names: list[str], module: str) -> argparse.ArgumentParser:
    """`argument_parser` of the script `-m module` that runs notebook `notebook`'s recipe on N
    processes: its batch is the global one."""
    path = Path(__file__).resolve().parents[2] / "notebooks" / f"{notebook}.ipynb"
    help = {"batch_size": "global, over all processes", "device": "cuda: one GPU per process"}
    return argument_parser(path, names, f"torchrun --nproc-per-node N -m {module}", help)
