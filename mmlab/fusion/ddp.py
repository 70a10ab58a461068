"""One fusion method trained on N processes under torchrun: a run of notebook 02's recipe.

    torchrun --nproc-per-node 4 -m mmlab.fusion.ddp --device cuda          # 4 GPUs, NCCL
    torchrun --nproc-per-node 2 -m mmlab.fusion.ddp --method grid_cross_attention --seed 1

Every process builds the same inputs (rank 0 fills the feature cache first, the others read
it) and the same model; `--batch-size` is the global batch, split over the processes. Rank 0
alone talks to MLflow: one run in the experiment `02_fusion_comparison` (tagged
`mmlab.launcher=torchrun`, `fusion_method`, `seed`) with the validation curves and the test
scores.
"""

from __future__ import annotations

import argparse
from functools import partial

from mmlab.core import parameters_cell
from mmlab.train import distributed

NOTEBOOK = "02_fusion_comparison"
# notebook 02's parameters this script takes, by the same names and defaults
NAMES = """dataset limit task modalities encoders token_encoders extra_pairs mismatched epochs
patience hidden batch_size lr schedule warmup_epochs device""".split()


def parse(argv=None) -> argparse.Namespace:
    p = parameters_cell.torchrun_parser(NOTEBOOK, NAMES, "mmlab.fusion.ddp")
    # one run: the notebook's `methods` and `seeds` name several
    p.add_argument("--method", default="grid_cross_attention", help='e.g. "name:key=value"')
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> None:
    from mmlab import tracking
    from mmlab.data import load_dataset
    from mmlab.features import resolve_device
    from mmlab.fusion import compare, inputs
    from mmlab.fusion.train import TrainConfig

    args = parse(argv)
    group = distributed.setup(resolve_device(args.device))
    try:
        (choice,) = compare.expand([args.method], args.modalities)
        ds = load_dataset(args.dataset, limit=args.limit or None)
        pooled = inputs.select(args.encoders, args.modalities)
        chosen = {choice.form: args.token_encoders if choice.form == "tokens" else pooled}
        build = partial(inputs.build, ds, args.task, chosen.get("pooled"), chosen.get("tokens"))
        # extra and mismatched pairs are drawn from scenes: only the match task has them
        match = args.task == "match"
        pairs = dict(extra_pairs=args.extra_pairs, mismatched=args.mismatched) if match else {}
        data = distributed.main_first(group, lambda: build(device=str(group.device), **pairs))
        recipe = {
            k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "patience", "schedule")
        }
        warmup = args.warmup_epochs / args.epochs  # the loop counts a share of all steps
        config = TrainConfig(**recipe, warmup=warmup, device=str(group.device))
        tags = {"mmlab.launcher": "torchrun", "fusion_method": choice.label, "seed": str(args.seed)}
        params = {**vars(args), "processes": group.size}
        with distributed.main_run(group, NOTEBOOK, params, tags):
            row, history, _, _ = compare.run_one(data, choice, args.seed, config, args.hidden)
            if group.main:
                tracking.log_history(history, start_step=1)
                tracking.log_metrics(row)
                tracking.headline(compare.METRIC, row[compare.METRIC])
        if group.main:
            print(f"{choice.label} seed {args.seed}: test accuracy {row[compare.METRIC]:.3f}")
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
