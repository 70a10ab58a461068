"""The VQ transformer (Ramesh et al. 2021, DALL-E's shape at toy scale): a VQ-VAE turns an image
into a grid of codebook tokens (8x8 for 64 px images with three downsamplings); a decoder-only
transformer reads the prompt's tokens, then predicts the image tokens one by one in raster
order under a causal mask. Sampling is top-k with classifier-free guidance on the logits
(l = l(c) + w (l(c) - l(null))), with a key-value cache (`cache=True`): each new token attends
to the stored keys and values of those before it instead of recomputing the whole prefix.
Attention is nanoGPT's: one `qkv` Linear and `F.scaled_dot_product_attention`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmlab.generation.autoencoder import DOWNSAMPLINGS, VQVAE, check_downsamplings
from mmlab.generation.base import FAMILIES, Generator
from mmlab.generation.text import null_prompt


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, cache: dict | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if "k" in cache:  # earlier positions' keys and values
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # a block of new queries sees every cached position and the causal part of its own
        causal = n > 1 and k.shape[2] == n
        mask = None
        if n > 1 and not causal:
            past = k.shape[2] - n
            mask = torch.ones(n, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor, cache: dict | None = None) -> Tensor:
        x = x + self.attention(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


@FAMILIES.register("vq_transformer")
class VQTransformer(Generator):
    family = "vq_transformer"
    default_steps = 1  # one pass over the image tokens; `steps` does not apply

    def __init__(
        self,
        vocab,
        image_size: int = 64,
        codes: int = 256,
        code_dim: int = 32,
        autoencoder_width: int = 32,
        width: int = 128,
        layers: int = 4,
        heads: int = 4,
        top_k: int = 32,
        downsamplings: int = DOWNSAMPLINGS,
        objective: str = "mse",
    ):
        options = self.options_of(locals())
        super().__init__(vocab, image_size, options)
        self.autoencoder = VQVAE(codes, code_dim, autoencoder_width, downsamplings, objective)
        self.grid = check_downsamplings(image_size, downsamplings)
        self.tokens = self.grid * self.grid
        self.top_k = top_k
        self.text_embed = nn.Embedding(len(vocab), width)
        self.image_embed = nn.Embedding(codes, width)
        self.position = nn.Parameter(torch.zeros(1, self.length + self.tokens, width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, codes)

    def prepare_prior(self, images: Tensor) -> None:
        self.autoencoder.eval()

    def encode_images(self, images: Tensor) -> Tensor:
        return self.autoencoder.encode(images).flatten(1)

    def logits(self, ids: Tensor, codes: Tensor, caches: list | None = None, start: int = 0):
        """Next-token logits at each position of `[text ids; image codes]` (`start`: the
        position of the first given token when `caches` hold the ones before)."""
        parts = [self.text_embed(ids)] if ids is not None else []
        if codes is not None and codes.shape[1]:
            parts.append(self.image_embed(codes))
        x = torch.cat(parts, dim=1)
        x = x + self.position[:, start : start + x.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.norm(x))

    def prior_loss(self, codes: Tensor, ids: Tensor) -> Tensor:
        # position L-1+i (the last text token, then image tokens) predicts image token i
        logits = self.logits(ids, codes[:, :-1])[:, self.length - 1 :]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))

    def _pick(self, logits: Tensor, guidance: float, generator: torch.Generator) -> Tensor:
        conditional, unconditional = logits.chunk(2)
        guided = conditional + guidance * (conditional - unconditional)
        top = torch.topk(guided, min(self.top_k, guided.shape[-1]), dim=-1)
        probabilities = F.softmax(top.values.float(), dim=-1).cpu()
        choice = torch.multinomial(probabilities, 1, generator=generator).to(logits.device)
        return top.indices.gather(-1, choice)

    @torch.no_grad()
    def sample_codes(
        self, ids: Tensor, guidance: float, generator: torch.Generator, cache: bool = True
    ) -> Tensor:
        """Image tokens `[B, tokens]`; `cache=False` recomputes the whole prefix at each token
        (the same tokens, slower)."""
        b = ids.shape[0]
        text = torch.cat([ids, null_prompt(self.vocab, b, ids.shape[1]).to(ids.device)])
        codes = torch.zeros(2 * b, 0, dtype=torch.long, device=ids.device)
        caches = [{} for _ in self.blocks] if cache else None
        logits = self.logits(text, None, caches)[:, -1]
        for i in range(self.tokens):
            token = self._pick(logits, guidance, generator)
            codes = torch.cat([codes, token.repeat(2, 1)], dim=1)
            if i == self.tokens - 1:
                break
            if cache:
                logits = self.logits(None, token.repeat(2, 1), caches, start=self.length + i)
            else:
                logits = self.logits(text, codes)
            logits = logits[:, -1]
        return codes[:b]

    @torch.no_grad()
    def sample(
        self,
        ids: Tensor,
        guidance: float,
        steps: int,
        generator: torch.Generator,
        cache: bool = True,
    ) -> Tensor:
        codes = self.sample_codes(ids, guidance, generator, cache=cache)
        return self.autoencoder.decode(codes.view(-1, self.grid, self.grid))
