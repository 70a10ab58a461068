"""What every generator family shares: the registry, the training data, the two-stage training
through the workspace's loop (`mmlab.train.loop.fit`: first the image autoencoder, then the
text-conditioned prior over its latents or tokens) and `generate`, which checks its inputs.

    generator = create("diffusion", vocab, image_size=64)
    result = train_generator(generator, train, validation, GenTrainConfig(prior_epochs=20))
    images = generator.generate(["a red circle"], guidance=3.0, steps=50, seed=0)  # uint8

A family is a `Generator` subclass registered with `@FAMILIES.register("name")`; it supplies
`autoencoder` (with `loss(images)`), `encode_images`, `prior_loss(targets, ids)` and
`sample(ids, guidance, steps, generator)`."""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from mmlab.core.registry import Registry
from mmlab.data.text import Vocabulary
from mmlab.generation.text import check_prompts, encode_prompts, null_prompt, unknown_words
from mmlab.train.loop import LoopConfig, Study, fit

FAMILIES = Registry(
    "generator family", modules=["mmlab.generation.diffusion", "mmlab.generation.vq"]
)
PROMPT_LENGTH = 24  # token positions: <start>, up to 22 words, <end> (captions are shorter)
GUIDANCE_RANGE = (0.0, 20.0)
STEPS_RANGE = (1, 1000)


class UnknownWords(UserWarning):
    """A prompt has words outside the generator's vocabulary: they were read as `<unk>`."""


def available() -> list[str]:
    return FAMILIES.names()


def create(family: str, vocab: Vocabulary, **options) -> Generator:
    """A new, untrained generator of `family` (see `available()`) for prompts in `vocab`."""
    return FAMILIES.create(family, vocab, **options)


class Generator(nn.Module):
    """A text-to-image generator: `vocab` and `length` read the prompt, `image_size` is the
    side of the square images in [-1, 1]; `options` are the family's (what `create` needs)."""

    family = ""
    default_steps = 1

    def __init__(self, vocab: Vocabulary, image_size: int, options: dict):
        super().__init__()
        if not (isinstance(image_size, int) and image_size > 0):
            raise ValueError(f"image_size must be a positive whole number, got {image_size!r}")
        self.vocab, self.image_size, self.length = vocab, image_size, PROMPT_LENGTH
        self.options = {"image_size": image_size, **options}

    # what a family supplies
    autoencoder: nn.Module

    def encode_images(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def prior_loss(self, targets: Tensor, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, ids: Tensor, guidance: float, steps: int, generator: torch.Generator):
        raise NotImplementedError

    @classmethod
    def options_of(cls, arguments: dict) -> dict:
        """The family's own keyword arguments (those of its `__init__` after `vocab` and
        `image_size`) taken from `arguments` (its `locals()`): what `create` needs to build it
        again, saved with the model."""
        names = list(inspect.signature(cls.__init__).parameters)[3:]
        return {
            n: list(arguments[n]) if isinstance(arguments[n], tuple) else arguments[n]
            for n in names
        }

    @torch.no_grad()
    def reconstruct(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Images `[N, 3, S, S]` in [-1, 1] through the autoencoder alone (encode, decode):
        the best any prior over its latents or tokens can draw."""
        self.autoencoder.eval()
        device = next(self.parameters()).device
        return torch.cat(
            [
                self.autoencoder.reconstruct(b.to(device)).clamp(-1, 1).cpu()
                for b in images.split(batch_size)
            ]
        )

    def prior_parameters(self) -> int:
        """Parameters of the text encoder and the prior (what the second stage trains)."""
        own = {id(p) for p in self.autoencoder.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in own)

    def drop_condition(self, ids: Tensor, p: float) -> Tensor:
        """`ids` with each row replaced by the null prompt with probability `p` (the
        unconditional model classifier-free guidance needs is the same network)."""
        if p <= 0:
            return ids
        drop = torch.rand(ids.shape[0], device=ids.device) < p
        null = null_prompt(self.vocab, ids.shape[0], ids.shape[1]).to(ids.device)
        return torch.where(drop[:, None], null, ids)

    def prompt_ids(self, prompts: list[str]) -> Tensor:
        return encode_prompts(self.vocab, prompts, self.length)

    @torch.no_grad()
    def generate(
        self,
        prompts,
        guidance: float = 3.0,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
    ) -> Tensor:
        """uint8 images `[N, 3, S, S]`, one per prompt; the same seed gives the same images.
        Words outside the vocabulary are named in an `UnknownWords` warning (and read as
        `<unk>`); an empty prompt, a guidance outside [0, 20] or steps outside [1, 1000] raise."""
        prompts = check_prompts(prompts)
        steps = self.default_steps if steps is None else steps
        check_settings(guidance, steps)
        unknown = sorted({w for p in prompts for w in unknown_words(self.vocab, p)})
        if unknown:
            warnings.warn(
                f"not in the generator's vocabulary, read as <unk>: {', '.join(unknown)}",
                UnknownWords,
                stacklevel=2,
            )
        self.eval()
        device = next(self.parameters()).device
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        out = []
        for start in range(0, len(prompts), batch_size):
            ids = self.prompt_ids(prompts[start : start + batch_size]).to(device)
            images = self.sample(ids, float(guidance), int(steps), generator)
            out.append(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        return torch.cat(out)


def check_settings(guidance: float, steps: int) -> None:
    low, high = GUIDANCE_RANGE
    if not (isinstance(guidance, int | float) and low <= guidance <= high):
        raise ValueError(f"guidance must be a number in [{low:g}, {high:g}], got {guidance!r}")
    low, high = STEPS_RANGE
    if not (isinstance(steps, int | np.integer) and low <= steps <= high):
        raise ValueError(f"steps must be a whole number in [{low}, {high}], got {steps!r}")


def to_pil(images: Tensor) -> list:
    """uint8 `[N, 3, S, S]` -> PIL images."""
    from PIL import Image

    return [Image.fromarray(i.permute(1, 2, 0).numpy()) for i in images]


# --------------------------------------------------------------------------- training data


@dataclass
class GenerationData:
    """Images `[N, 3, S, S]` in [-1, 1] and their captions' ids `[N, C, L]` (C captions per
    image, padded with whole copies of the first when an image has fewer)."""

    images: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return len(self.images)


def generation_data(split, vocab: Vocabulary, image_size: int, length: int = PROMPT_LENGTH):
    """A dataset split's images, resized to `image_size`, and its captions' ids."""
    from PIL import Image

    images, ids = [], []
    most = max(len(c) for c in split["captions"])
    for row in split:
        image = row["image"].convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        captions = list(row["captions"]) or [""]
        captions = (captions * most)[:most]
        ids.append(encode_prompts(vocab, captions, length))
    pixels = torch.stack(images).float() / 127.5 - 1.0
    return GenerationData(pixels, torch.stack(ids))


# --------------------------------------------------------------------------- training


@dataclass
class GenTrainConfig:
    """Both stages' recipes: epochs, batch size and learning rate of the autoencoder and of
    the prior; `drop` is the share of captions replaced by the null prompt (p of classifier-free
    guidance); `evaluate(generator, epoch) -> metrics` runs after chosen prior epochs."""

    autoencoder_epochs: int = 10
    prior_epochs: int = 20
    batch_size: int = 64
    autoencoder_lr: float = 2e-3
    prior_lr: float = 1e-3
    weight_decay: float = 0.0
    drop: float = 0.1
    grad_clip: float | None = 1.0
    device: str = "cpu"  # "auto": CUDA where there is one (mmlab.features.device)
    seed: int = 0
    evaluate: Callable | None = None
    evaluate_every: int = 0  # prior epochs between evaluations (0: none)
    validation_rows: int = 256


@dataclass
class TrainResult:
    """Per-epoch rows of each stage (with `cpu_minutes`, cumulated over both stages) and the
    CPU minutes each stage took (`time.process_time`, all threads of this process)."""

    autoencoder_history: list = field(default_factory=list)
    prior_history: list = field(default_factory=list)
    autoencoder_minutes: float = 0.0
    prior_minutes: float = 0.0

    @property
    def cpu_minutes(self) -> float:
        return self.autoencoder_minutes + self.prior_minutes


def _shuffled(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _mean_of(sums: Tensor, names: list[str]) -> dict[str, float]:
    count = float(sums[-1]) or 1.0
    return {name: float(s) / count for name, s in zip(names, sums[:-1], strict=False)}


def _autoencoder_study(autoencoder, data: GenerationData, validation: GenerationData, config):
    names = None

    def batches(generator, group):
        for rows in _shuffled(len(data), config.batch_size, generator):
            yield data.images[rows].to(group.device)

    def loss(outputs, batch):
        nonlocal names
        objective, parts = outputs
        names = ["train_loss", *parts]
        values = [objective.detach(), *(v.detach().float() for v in parts.values())]
        n = batch.shape[0]
        record = torch.stack([v.double().cpu() * n for v in values] + [torch.tensor(n).double()])
        return objective, record.to(batch.device)

    @torch.no_grad()
    def validate(device):
        autoencoder.eval()
        images = validation.images[: config.validation_rows].to(device)
        value = float(autoencoder.loss(images)[1]["reconstruction"])
        metrics = {"val_reconstruction": value}
        if hasattr(autoencoder, "restart_dead_codes"):  # a VQ-VAE: revive unused codes
            sample = data.images[: config.validation_rows * 2].to(device)
            metrics["codes_restarted"] = float(autoencoder.restart_dead_codes(sample))
        autoencoder.train()
        return metrics

    return Study(
        model=autoencoder,
        batches=batches,
        forward=lambda net, batch: net.loss(batch),
        loss=loss,
        summarise=lambda sums: _mean_of(sums, names),
        validate=validate,
        steps_per_epoch=math.ceil(len(data) / config.batch_size),
    )


def _prior_study(generator: Generator, targets: Tensor, ids: Tensor, validation, config):
    generator.autoencoder.requires_grad_(False)
    captions = ids.shape[1]
    val_targets, val_ids = validation
    epoch = 0

    def batches(torch_generator, group):
        for rows in _shuffled(len(targets), config.batch_size, torch_generator):
            pick = torch.randint(captions, (len(rows),), generator=torch_generator)
            yield targets[rows].to(group.device), ids[rows, pick].to(group.device)

    def forward(net, batch):
        x, text = batch
        return net.prior_loss(x, net.drop_condition(text, config.drop))

    def loss(objective, batch):
        n = batch[0].shape[0]
        record = torch.stack([objective.detach().double().cpu() * n, torch.tensor(n).double()])
        return objective, record.to(objective.device)

    @torch.no_grad()
    def validate(device):
        nonlocal epoch
        epoch += 1
        generator.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same timesteps and noise every epoch
            value = float(generator.prior_loss(val_targets.to(device), val_ids.to(device)))
        metrics = {"val_loss": value}
        every = config.evaluate_every
        if config.evaluate is not None and every and (epoch % every == 0):
            metrics.update(config.evaluate(generator, epoch))
        generator.train()
        generator.autoencoder.eval()
        return metrics

    return Study(
        model=generator,
        batches=batches,
        forward=forward,
        loss=loss,
        summarise=lambda sums: _mean_of(sums, ["train_loss"]),
        validate=validate,
        steps_per_epoch=math.ceil(len(targets) / config.batch_size),
    )


@torch.no_grad()
def _encode(generator: Generator, images: Tensor, batch_size: int = 256) -> Tensor:
    generator.autoencoder.eval()
    device = next(generator.parameters()).device
    return torch.cat(
        [generator.encode_images(b.to(device)).cpu() for b in images.split(batch_size)]
    )


def train_generator(
    generator: Generator,
    train: GenerationData,
    validation: GenerationData,
    config: GenTrainConfig,
    on_epoch: Callable[[str, int, dict], None] | None = None,
) -> TrainResult:
    """Train the autoencoder, then the prior on the frozen autoencoder's latents, each through
    `mmlab.train.loop.fit`; `on_epoch(stage, epoch, metrics)` sees every epoch of both stages
    (`stage` "autoencoder" or "prior"), with `cpu_minutes` so far."""
    from mmlab.features.device import resolve_device

    result = TrainResult()
    started = time.process_time()
    device = str(resolve_device(config.device))
    generator.to(device)

    def report(stage, history):
        def hook(epoch, metrics):
            row = {"epoch": epoch, **metrics, "cpu_minutes": (time.process_time() - started) / 60}
            history.append(row)
            if on_epoch is not None:
                on_epoch(stage, epoch, dict(row))

        return hook

    loop = dict(weight_decay=config.weight_decay, grad_clip=config.grad_clip, seed=config.seed)
    loop |= dict(device=device, dropout_seed=config.seed, patience=10**9)
    if config.autoencoder_epochs > 0:
        fit(
            _autoencoder_study,
            generator.autoencoder,
            (train, validation, config),
            LoopConfig(
                epochs=config.autoencoder_epochs,
                lr=config.autoencoder_lr,
                monitor="val_reconstruction",
                mode="min",
                name="autoencoder",
                **loop,
            ),
            report("autoencoder", result.autoencoder_history),
        )
    generator.prepare_prior(train.images)
    result.autoencoder_minutes = (time.process_time() - started) / 60
    targets = _encode(generator, train.images)
    rows = config.validation_rows
    held_out = (_encode(generator, validation.images[:rows]), validation.ids[:rows, 0])
    if config.prior_epochs > 0:
        fit(
            _prior_study,
            generator,
            (targets, train.ids, held_out, config),
            LoopConfig(
                epochs=config.prior_epochs,
                lr=config.prior_lr,
                monitor="val_loss",
                mode="min",
                name=f"{generator.family} prior",
                **loop,
            ),
            report("prior", result.prior_history),
        )
    generator.autoencoder.requires_grad_(True)
    result.prior_minutes = (time.process_time() - started) / 60 - result.autoencoder_minutes
    generator.eval()
    return result
