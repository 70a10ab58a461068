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
from dataclasses import fields

from mmlab.core import parameters_cell
from mmlab.train import distributed

NOTEBOOK = "03_caption_training"
# notebook 03's parameters this script takes, by the same names and defaults
NAMES = """dataset limit image_encoder grid_layer image_size decoder decoder_options epochs
batch_size lr attention_penalty patience monitor max_len device seed registered_model""".split()


def parse(argv=None) -> argparse.Namespace:
    p = parameters_cell.torchrun_parser(NOTEBOOK, NAMES, "mmlab.captioning.ddp")
    # not a notebook parameter: notebook 03 keeps TrainConfig's default
    p.add_argument("--metric-tokenizer", default="auto", help="auto, ptb or python")
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
        grid = dict(kind="grid", layer=args.grid_layer, device=str(group.device))
        extractor = features.create("image", args.image_encoder, image_size=args.image_size, **grid)
        encoder = captioning.GridEncoder(extractor)
        splits = distributed.main_first(
            group,
            lambda: {
                s: captioning.caption_data(ds, s, extractor, encoder, vocab)
                for s in ("train", "validation")
            },
        )
        options = dict(max_len=args.max_len, seed=args.seed, **args.decoder_options)
        captioner = captioning.build(args.decoder, encoder, vocab, **options)
        # the options named like the recipe's fields (epochs, lr, monitor, ...) are its values
        recipe = {f.name for f in fields(captioning.TrainConfig)}
        config = captioning.TrainConfig(**{k: v for k, v in vars(args).items() if k in recipe})
        params = {**vars(args), "processes": group.size, "vocab_size": len(vocab)}
        with distributed.main_run(group, NOTEBOOK, params, {"mmlab.launcher": "torchrun"}):
            on_epoch = captioning.log_epoch if group.main else None
            result = captioning.train_captioner(
                captioner, splits["train"], splits["validation"], config, on_epoch
            )
            if group.main:
                name = args.registered_model or None
                captioning.log_captioner(captioner, registered_model_name=name, alias="candidate")
                tracking.log_metrics({"best_epoch": result.best_epoch})
                tracking.headline(f"best_{result.monitor}", result.best_score)
        if group.main:
            print(f"best {result.monitor} {result.best_score:.4f} at epoch {result.best_epoch}")
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
