"""The dual encoder: one projection head per modality into a shared space, a learned temperature,
and the symmetric InfoNCE loss (CLIP's recipe) with same-sample items masked out as negatives."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.retrieval import heads


@dataclass
class DualConfig:
    """Everything needed to rebuild a dual encoder (logged beside its state dict)."""

    pair: str
    modalities: tuple[str, str]
    encoders: dict[str, str]  # modality -> feature encoder spec
    in_shapes: dict[str, list[int]]  # modality -> shape of one item's features
    heads: dict[str, str] = field(default_factory=dict)  # modality -> head name ("auto")
    dim: int = 256
    head_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DualConfig:
        d = dict(d)
        d["modalities"] = tuple(d["modalities"])
        return cls(**d)


class DualEncoder(nn.Module):
    def __init__(self, config: DualConfig, temperature: float = 0.07):
        super().__init__()
        self.config = config
        c = config
        self.heads = nn.ModuleDict(
            {
                m: heads.create(c.heads.get(m, "auto"), c.in_shapes[m], c.dim, **c.head_options)
                for m in c.modalities
            }
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads[modality](x), dim=-1)

    @torch.no_grad()
    def embed(self, modality: str, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Unit vectors of every item, in eval mode and batches, on the CPU."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [
            self.encode(modality, x[i : i + batch_size].to(device)).cpu()
            for i in range(0, len(x), batch_size)
        ]
        self.train(was_training)
        return torch.cat(out)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()  # CLIP's cap on 1/T


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    rows: torch.Tensor,
    scale: torch.Tensor,
    extra_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over matching pairs (a[i], b[i]) from dataset rows `rows`. Off-diagonal
    pairs of one row are masked (not negatives); `extra_b` are further a -> b negatives."""
    logits = scale * a @ b.T
    same = (rows[:, None] == rows[None, :]) & ~torch.eye(
        len(rows), dtype=torch.bool, device=rows.device
    )
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(rows), device=a.device)
    a_to_b = logits if extra_b is None else torch.cat([logits, scale * a @ extra_b.T], dim=1)
    return (F.cross_entropy(a_to_b, target) + F.cross_entropy(logits.T, target)) / 2
