"""The `mmlab` command: run and tune notebook batches, browse runs, make data, caption images.
Subcommands live in `COMMANDS`; handlers import heavy modules, so `--help` starts fast."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class UsageError(Exception):
    """Bad input on the command line: printed without a traceback, exit code 2."""


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


def _set_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a parameter (key=value, or stage.key=value)",
    )


def _executor_arguments(p: argparse.ArgumentParser, what: str) -> None:
    from mmlab.batch import executors

    p.add_argument(
        "--executor",
        default="local",
        choices=executors.names(),
        help=f"where {what} run: local processes (default) or Ray tasks",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="auto|ray://HOST:10001",
        help="--executor ray: the cluster to use (default: start a local instance)",
    )


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", type=Path, help="batch file (YAML)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel executions (cores)")
    p.add_argument("--only", action="append", default=[], metavar="STAGE", help="run one stage")
    _set_argument(p)
    p.add_argument("--dry-run", action="store_true", help="print the expanded plan only")
    p.add_argument("--force", action="store_true", help="re-run executions found in the cache")
    _executor_arguments(p, "executions")


def _run(args: argparse.Namespace) -> int:
    return _run_batch(args, only=args.only, force=args.force)


def _tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", type=Path, help="batch file (YAML)")
    p.add_argument("stage", help="the stage with a `search:` block to run (or resume)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="trials at once (cores)")
    p.add_argument(
        "--trials", type=int, default=None, help="trials in all (default: the block's `trials`)"
    )
    _set_argument(p)
    p.add_argument("--dry-run", action="store_true", help="print the search's plan only")
    _executor_arguments(p, "trials")


def _tune(args: argparse.Namespace) -> int:
    """A search stage and the stages it needs, as `mmlab run --only STAGE` would run them."""
    return _run_batch(args, only=[args.stage], trials=args.trials)


def _run_batch(args: argparse.Namespace, **options) -> int:
    """`launch.run` for `mmlab run` and `mmlab tune`; its errors as the command's."""
    from mmlab import tracking
    from mmlab.batch import config, launch, tune
    from mmlab.batch.config import BatchError
    from mmlab.batch.executors import ExecutorError

    for flag in ("jobs", "trials"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UsageError(f"--{flag} {value}: expected at least 1")
    try:
        if args.command == "tune":  # else the runner would run the stage as a plain one
            tune.require_search(config.load(args.params, list(args.overrides)), args.stage)
        report = launch.run(
            args.params,
            jobs=args.jobs,
            overrides=args.overrides,
            dry_run=args.dry_run,
            executor=args.executor,
            executor_options={"address": args.address},
            **options,
        )
    except (BatchError, ExecutorError) as error:
        raise UsageError(str(error)) from None
    except tracking.TrackingServerError as error:
        print(f"mmlab {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0 if report is None or report.ok else 1


def _listen_arguments(
    p: argparse.ArgumentParser, port: int, port_help: str = "port (default: %(default)s)"
) -> None:
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=port, help=port_help)


def _ui_arguments(p: argparse.ArgumentParser) -> None:
    _listen_arguments(p, 5000)


def ui_command(host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for the workspace store (artifacts beside it)."""
    from mmlab import tracking

    uri = tracking.ensure_store()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    artifacts = tracking.default_artifact_root(uri)
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    return command + ["--host", host, "--port", str(port)]


def _ui(args: argparse.Namespace) -> int:
    command = ui_command(args.host, args.port)
    print(f"MLflow UI on http://{args.host}:{args.port}  ({command[5]})", flush=True)
    return run_server(command)


def run_server(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run a server until it exits or we are stopped; its own process group, so stopping
    `mmlab ui` / `mmlab serve` stops the server's workers too."""
    with subprocess.Popen(command, env=env, start_new_session=True) as server:
        try:
            return server.wait()
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait()


def _data_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    synth = sub.add_parser("synth", help="generate the embedded synthetic dataset")
    synth.add_argument("--out", type=Path, required=True, help="folder to write the dataset to")
    synth.add_argument("--n", type=int, default=3000, help="examples (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: 0)")
    synth.add_argument("--image-size", type=int, default=128, help="image side in pixels")


def _data(args: argparse.Namespace) -> int:
    from mmlab.data import synthetic

    try:
        out = synthetic.generate(args.out, n=args.n, seed=args.seed, image_size=args.image_size)
    except ValueError as error:  # bad --n / --image-size, explained by the generator
        raise UsageError(str(error)) from None
    print(f"wrote {args.n} examples to {out}")
    return 0


MODEL_HELP = (
    "run id, runs:/<id>/model, models:/NAME@ALIAS, models:/NAME/VERSION, a model folder, or "
    "latest (the newest registered version; the default)"
)


def _caption_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files to caption")
    p.add_argument("--model", default="latest", help=MODEL_HELP)
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy)")


def open_images(paths: list[Path]) -> list:
    """Load every image, or fail naming the first file that is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such image file")
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise UsageError(f"{path}: not a readable image ({error})") from None
    return images


def _caption(args: argparse.Namespace) -> int:
    if args.beam < 1:
        raise UsageError(f"--beam {args.beam}: expected at least 1")
    images = open_images(args.images)  # before the (slow) model load
    from mlflow.exceptions import MlflowException

    from mmlab.captioning import load_captioner

    try:
        captioner = load_captioner(args.model)
    except (FileNotFoundError, LookupError, ValueError, MlflowException) as error:
        raise UsageError(f"--model {args.model}: cannot load a captioner ({error})") from None
    captions = captioner.caption(images, beam_size=args.beam)
    for path, caption in zip(args.images, captions, strict=True):
        print(f"{path}\t{caption}")
    return 0


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help='a sentence, e.g. "a red circle above a blue square"')
    p.add_argument(
        "--model",
        default="models:/mmlab-generator@candidate",
        help="run id, runs:/<id>/model, models:/NAME@ALIAS, models:/NAME/VERSION or a model "
        "folder (default: the generator notebook 06 registered last, alias candidate)",
    )
    p.add_argument("-n", type=int, default=4, help="images to draw (default 4)")
    p.add_argument("--out", type=Path, default=Path("generated"), help="folder for the PNGs")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance w")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (diffusion)")
    p.add_argument("--seed", type=int, default=0, help="the same seed draws the same images")


def _generate(args: argparse.Namespace) -> int:
    import warnings

    if args.n < 1:
        raise UsageError(f"-n {args.n}: expected at least 1 image")
    from mmlab.generation import base, saving, text

    try:
        text.check_prompts([args.prompt])
        base.check_settings(args.guidance, 1 if args.steps is None else args.steps)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        generator = saving.load_generator(args.model)
    except (FileNotFoundError, LookupError, ValueError) as error:
        raise UsageError(f"--model {args.model}: cannot load a generator ({error})") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", base.UnknownWords)
        images = generator.generate(
            [args.prompt] * args.n, guidance=args.guidance, steps=args.steps, seed=args.seed
        )
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    for path in saving.write_pngs(images, args.out, args.prompt, args.seed):
        print(path)
    return 0


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models:/mmlab-captioner@champion", help=MODEL_HELP)
    _listen_arguments(p, 5001)


def _serve(args: argparse.Namespace) -> int:
    from mmlab.tracking import models

    try:
        command, env = models.serve_command(args.model, args.host, args.port)
    except (FileNotFoundError, LookupError, ValueError) as error:
        raise UsageError(f"--model {args.model}: {error}") from None
    print(f"serving {command[6]} on http://{args.host}:{args.port}/invocations", flush=True)
    return run_server(command, env)


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("batches", nargs="+", metavar="BATCH", help="batch name or id; first: baseline")
    p.add_argument(
        "--out", type=Path, help="HTML report (default runs/compare/compare_report.html)"
    )
    p.add_argument("--confidence", type=float, default=0.95, help="level of the intervals")


def _compare(args: argparse.Namespace) -> int:
    """Run notebook 00 through the runner (a tracked run with the executed notebook attached),
    forced: the runs it reads change while its parameters stay the same."""
    import json

    from mmlab import tracking
    from mmlab.batch import compare as batch_compare
    from mmlab.batch import launch
    from mmlab.core import workspace

    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence {args.confidence}: expected a level between 0 and 1")
    try:  # a clear error before a kernel starts
        batch_compare.resolve(args.batches)
    except batch_compare.BatchNotFound as error:
        raise UsageError(str(error)) from None
    out = (args.out or workspace.runs_dir() / "compare" / "compare_report.html").resolve()
    params = {"batches": args.batches, "confidence": args.confidence, "report_path": str(out)}
    overrides = [f"{k}={json.dumps(v)}" for k, v in params.items()]
    batch = Path(__file__).resolve().parent.parent / "params" / "compare.yaml"
    report = launch.run(batch, jobs=1, overrides=overrides, force=True)
    (result,) = report.results
    if not result.ok:
        return 1
    run = tracking.retry(tracking.client().get_run, result.run_id)
    moved = int(run.data.metrics["metrics_moved"])
    print(
        f"{moved} metric{'' if moved == 1 else 's'} moved beyond their intervals: {out} "
        f"(MLflow run {result.run_id}, artifact compare_report.html)"
    )


def _search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", nargs="?", help="a sentence: find the images it describes")
    p.add_argument("--image", type=Path, help="an image: find the captions that match it")
    p.add_argument(
        "--model",
        default="models:/mmlab-searcher@champion",
        help="retrieval model (default: %(default)s; 'latest': the newest "
        "mmlab-searcher), a run id, runs:/ or models:/ URI, or folder",
    )
    p.add_argument("--gallery", help="search this dataset's items instead of the logged gallery")
    p.add_argument("--split", default="test", help="split of --gallery (default: test)")
    p.add_argument("-k", type=int, default=5, help="hits per query (default: 5)")


def _search(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.image is None):
        raise UsageError("give either a sentence or --image PATH")
    if args.k < 1:
        raise UsageError(f"-k {args.k}: expected at least 1")
    images = open_images([args.image]) if args.image else None  # before the model load
    from mmlab.retrieval.saving import load_searcher

    try:  # MLflow's errors come as LookupError: a cached model is read without MLflow
        searcher = load_searcher(args.model)
    except (FileNotFoundError, LookupError) as error:
        raise UsageError(f"--model {args.model}: cannot load a retrieval model ({error})") from None
    modality = "image" if images else "text"
    if args.gallery:
        searcher.use_dataset(args.gallery, args.split, searcher.other(modality))
    hits = searcher.search(modality, images or [args.query], k=args.k)
    for hit in hits.itertuples():
        print(f"{hit.rank}\t{hit.score:.4f}\t{hit.id}\t{hit.item}")
    return 0


def _server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        help="PostgreSQL store, postgresql://USER:PASSWORD@HOST:PORT/DATABASE (default: a local "
        "PostgreSQL in .mmlab/postgres, started and stopped with the server)",
    )
    p.add_argument(
        "--artifacts",
        metavar="DIR|s3://BUCKET/PATH",
        help="where the server stores artifacts (default: .mmlab/artifacts)",
    )
    _listen_arguments(p, 5000, "port, 0 for a free one (default: 5000)")
    p.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic auth (first start: export MLFLOW_AUTH_ADMIN_PASSWORD)",
    )
    p.add_argument("--workers", type=int, default=2, help="server processes (default: 2)")
    p.add_argument("--stop", action="store_true", help="stop this workspace's server")


def _server(args: argparse.Namespace) -> int:
    from mmlab.core import extras
    from mmlab.ops import postgres, server

    if args.stop:
        return server.stop()
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port}: expected 0 (a free one) to 65535")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: expected at least 1")
    settings = server.Settings(
        args.db, args.artifacts, args.host, args.port, args.auth, args.workers
    )
    try:
        return server.serve(settings, out=lambda line: print(line, flush=True))
    except (server.ServerError, postgres.PostgresError, extras.MissingExtra) as error:
        raise UsageError(str(error)) from None


def _doctor_arguments(p: argparse.ArgumentParser) -> None:
    from mmlab.ops.doctor import CHECKS

    names = ", ".join(CHECKS)
    p.add_argument(
        "checks", nargs="*", metavar="CHECK", help=f"checks to run (default: all): {names}"
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")


def _doctor(args: argparse.Namespace) -> int:
    from mmlab.ops import doctor

    try:
        findings = doctor.run_checks(args.checks)
    except KeyError as error:
        raise UsageError(error.args[0]) from None
    print(doctor.report(findings, as_json=args.json))
    return 1 if any(f.status == "fail" for f in findings.values()) else 0


COMMANDS: dict[str, Command] = {
    "run": Command("run a batch of notebooks", _run_arguments, _run),
    "tune": Command("search a stage's parameters with Optuna", _tune_arguments, _tune),
    "ui": Command("MLflow UI on the workspace store", _ui_arguments, _ui),
    "data": Command("generate the embedded synthetic dataset", _data_arguments, _data),
    "caption": Command("caption images with a trained model", _caption_arguments, _caption),
    "generate": Command("draw images from a sentence", _generate_arguments, _generate),
    "serve": Command("serve a captioner over HTTP (MLflow)", _serve_arguments, _serve),
    "server": Command("shared MLflow tracking server on PostgreSQL", _server_arguments, _server),
    "compare": Command("compare batches of runs (notebook 00)", _compare_arguments, _compare),
    "search": Command("search a retrieval model's gallery", _search_arguments, _search),
    "doctor": Command(
        "check the setup: Python, torch, CUDA, Java, the store, disk", _doctor_arguments, _doctor
    ),
}


DESCRIPTION = """\
A Jupyter-first experiment workspace for multimodal learning: notebooks run as
parameterized batches with Papermill, every run tracked in MLflow."""

EXAMPLES = """\
examples:
  mmlab doctor                                  check the setup (first thing to run)
  mmlab run params/default.yaml                 the main batch (what `make run` does)
  mmlab run params/smoke.yaml --dry-run         print the plan, run nothing
  mmlab run params/default.yaml --only fusion --set seeds=5
  mmlab tune params/tune.yaml concat --jobs 2   12 Optuna trials of a stage (resumable)
  mmlab ui                                      MLflow UI on http://127.0.0.1:5000
  mmlab data synth --out data/mine --n 300      generate the synthetic dataset
  mmlab caption scene.png --model models:/mmlab-captioner@champion
  mmlab generate "a red circle above a blue square" -n 4 --out samples/
  mmlab serve                                   the champion captioner over HTTP on :5001
  mmlab server                                  MLflow server on a local PostgreSQL (make server)
  mmlab compare yesterday default               two batches side by side, moved metrics flagged
  mmlab search "a red circle above a blue square" --model <run_id> -k 5

`mmlab COMMAND --help` shows a command's options."""


def parser() -> argparse.ArgumentParser:
    from mmlab import __version__

    top = argparse.ArgumentParser(
        prog="mmlab",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"mmlab {__version__}")
    top.add_argument("--home", type=Path, help="workspace root (default: $MMLAB_HOME or checkout)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help))
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.home:
        os.environ["MMLAB_HOME"] = str(args.home.resolve())
    # SIGTERM unwinds like Ctrl-C, so a batch that is stopped cleans up after itself.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return COMMANDS[args.command].handler(args)
    except UsageError as error:
        print(f"mmlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
