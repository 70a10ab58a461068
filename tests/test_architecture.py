"""The layers of docs/architecture.md hold in the code: every import in mmlab/ points to its own
package or down, never to a peer on the same line, and there is no import cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mmlab"


def layers() -> list[list[str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    return [line.split("|")[0].split() for line in block.group(1).splitlines() if line.strip()]


TOPS = {
    p.stem if p.is_file() else p.name
    for p in PACKAGE.iterdir()
    if p.suffix == ".py" or (p / "__init__.py").is_file()
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The mmlab modules `path` imports, anywhere in it (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mmlab.")}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "mmlab":  # a module of mmlab, or a name of its __init__
                found |= {f"mmlab.{a.name}" if a.name in TOPS else "mmlab" for a in node.names}
            elif node.module.startswith("mmlab."):  # `from mmlab.batch import tune` is tune
                found |= {
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in MODULES
                    else node.module
                    for a in node.names
                }
    return found


def top(module: str) -> str:
    """The layer-level name of a module: its first package under mmlab (`__main__` is the CLI)."""
    name = module.split(".")[1] if "." in module else "cli"
    return "cli" if name == "__main__" else name


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_package_is_in_a_layer():
    placed = {name for layer in layers() for name in layer}
    present = {top(m) for m in GRAPH if m != "mmlab"}
    assert present <= placed, f"add to docs/architecture.md's layers: {sorted(present - placed)}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    rank = {name: i for i, layer in enumerate(layers()) for name in layer}
    here = top(module)
    for target in sorted(GRAPH[module]):
        there = top(target)
        if there == here or target == "mmlab":
            continue
        assert rank[there] > rank[here], (
            f"{module} imports {target}: {there} is not below {here} in docs/architecture.md"
        )


def test_no_import_cycle():
    known = set(GRAPH)

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {resolve(t) for t in ts} - {None, m} for m, ts in GRAPH.items()}
    # A package's __init__ importing its own members is how a package exports; not a cycle.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
