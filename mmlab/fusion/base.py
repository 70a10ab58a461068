"""What every fusion method shares: the input description, the projection, the head, the base.
Every method projects each modality to width `hidden`, fuses, and classifies with one shared
head, so a comparison measures the fusion. `input_form` is `"pooled"` (one vector per
modality) or `"tokens"` (grid, vocabulary ids, sequence). A missing pooled modality is
replaced after projection by its learned *missing token*; `modality_dropout=p` trains it by
dropping each modality of a sample with probability p (never all)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from mmlab.train import distributed

Kind = Literal["pooled", "grid", "sequence", "ids"]


@dataclass(frozen=True)
class InputSpec:
    """One modality's input. kind: `pooled` [N, dim], `grid` [N, dim, H, W], `sequence` [N, T, dim]
    (zero rows pad), `ids` [N, T] of a vocabulary of size `dim`. shape: the grid's (H, W) or the
    maximum T. special_ids: non-word ids; `unk_id` also marks a hidden word in masked-word training."""

    kind: Kind
    dim: int
    shape: tuple[int, ...] = ()
    pad_id: int = 0
    unk_id: int | None = None
    special_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in ("pooled", "grid", "sequence", "ids"):
            raise ValueError(
                f"InputSpec kind {self.kind!r} is not one of pooled, grid, sequence, ids"
            )
        if self.kind == "grid" and len(self.shape) != 2:
            raise ValueError(f"a grid InputSpec needs shape=(H, W), got {self.shape!r}")
        if self.kind == "sequence" and len(self.shape) != 1:
            raise ValueError(f"a sequence InputSpec needs shape=(T,), got {self.shape!r}")

    @classmethod
    def of(cls, value: int | InputSpec) -> InputSpec:
        """An int is the width of a pooled vector."""
        return value if isinstance(value, InputSpec) else cls("pooled", int(value))


class FeatureNorm(nn.BatchNorm1d):
    """Standardise each feature with batch statistics (running ones at eval) over any leading
    shape [..., D]. Per-feature, unlike LayerNorm, which would mix a sample's features."""

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if self.training and distributed.active():  # N processes normalise as one would
            return distributed.batch_norm(self, flat).view_as(x)
        return super().forward(flat).view_as(x)


def projection(dim: int, hidden: int, dropout: float) -> nn.Module:
    """Standardise a modality's features (encoders differ wildly in scale), map to `hidden`."""
    return nn.Sequential(FeatureNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout))


def head(width: int, hidden: int, num_classes: int, dropout: float) -> nn.Module:
    """The classifier every method ends with."""
    return nn.Sequential(
        nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
    )


class FusionModule(nn.Module):
    """Base class: `forward(inputs: dict[str, Tensor]) -> logits [N, num_classes]`."""

    input_form: ClassVar[Literal["pooled", "tokens"]] = "pooled"
    accepts: ClassVar[tuple[str, ...]] = ("pooled",)

    def __init__(self, specs: Mapping[str, InputSpec], num_classes: int):
        super().__init__()
        if not specs:
            raise ValueError(f"{type(self).__name__} needs at least one modality, got none")
        for modality, spec in specs.items():
            if spec.kind not in self.accepts:
                raise ValueError(
                    f"{type(self).__name__} takes {'/'.join(self.accepts)} inputs, but modality "
                    f"{modality!r} is {spec.kind}"
                )
        self.modalities = list(specs)
        self.specs = dict(specs)
        self.num_classes = num_classes

    def compile(self, **options) -> None:
        """`torch.compile` in place, for batches of any size."""
        super().compile(**{"dynamic": True, **options})

    def modality_weights(self, inputs: Mapping[str, Tensor]) -> Tensor | None:
        """Per-sample weight of each modality [N, M] where the method learns one, else None."""
        return None

    def training_forward(
        self, inputs: Mapping[str, Tensor], labels: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """(logits, the method's own objective or None) for a training batch; `train_fusion` adds the
        objective to the cross-entropy."""
        return self(inputs), None


class PooledFusion(FusionModule):
    """Projects each pooled modality to `hidden`: subclasses fuse `self.project(...)`.
    An absent modality becomes `self.missing[m]`, a token in projected space: zero features would
    come out of standardisation as a confidently "present" vector. It starts at zero and is learned
    under modality dropout."""

    def __init__(self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0):
        super().__init__(specs, num_classes)
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout!r}")
        self.hidden = hidden
        self.modality_dropout = float(modality_dropout)
        self.projections = nn.ModuleDict(
            {m: projection(s.dim, hidden, dropout) for m, s in specs.items()}
        )
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(hidden)) for m in specs})

    def project(self, inputs: Mapping[str, Tensor]) -> list[Tensor]:
        """One [N, hidden] tensor per modality, in `self.modalities` order; a missing modality
        (absent from `inputs`, or dropped in training) is its missing token."""
        if not inputs:
            raise KeyError(f"no inputs: give a tensor for any of {self.modalities}")
        # Any input gives the batch size: a baseline's one modality can be the missing one.
        first = next(iter(inputs.values()))
        n = first.shape[0]
        dropped = self._dropped(n, first.device)
        z = []
        for i, m in enumerate(self.modalities):
            if m not in inputs:
                z.append(self.missing[m].expand(n, -1))
                continue
            zm = self.projections[m](inputs[m].float())
            if dropped is not None:
                zm = torch.where(dropped[:, i : i + 1], self.missing[m], zm)
            z.append(zm)
        return z

    def _dropped(self, n: int, device) -> Tensor | None:
        """[N, M] True where modality dropout removes a modality from a training sample; a
        sample that would lose every modality keeps one, drawn at random."""
        m = len(self.modalities)
        if not (self.training and self.modality_dropout and m > 1):
            return None
        dropped = torch.rand(n, m, device=device) < self.modality_dropout
        kept = torch.randint(m, (n,), device=device)
        everything = dropped.all(1)
        dropped[everything, kept[everything]] = False
        return dropped
