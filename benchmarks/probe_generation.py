"""Probe: how each generator family's faithfulness on single-object prompts grows with CPU
minutes (`time.process_time`, this process's threads). Prints one row per evaluation:

    .venv/bin/python benchmarks/probe_generation.py diffusion --prior-epochs 14 --every 2
    .venv/bin/python benchmarks/probe_generation.py diffusion --snapshots DIR  # train only
    .venv/bin/python benchmarks/probe_generation.py score --snapshots DIR     # then score
    .venv/bin/python benchmarks/probe_generation.py diffusion --prior-epochs 0 \
        --options '{"downsamplings": 2, "objective": "l1_gradient"}'  # the ceiling alone

After every autoencoder epoch the probe reports the ceiling: the checker's reading of real test
images passed through the autoencoder (`reconstruction_ceiling`), which caps any prior. With
`--snapshots` the generator is saved at each evaluation and autoencoder epoch (with its CPU
minutes) instead of scored, so the scoring can wait for a checker. `cpu_min_train` leaves out
the scoring and the saving. The rows go to benchmarks/RESULTS.md by hand, with the date and the
machine's load."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmlab.data import load_dataset
from mmlab.data.text import Vocabulary
from mmlab.generation import base
from mmlab.generation.checker import AttributeChecker, CheckerConfig, checker_for
from mmlab.generation.faithfulness import faithfulness, reconstruction_ceiling
from mmlab.generation.prompts import prompt_suite
from mmlab.generation.saving import read_generator, write_generator


def _checker(ds, folder: Path | None):
    return (
        AttributeChecker.load(folder) if folder else checker_for(ds, CheckerConfig(image_size=64))
    )


def _score(generator, checker, prompts, args) -> dict:
    metrics = {}
    for w in args.guidance:
        t = time.process_time()
        images = generator.generate([p.text for p in prompts], guidance=w, steps=args.steps)
        seconds = (time.process_time() - t) / len(prompts)
        _, table = faithfulness(checker, images, prompts)
        acc = dict(zip(table["measure"], table["accuracy"], strict=False))
        metrics |= {f"colour_w{w:g}": acc["colour"], f"shape_w{w:g}": acc["shape"]}
        metrics[f"cpu_s_per_image_w{w:g}"] = round(seconds, 3)
    return metrics


def _ceiling(generator, checker, ds, args) -> dict:
    scores = reconstruction_ceiling(checker, generator, ds["test"], rows=args.ceiling_rows)
    return {f"ceiling_{k}": round(scores[k], 3) for k in ("shape", "colour", "count", "exact")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--autoencoder-epochs", type=int, default=4)
    parser.add_argument("--prior-epochs", type=int, default=14)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prior-lr", type=float, default=2e-3)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--options", default="{}", help="the family's options, JSON")
    parser.add_argument("--snapshots", type=Path, help="save the generator instead of scoring")
    parser.add_argument("--checker", type=Path, help="a saved checker folder (default: cached)")
    parser.add_argument(
        "--autoencoder-from",
        type=Path,
        help="a snapshot whose trained autoencoder to start from (with --autoencoder-epochs 0); "
        "its CPU minutes count",
    )
    parser.add_argument("--pattern", default="*", help="score: the snapshot folders to score")
    parser.add_argument("--ceiling-rows", type=int, default=300, help="test images (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    # one thread: on a shared machine a second OpenMP thread spins while it waits for a core,
    # and process_time counts the spinning as work
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    prompts = prompt_suite(ds, per_category=args.prompts, categories=("single",))
    if args.family == "score":
        checker = _checker(ds, args.checker)
        for folder in sorted(args.snapshots.glob(f"{args.pattern}/"), key=lambda p: p.name):
            info = json.loads((folder / "probe.json").read_text())
            generator = read_generator(folder)
            if info.get("stage") == "autoencoder":
                scores = _ceiling(generator, checker, ds, args)
            else:
                scores = _score(generator, checker, prompts, args)
            print(json.dumps({**info, **scores}), flush=True)
        return
    checker = None if args.snapshots else _checker(ds, args.checker)
    vocab = Vocabulary.build(ds["train"]["captions"])
    train = base.generation_data(ds["train"], vocab, 64)
    validation = base.generation_data(ds["validation"], vocab, 64)
    started = time.process_time()
    offset = 0.0  # CPU minutes of a snapshot's autoencoder training
    excluded = 0.0  # CPU seconds of scoring and saving, left out of the training minutes

    def training_minutes():
        return round(offset + (time.process_time() - started - excluded) / 60, 2)

    def snapshot(generator, name, info):
        folder = write_generator(generator, args.snapshots / name)
        (folder / "probe.json").write_text(json.dumps(info))

    def evaluate(generator, epoch):
        nonlocal excluded
        t, minutes = time.process_time(), training_minutes()
        if args.snapshots is None:
            scores = _score(generator, checker, prompts, args)
        else:
            info = {"family": args.family, "stage": "prior", "epoch": epoch}
            snapshot(generator, f"{args.family}-{epoch:03d}", info | {"cpu_min_train": minutes})
            scores = {}
        excluded += time.process_time() - t
        return scores

    def on_epoch(stage, epoch, metrics):
        nonlocal excluded
        t = time.process_time()
        row = {"stage": stage, "epoch": epoch}
        row |= {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        row.pop("cpu_minutes", None)
        row["cpu_min_train"] = training_minutes()
        if stage == "autoencoder":
            mode = generator.autoencoder.training
            if args.snapshots is not None:
                info = {"family": args.family, "stage": stage, "epoch": epoch}
                snapshot(generator, f"{args.family}-ae{epoch:03d}", info | row)
            elif checker is not None:
                row |= _ceiling(generator, checker, ds, args)
            generator.autoencoder.train(mode)
        excluded += time.process_time() - t
        print(json.dumps(row), flush=True)

    torch.manual_seed(0)
    generator = base.create(args.family, vocab, **json.loads(args.options))
    if args.autoencoder_from:
        trained = read_generator(args.autoencoder_from).autoencoder
        generator.autoencoder.load_state_dict(trained.state_dict())
        offset = json.loads((args.autoencoder_from / "probe.json").read_text())["cpu_min_train"]
    config = base.GenTrainConfig(
        autoencoder_epochs=args.autoencoder_epochs,
        prior_epochs=args.prior_epochs,
        batch_size=args.batch_size,
        prior_lr=args.prior_lr,
        evaluate=evaluate,
        evaluate_every=args.every,
    )
    result = base.train_generator(generator, train, validation, config, on_epoch)
    print(
        json.dumps(
            {
                "autoencoder_minutes": result.autoencoder_minutes,
                "prior_minutes": result.prior_minutes,
                "scoring_minutes_left_out": excluded / 60,
                "cpu_min_train": training_minutes(),
            }
        )
    )


if __name__ == "__main__":
    main()
