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
import json

from mmlab.train import distributed

NOTEBOOK = "02_fusion_comparison"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m mmlab.fusion.ddp")
    p.add_argument("--dataset", default="synthetic", help="any mmlab.data.load_dataset source")
    p.add_argument("--task", default="match")
    p.add_argument("--method", default="grid_cross_attention", help='e.g. "name:key=value"')
    p.add_argument(
        "--encoders",
        type=json.loads,
        default={"image": "efficientnet_lite0:image_size=128", "text": "minilm"},
        help="JSON: pooled encoders by modality (pooled methods)",
    )
    p.add_argument(
        "--token-encoders",
        type=json.loads,
        default={"image": "efficientnet_lite0:image_size=128,kind=grid,layer=mid", "text": "vocab"},
        help="JSON: token encoders by modality (token methods)",
    )
    p.add_argument("--extra-pairs", type=int, default=4)
    p.add_argument("--mismatched", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=22)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="global, over all processes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="constant")
    p.add_argument("--device", default="auto", help="cuda: one GPU per process (NCCL)")
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
        (choice,) = compare.expand([args.method], ["image", "text"])
        ds = load_dataset(args.dataset)
        pairs = (
            dict(extra_pairs=args.extra_pairs, mismatched=args.mismatched)
            if args.task == "match"
            else {}
        )
        encoders = {choice.form: args.token_encoders if choice.form == "tokens" else args.encoders}
        data = distributed.main_first(
            group,
            lambda: inputs.build(
                ds,
                args.task,
                encoders.get("pooled"),
                encoders.get("tokens"),
                device=str(group.device),
                **pairs,
            ),
        )
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            patience=args.patience,
            schedule=args.schedule,
            device=str(group.device),
        )
        tags = {"mmlab.launcher": "torchrun", "fusion_method": choice.label, "seed": str(args.seed)}
        params = {**vars(args), "processes": group.size}
        with distributed.main_run(group, NOTEBOOK, params, tags):
            row, history, _ = compare.run_one(data, choice, args.seed, config, args.hidden)
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
