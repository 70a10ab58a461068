"""Training a captioner: teacher forcing, early stopping on captions actually decoded.
Each step minimises next-word cross-entropy (padding ignored) plus the doubly stochastic
attention penalty `lambda * mean_i (1 - sum_t alpha_ti)^2`, with AdamW, gradient clipping and a
warm-up schedule. After each epoch the validation images are decoded and scored (BLEU-4,
CIDEr); the best state by `monitor` is restored, with `patience` epochs of early stopping. On N
processes each weights its loss by its share of the batch's words, so DDP's averaged gradient
is the one-process gradient; rank 0 decodes and reports."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import pandas as pd
import torch
from torch.nn import functional as F

from mmlab.features.device import resolve_device
from mmlab.train import distributed, loop
from mmlab.train.optim import check_schedule

MONITORS = {"cider": "val_cider", "bleu4": "val_bleu4"}


@dataclass
class CaptionData:
    """Inputs of one split and its captions, encoded once: grids `[N, D, H, W]` or uint8 pixels
    `[N, 3, S, S]` (a trainable encoder); `tokens[m]` is a caption of image `image_index[m]`."""

    inputs: torch.Tensor
    ids: list[str]
    references: list[list[str]]
    tokens: torch.Tensor
    image_index: torch.Tensor
    pad_id: int = 0

    @classmethod
    def build(
        cls, inputs: torch.Tensor, ids: Sequence[str], captions: Sequence[Sequence[str]], vocab
    ) -> CaptionData:
        if not (len(inputs) == len(ids) == len(captions)):
            raise ValueError(
                f"inputs ({len(inputs)}), ids ({len(ids)}) and captions ({len(captions)}) "
                "must have one entry per image"
            )
        empty = [i for i, refs in zip(ids, captions, strict=True) if not refs]
        if empty:
            raise ValueError(f"images without captions: {empty[:5]}")
        flat = [c for refs in captions for c in refs]
        index = [i for i, refs in enumerate(captions) for _ in refs]
        return cls(
            inputs,
            list(ids),
            [list(r) for r in captions],
            vocab.encode_batch(flat),
            torch.tensor(index, dtype=torch.long),
            vocab.pad_id,
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def reference_dict(self) -> dict[str, list[str]]:
        return dict(zip(self.ids, self.references, strict=True))


def caption_data(dataset_dict, split: str, extractor, encoder, vocab) -> CaptionData:
    """A split ready to train on: with a frozen encoder the grids come from the feature cache
    (computed once, reused across epochs and runs); otherwise the images as uint8 pixels."""
    from mmlab.features import cache

    if split not in dataset_dict:
        raise KeyError(f"split {split!r} not in the dataset; it has {list(dataset_dict)}")
    ds = dataset_dict[split]
    if encoder.frozen:
        inputs = cache.features(dataset_dict, split, extractor)
        if encoder.colour_detail:
            inputs = encoder.with_colours(inputs, encoder.pixels(ds["image"]))
    else:
        inputs = encoder.pixels(ds["image"])
    return CaptionData.build(inputs, ds["id"], ds["captions"], vocab)


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    schedule: str = "cosine"  # the learning rate after the warm-up: mmlab.train.optim.SCHEDULES
    warmup: float = 0.05  # share of all steps with a linear warm-up
    attention_penalty: float = 0.1  # lambda of the doubly stochastic attention penalty
    label_smoothing: float = 0.0
    monitor: str = "cider"  # early stopping and best checkpoint: "cider" or "bleu4"
    patience: int = 3  # epochs without improvement before stopping
    val_beam_size: int = 1  # decoding used for the per-epoch validation scores
    sample_images: int = 6  # validation images whose captions are shown every epoch
    metric_tokenizer: str = "auto"  # see mmlab.metrics.resolve_tokenizer
    device: str = "auto"
    amp: bool | str = "auto"  # autocast (mmlab.train.loop.amp_dtype); "auto": on CUDA only
    compile: bool | str = False  # torch.compile the decoder (its `compile` says which part)
    seed: int = 0
    processes: int = 1  # training processes (DDP) the loop starts; see mmlab.train.distributed

    def __post_init__(self):
        if not isinstance(self.processes, int) or self.processes < 1:
            raise ValueError(f"processes must be an int >= 1, got {self.processes!r}")
        check_schedule(self.schedule)
        if self.monitor not in MONITORS:
            raise KeyError(f"unknown monitor {self.monitor!r}; valid: {', '.join(MONITORS)}")


@dataclass
class FitResult:
    history: pd.DataFrame  # one row per epoch
    best_epoch: int
    best_score: float
    monitor: str
    stopped_early: bool
    config: dict = field(default_factory=dict)


def caption_loss(
    logits,
    alpha,
    targets,
    pad_id: int,
    attention_penalty: float = 0.0,
    label_smoothing: float = 0.0,
    *,
    share: tuple[float, float] = (1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(total, cross_entropy)`: CE over non-pad targets plus the doubly stochastic penalty.
    `share` weights the means by this process's share of the global batch's words and captions
    (times the process count), so DDP's average is the global gradient. One process: (1, 1)."""
    ce = F.cross_entropy(
        logits.float().flatten(0, 1),
        targets.flatten(),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
    )
    words, captions = share
    if not attention_penalty:
        return ce * words, ce
    mask = (targets != pad_id).unsqueeze(2).to(alpha.dtype)
    penalty = ((1.0 - (alpha * mask).sum(dim=1)) ** 2).mean()
    return ce * words + attention_penalty * penalty.float() * captions, ce


def _batches(data: CaptionData, batch_size: int, generator=None, group=None):
    """Shuffled caption batches, each trimmed to its longest caption (outputs never depend on
    padding after a caption). In a group: this process's share and its `caption_loss` weights;
    a last batch smaller than the process count is left out."""
    order = (
        torch.randperm(len(data.tokens), generator=generator)
        if generator is not None
        else torch.arange(len(data.tokens))
    )
    lengths = data.tokens.ne(data.pad_id).sum(1)
    for rows in torch.split(order, batch_size):
        share = (1.0, 1.0)
        if group is not None and group.distributed:
            if len(rows) < group.size:
                continue
            everyone = rows
            rows = distributed.shard(everyone, group)
            words = lengths[rows].sub(1).sum() / lengths[everyone].sub(1).sum()
            share = (float(words) * group.size, len(rows) * group.size / len(everyone))
        width = max(int(lengths[rows].max()), 2)
        yield data.inputs[data.image_index[rows]], data.tokens[rows, :width], share


@torch.no_grad()
def validation_loss(model, data: CaptionData, batch_size: int = 256, amp="auto") -> float:
    model.eval()
    device, pad = model.device, model.vocab.pad_id
    # summed on the device: one round trip at the end, not two per batch
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    for inputs, tokens, _ in _batches(data, batch_size):
        tokens = tokens.to(device)
        with loop.autocast(device, amp):
            logits, _ = model(inputs.to(device), tokens[:, :-1])
        targets = tokens[:, 1:]
        count += targets.ne(pad).sum()
        total += F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad, reduction="sum"
        )
    return float(total / count.clamp_min(1))


def score_captions(
    model, data: CaptionData, beam_size: int = 1, tokenizer: str = "auto", metrics=("bleu", "cider")
) -> tuple[dict[str, float], list[str]]:
    """Decode every image of `data` and score the captions against its references."""
    from mmlab.metrics import caption_scores

    captions = model.decode_grids(data.inputs, beam_size, return_attention=False).captions
    predictions = dict(zip(data.ids, captions, strict=True))
    return caption_scores(
        data.reference_dict, predictions, metrics=metrics, tokenizer=tokenizer
    ), captions


def train_captioner(
    model,
    train: CaptionData,
    val: CaptionData,
    config: TrainConfig | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train a `Captioner` in place through `mmlab.train.loop`, restoring the best epoch's weights.
    `on_epoch(epoch, metrics)` gets each epoch (from 1) and, under `samples`, the fixed validation
    images' captions. `config.processes > 1` trains on processes started here."""
    config = config or TrainConfig()
    if model.encoder.frozen and train.inputs.dtype == torch.uint8:
        raise ValueError("frozen encoder: pass cached grids [N, D, H, W] as inputs, not pixels")
    monitor = MONITORS[config.monitor]
    recipe = loop.LoopConfig.of(
        config,
        monitor=monitor,
        dropout_seed=config.seed,
        device=str(resolve_device(config.device)),
        timings=True,
        name=getattr(model, "decoder_name", "") or "captioner",
    )
    result = loop.fit(_study, model, (train, val, config), recipe, on_epoch)
    return FitResult(
        pd.DataFrame(result.history),
        result.best_epoch,
        result.best_score,
        monitor,
        result.stopped_early,
        asdict(config),
    )


def _study(model, train: CaptionData, val: CaptionData, config: TrainConfig) -> loop.Study:
    pad = model.vocab.pad_id
    sample_ids = val.ids[: config.sample_images]
    resident = {"train": train}

    def prepare(group):
        _sync_batch_norm(model, group)
        # On a GPU the grids (or pixels) move there once: a batch is an index, not a copy. The
        # captions stay on the CPU, where a batch's length is read without a device round trip.
        if group.device.type == "cuda":
            resident["train"] = replace(train, inputs=train.inputs.to(group.device))

    def batches(generator, group):
        for inputs, tokens, share in _batches(
            resident["train"], config.batch_size, generator, group
        ):
            yield inputs.to(group.device), tokens.to(group.device), share

    def forward(net, batch):
        inputs, tokens, _ = batch
        return net(inputs, tokens[:, :-1])

    def loss(outputs, batch):
        (logits, alpha), (_, tokens, share) = outputs, batch
        objective, ce = caption_loss(
            logits,
            alpha,
            tokens[:, 1:],
            pad,
            config.attention_penalty,
            config.label_smoothing,
            share=share,
        )
        words = tokens[:, 1:].ne(pad).sum()
        return objective, torch.stack([ce.detach().double() * words, words.double()])

    def summarise(sums):  # per word: sum, count
        return {"train_loss": float(sums[0] / sums[1].clamp_min(1))}

    def validate(device):
        scores, captions = score_captions(model, val, config.val_beam_size, config.metric_tokenizer)
        samples = pd.DataFrame(
            {
                "id": sample_ids,
                "caption": captions[: len(sample_ids)],
                "reference": [refs[0] for refs in val.references[: len(sample_ids)]],
            }
        )
        return {
            "val_loss": validation_loss(model, val, amp=config.amp),
            "val_bleu4": scores["bleu4"],
            "val_cider": scores["cider"],
            "samples": samples,
        }

    return loop.Study(
        model,
        batches,
        forward,
        loss,
        summarise,
        validate,
        steps_per_epoch=math.ceil(len(train.tokens) / config.batch_size),
        compiled=model.decoder,
        prepare=prepare,
    )


def _sync_batch_norm(model, group) -> None:
    """Encoder stages that learn normalise with the statistics of the global batch: on GPUs
    with `nn.SyncBatchNorm`, which has no CPU version (train them on one process there)."""
    if not group.distributed or model.encoder.frozen:
        return
    stages = model.encoder.stages
    learning = stages[len(stages) - model.encoder.train_stages :]
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in learning.modules()):
        return
    if group.device.type != "cuda":
        raise ValueError(
            f"train_stages={model.encoder.train_stages}: the encoder's learning stages have "
            "BatchNorm, whose statistics would differ per CPU process (nn.SyncBatchNorm needs "
            "GPUs); train with processes=1, train_stages=0 (cached grids) or on GPUs"
        )
    model.encoder.stages = torch.nn.SyncBatchNorm.convert_sync_batchnorm(stages)


def compare_decodings(
    model,
    data: CaptionData,
    beam_sizes=(1, 3),
    objects=None,
    metrics=("bleu", "cider"),
    tokenizer: str = "auto",
    lexicon=None,
):
    """`(table, decoded)`: per beam size (1 = greedy) n-gram scores, grounded scores where `objects`
    is given (via `lexicon`, default synthetic) and mean log-probability per token;
    `decoded[beam]` holds the `Captions`."""
    from mmlab.metrics import evaluate_sets

    decoded = {b: model.decode_grids(data.inputs, b) for b in beam_sizes}
    predictions = {b: dict(zip(data.ids, out.captions, strict=True)) for b, out in decoded.items()}
    report = evaluate_sets(
        data.reference_dict, predictions, objects, metrics, tokenizer, human=False, lexicon=lexicon
    )
    table = report.table.copy()
    table["mean_log_prob"] = [float(decoded[b].mean_log_prob.mean()) for b in table.index]
    table.index.name = "beam_size"
    return table, decoded


def test_metrics(table, beam_size: int, prefix: str = "test_") -> dict[str, float]:
    """One row of `compare_decodings`' table as `{test_<metric>: value}`, NaN left out."""
    row = table.loc[beam_size].dropna()
    return {f"{prefix}{name}": float(value) for name, value in row.items()}
