"""Latent diffusion (Rombach et al. 2022): DDPM (Ho et al. 2020) in the latent of a small
autoencoder (8x8x4 for 64 px images with three downsamplings, 16x16x4 with two), with classifier-free guidance (Ho and Salimans 2022). diffusers supplies the
U-Net (`UNet2DConditionModel`, cross-attending to the prompt's token states) and the
schedulers: `DDPMScheduler` to train and for ancestral sampling over all 1000 steps,
`DDIMScheduler` (deterministic, eta = 0) for sampling in fewer steps. Guided noise:

    eps = eps(x, c) + w (eps(x, c) - eps(x, null))

with the null prompt in the same network, trained by dropping the caption with p = 0.1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmlab.core.extras import require
from mmlab.generation.autoencoder import DOWNSAMPLINGS, Autoencoder, check_downsamplings
from mmlab.generation.base import FAMILIES, Generator
from mmlab.generation.text import TextEncoder, null_prompt

TRAIN_STEPS = 1000
SAMPLERS = ("ddim", "ddpm")


def _diffusers():
    return require("diffusers", "the diffusion generator (mmlab.generation.diffusion)")


def default_unet_channels(side: int) -> tuple[int, ...]:
    """Two levels on an 8x8 latent; on a larger one a narrow first level more (no attention
    there), so that a training step costs not much more than at 8x8."""
    return (64, 128) if side <= 8 else (32, 64, 128)


def attention_blocks(side: int, levels: int, resolution: int) -> tuple[tuple, tuple]:
    """The U-Net's down and up block types: cross-attention at the levels whose grid is at most
    `resolution` cells a side, except the lowest (the mid block attends there); self-attention
    over a 16x16 grid costs more than the rest of the step."""
    sides = [side // 2**i for i in range(levels)]
    attend = [s <= resolution and i < levels - 1 for i, s in enumerate(sides)]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend))
    return down, up


@FAMILIES.register("diffusion")
class LatentDiffusion(Generator):
    family = "diffusion"
    default_steps = 50

    def __init__(
        self,
        vocab,
        image_size: int = 64,
        latent_channels: int = 4,
        autoencoder_width: int = 32,
        text_width: int = 64,
        text_layers: int = 2,
        unet_channels: tuple | None = None,
        layers_per_block: int = 1,
        attention_head_dim: int = 8,
        sampler: str = "ddim",
        downsamplings: int = DOWNSAMPLINGS,
        objective: str = "mse",
        attention_resolution: int = 8,
    ):
        side = check_downsamplings(image_size, downsamplings)
        unet_channels = tuple(unet_channels or default_unet_channels(side))
        options = self.options_of(locals())
        super().__init__(vocab, image_size, options)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid names: {', '.join(SAMPLERS)}")
        diffusers = _diffusers()
        self.sampler = sampler
        self.autoencoder = Autoencoder(latent_channels, autoencoder_width, downsamplings, objective)
        self.text = TextEncoder(len(vocab), self.length, text_width, text_layers)
        self.side = side
        down, up = attention_blocks(self.side, len(unet_channels), attention_resolution)
        self.unet = diffusers.UNet2DConditionModel(
            sample_size=self.side,
            in_channels=latent_channels,
            out_channels=latent_channels,
            block_out_channels=tuple(unet_channels),
            layers_per_block=layers_per_block,
            down_block_types=down,
            up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=text_width,
            attention_head_dim=attention_head_dim,
            norm_num_groups=min(32, unet_channels[0]),
        )
        self.train_scheduler = diffusers.DDPMScheduler(num_train_timesteps=TRAIN_STEPS)

    def prepare_prior(self, images: Tensor) -> None:
        self.autoencoder.eval()
        self.autoencoder.fit_scale(images.to(next(self.parameters()).device))

    def encode_images(self, images: Tensor) -> Tensor:
        return self.autoencoder.encode(images)

    def eps(self, latents: Tensor, t: Tensor, ids: Tensor) -> Tensor:
        states = self.text(ids)
        mask = ids != self.vocab.pad_id
        return self.unet(
            latents, t, encoder_hidden_states=states, encoder_attention_mask=mask
        ).sample

    def prior_loss(self, latents: Tensor, ids: Tensor) -> Tensor:
        noise = torch.randn_like(latents)
        t = torch.randint(0, TRAIN_STEPS, (latents.shape[0],), device=latents.device)
        noisy = self.train_scheduler.add_noise(latents, noise, t)
        return F.mse_loss(self.eps(noisy, t, ids), noise)

    def scheduler(self, steps: int, sampler: str | None = None):
        """A fresh sampling scheduler with `steps` steps: DDIM, or DDPM's ancestral sampler."""
        diffusers = _diffusers()
        sampler = sampler or self.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid names: {', '.join(SAMPLERS)}")
        config = self.train_scheduler.config
        cls = diffusers.DDIMScheduler if sampler == "ddim" else diffusers.DDPMScheduler
        scheduler = cls.from_config(config)
        scheduler.set_timesteps(steps)
        return scheduler

    @torch.no_grad()
    def sample(
        self,
        ids: Tensor,
        guidance: float,
        steps: int,
        generator: torch.Generator,
        sampler: str | None = None,
    ) -> Tensor:
        b, device = ids.shape[0], ids.device
        shape = (b, self.autoencoder.encoder.net[-1].out_channels, self.side, self.side)
        x = torch.randn(shape, generator=generator).to(device)
        scheduler = self.scheduler(steps, sampler)
        both = torch.cat([ids, null_prompt(self.vocab, b, ids.shape[1]).to(device)])
        states, mask = self.text(both), both != self.vocab.pad_id
        for t in scheduler.timesteps:
            if guidance == 0:  # the conditional model alone: half the work
                eps = self.unet(
                    x, t, encoder_hidden_states=states[:b], encoder_attention_mask=mask[:b]
                ).sample
            else:
                out = self.unet(
                    torch.cat([x, x]), t, encoder_hidden_states=states, encoder_attention_mask=mask
                ).sample
                conditional, unconditional = out.chunk(2)
                eps = conditional + guidance * (conditional - unconditional)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        return self.autoencoder.decode(x)
