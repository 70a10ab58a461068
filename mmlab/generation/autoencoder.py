"""The image side of both families: a convolutional autoencoder that maps an S x S image to an
S/2^d grid, d = `downsamplings` (stride-2 convolutions, GroupNorm and SiLU, mirrored by nearest
upsampling and a final stride-2 transposed convolution in the decoder). Latent diffusion
(Rombach et al. 2022) denoises its continuous latent; the VQ-VAE (van den Oord et al. 2017)
snaps each cell to the nearest of K codebook vectors, so an image becomes a grid of tokens.
Three downsamplings (64 -> 8x8) give the prior few numbers to model but lose the objects' shape;
two (64 -> 16x16) keep it at four times the latent.

The reconstruction objective is `mse`, or `l1_gradient`: L1 on the pixels plus L1 on the
image's horizontal and vertical differences, the gradient difference loss of Mathieu et al.
(2016), which MSE's blur would otherwise leave to the edges of the objects."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DOWNSAMPLINGS = 3  # the default: 64 -> 8, the latent grid is image_size / 8
OBJECTIVES = ("mse", "l1_gradient")


def image_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    """Differences between horizontal and between vertical neighbours."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid names: {', '.join(OBJECTIVES)}")
    return objective


def reconstruction_loss(output: Tensor, images: Tensor, objective: str = "mse") -> Tensor:
    """`mse`, or `l1_gradient`: L1 on the pixels plus L1 on their neighbour differences."""
    if check_objective(objective) == "mse":
        return F.mse_loss(output, images)
    (ox, oy), (ix, iy) = image_gradients(output), image_gradients(images)
    return F.l1_loss(output, images) + F.l1_loss(ox, ix) + F.l1_loss(oy, iy)


def check_downsamplings(image_size: int, downsamplings: int) -> int:
    if not (isinstance(downsamplings, int) and 1 <= downsamplings <= 4):
        raise ValueError(f"downsamplings must be 1, 2, 3 or 4, got {downsamplings!r}")
    if image_size % 2**downsamplings:
        raise ValueError(
            f"image_size ({image_size}) must be a multiple of 2^downsamplings ({2**downsamplings})"
        )
    return image_size // 2**downsamplings


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(),
    )


def _widths(width: int, downsamplings: int) -> list[int]:
    """Channels per resolution, finest first: `width`, then twice that."""
    return [width] + [2 * width] * (downsamplings - 1)


class ConvEncoder(nn.Module):
    """`[B, 3, S, S]` in [-1, 1] -> `[B, out_channels, S/2^d, S/2^d]`. The first convolution
    has stride 2, so no layer with many channels runs at full resolution (the costly part)."""

    def __init__(self, out_channels: int, width: int = 32, downsamplings: int = DOWNSAMPLINGS):
        super().__init__()
        widths = _widths(width, downsamplings)
        layers = [nn.Conv2d(3, widths[0], 4, stride=2, padding=1), nn.SiLU()]
        layers.append(_block(widths[0], widths[0]))
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU(), _block(b, b)]
        layers.append(nn.Conv2d(widths[-1], out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class ConvDecoder(nn.Module):
    """`[B, in_channels, S/2^d, S/2^d]` -> `[B, 3, S, S]` (unbounded; clamp to [-1, 1] to
    show); the last layer is a stride-2 transposed convolution straight to the three colours."""

    def __init__(self, in_channels: int, width: int = 32, downsamplings: int = DOWNSAMPLINGS):
        super().__init__()
        widths = _widths(width, downsamplings)[::-1]
        layers = [_block(in_channels, widths[0]), _block(widths[0], widths[0])]
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _block(a, b), _block(b, b)]
        layers.append(nn.ConvTranspose2d(widths[-1], 3, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, latents: Tensor) -> Tensor:
        return self.net(latents)


class ConvAutoencoder(nn.Module):
    """The encoder and decoder both families share, with `channels` at each latent cell, and
    the reconstruction objective."""

    def __init__(self, channels: int, width: int, downsamplings: int, objective: str):
        super().__init__()
        self.objective = check_objective(objective)
        self.encoder = ConvEncoder(channels, width, downsamplings)
        self.decoder = ConvDecoder(channels, width, downsamplings)

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def reconstruct(self, images: Tensor) -> Tensor:
        return self.decode(self.encode(images))


class Autoencoder(ConvAutoencoder):
    """The continuous autoencoder of latent diffusion, trained on reconstruction alone; the
    prior sees its latents divided by their standard deviation (`scale`, Rombach's scale
    factor), so the diffusion's unit-variance noise matches the data."""

    def __init__(
        self,
        latent_channels: int = 4,
        width: int = 32,
        downsamplings: int = DOWNSAMPLINGS,
        objective: str = "mse",
    ):
        super().__init__(latent_channels, width, downsamplings, objective)
        self.register_buffer("scale", torch.ones(()))

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images) / self.scale

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents * self.scale)

    def loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        output = self.decoder(self.encoder(images))
        objective = reconstruction_loss(output, images, self.objective)
        # `reconstruction` stays MSE whatever the objective, so validation compares recipes
        return objective, {"reconstruction": F.mse_loss(output, images)}

    @torch.no_grad()
    def fit_scale(self, images: Tensor, batch_size: int = 256) -> None:
        """Set `scale` to the standard deviation of the latents of `images`."""
        latents = torch.cat([self.encoder(b) for b in images.split(batch_size)])
        self.scale.fill_(latents.std().clamp_min(1e-6))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantization with the straight-through gradient and the VQ-VAE losses:
    the codebook term ||sg(z) - e||^2 and the commitment term beta ||z - sg(e)||^2."""

    def __init__(self, codes: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codes, 1.0 / codes)
        self.beta = beta

    def indices(self, z: Tensor) -> Tensor:
        """`[B, D, H, W]` -> code ids `[B, H, W]`."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        distances = torch.cdist(flat, self.codebook.weight)
        return distances.argmin(dim=1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, ids: Tensor) -> Tensor:
        """Code ids `[B, H, W]` -> `[B, D, H, W]`."""
        return self.codebook(ids).permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ids = self.indices(z)
        e = self.lookup(ids)
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        return z + (e - z).detach(), loss, ids


class VQVAE(ConvAutoencoder):
    """Encoder, vector quantizer over `codes` vectors of `code_dim`, decoder."""

    def __init__(
        self,
        codes: int = 256,
        code_dim: int = 32,
        width: int = 32,
        downsamplings: int = DOWNSAMPLINGS,
        objective: str = "mse",
    ):
        super().__init__(code_dim, width, downsamplings, objective)
        self.quantizer = VectorQuantizer(codes, code_dim)

    def encode(self, images: Tensor) -> Tensor:
        return self.quantizer.indices(self.encoder(images))

    def decode(self, ids: Tensor) -> Tensor:
        return self.decoder(self.quantizer.lookup(ids))

    def loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        quantized, vq_loss, ids = self.quantizer(self.encoder(images))
        output = self.decoder(quantized)
        objective = reconstruction_loss(output, images, self.objective)
        used = torch.unique(ids).numel() / self.quantizer.codebook.num_embeddings
        return objective + vq_loss, {
            "reconstruction": F.mse_loss(output, images),
            "codebook_used": torch.tensor(float(used)),
        }

    @torch.no_grad()
    def restart_dead_codes(self, images: Tensor, batch_size: int = 256) -> int:
        """Move codes no image of `images` uses onto random encoder outputs (a common remedy
        for codebook collapse); returns how many moved."""
        z = torch.cat([self.encoder(b) for b in images.split(batch_size)])
        ids = self.quantizer.indices(z)
        codebook = self.quantizer.codebook.weight
        dead = torch.ones(codebook.shape[0], dtype=torch.bool)
        dead[ids.unique()] = False
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        if dead.any():
            pick = torch.randint(len(flat), (int(dead.sum()),))
            codebook[dead] = flat[pick]
        return int(dead.sum())
