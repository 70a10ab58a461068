"""Caption training on N processes under torchrun: notebook 03's training as a script.

    torchrun --nproc-per-node 4 -m mmlab.captioning.ddp --device cuda     # 4 GPUs, NCCL
    torchrun --nproc-per-node 2 -m mmlab.captioning.ddp --epochs 2        # 2 CPU processes, gloo

Every process loads the data and builds the same captioner; rank 0 fills the feature cache
first (the others then read it). `--batch-size` is the global batch, split over the processes.
Rank 0 alone talks to MLflow: one run in the experiment `03_caption_training` (tagged
`mmlab.launcher=torchrun`) with the parameters, the epochs, the model (registered with alias
`candidate` unless `--registered-model ""`) and the headline `best_val_cider`. Evaluate the
model with notebook 04.
"""

from __future__ import annotations

import argparse
import json

from mmlab.train import distributed

NOTEBOOK = "03_caption_training"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m mmlab.captioning.ddp")
    p.add_argument("--dataset", default="synthetic", help="any mmlab.data.load_dataset source")
    p.add_argument("--limit", type=int, default=0, help="first N rows of each split (0: all)")
    p.add_argument("--image-encoder", default="efficientnet_lite0")
    p.add_argument("--grid-layer", default="mid")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--decoder", default="transformer")
    p.add_argument(
        "--decoder-options", type=json.loads, default={}, help='JSON, e.g. {"layers": 3}'
    )
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64, help="global, over all processes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--attention-penalty", type=float, default=0.0)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--monitor", default="cider")
    p.add_argument("--max-len", type=int, default=30)
    p.add_argument("--metric-tokenizer", default="auto")
    p.add_argument("--device", default="auto", help="cuda: one GPU per process (NCCL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--registered-model", default="mmlab-captioner", help='"": not registered')
    return p.parse_args(argv)


def main(argv=None) -> None:
    from mmlab import captioning, features, tracking
    from mmlab.data import load_dataset
    from mmlab.data.text import Vocabulary
    from mmlab.features.device import resolve_device

    args = parse(argv)
    group = distributed.setup(resolve_device(args.device))
    try:
        ds = load_dataset(args.dataset, limit=args.limit or None)
        vocab = Vocabulary.build(ds["train"]["captions"], max_len=args.max_len)
        extractor = features.create(
            "image",
            args.image_encoder,
            image_size=args.image_size,
            kind="grid",
            layer=args.grid_layer,
            device=str(group.device),
        )
        encoder = captioning.GridEncoder(extractor)
        splits = distributed.main_first(
            group,
            lambda: {
                s: captioning.caption_data(ds, s, extractor, encoder, vocab)
                for s in ("train", "validation")
            },
        )
        captioner = captioning.build(
            args.decoder,
            encoder,
            vocab,
            max_len=args.max_len,
            seed=args.seed,
            **args.decoder_options,
        )
        config = captioning.TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            attention_penalty=args.attention_penalty,
            patience=args.patience,
            monitor=args.monitor,
            metric_tokenizer=args.metric_tokenizer,
            device=args.device,
            seed=args.seed,
        )
        params = {**vars(args), "processes": group.size, "vocab_size": len(vocab)}
        with distributed.main_run(group, NOTEBOOK, params, {"mmlab.launcher": "torchrun"}):
            on_epoch = captioning.log_epoch if group.main else None
            result = captioning.train_captioner(
                captioner, splits["train"], splits["validation"], config, on_epoch
            )
            if group.main:
                captioning.log_captioner(
                    captioner,
                    registered_model_name=args.registered_model or None,
                    alias="candidate",
                )
                tracking.log_metrics({"best_epoch": result.best_epoch})
                tracking.headline(f"best_{result.monitor}", result.best_score)
        if group.main:
            print(f"best {result.monitor} {result.best_score:.4f} at epoch {result.best_epoch}")
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
