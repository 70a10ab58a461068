"""mmlab.train.loop on a tiny regression: the contract every study trains through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmlab.train import loop


def _study(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> loop.Study:
    def batches(generator, group):
        order = torch.randperm(len(x), generator=generator)
        for rows in order.split(16):
            yield x[rows], y[rows]

    def loss(outputs, batch):
        value = nn.functional.mse_loss(outputs, batch[1])
        return value, torch.stack([value.detach().double(), torch.ones((), dtype=torch.float64)])

    return loop.Study(
        model,
        batches,
        forward=lambda net, batch: net(batch[0]),
        loss=loss,
        summarise=lambda sums: {"train_loss": float(sums[0] / sums[1])},
        validate=lambda device: {"val_loss": float(nn.functional.mse_loss(model(x), y))},
        steps_per_epoch=4,
    )


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]])


def test_epochs_count_from_one_and_the_best_state_comes_back():
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    seen = []
    config = loop.LoopConfig(
        epochs=6, lr=0.05, weight_decay=0.0, monitor="val_loss", mode="min", patience=6
    )
    result = loop.fit(_study, model, (x, y), config, lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == [row["epoch"] for row in result.history] == list(range(1, 7))
    assert {"train_loss", "val_loss", "lr"} <= set(seen[0][1])
    losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == losses.index(min(losses)) + 1
    kept = float(nn.functional.mse_loss(result.model(x), y))
    assert kept == pytest.approx(min(losses)) and not result.model.training


def test_patience_stops_a_run_that_does_not_improve():
    x, y = _data()
    model = nn.Linear(3, 1)
    # the monitor asks for a larger loss: after the first epoch nothing is better
    config = loop.LoopConfig(epochs=20, lr=0.05, weight_decay=0.0, monitor="val_loss", patience=2)
    result = loop.fit(_study, model, (x, y), config)
    assert result.stopped_early and result.epochs_run == result.best_epoch + 2


def test_a_warmup_is_a_share_of_all_steps():
    assert loop.warmup_steps(0.0, 100) == 0
    assert loop.warmup_steps(0.05, 100) == 5
    assert loop.warmup_steps(1 / 14, 14 * 32) == 32  # one epoch of 14, whole
    assert loop.warmup_steps(0.001, 100) == 1  # asked for: at least one step


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"schedule": "step"}, "unknown schedule 'step'"),
        ({"mode": "up"}, "mode must be 'max' or 'min'"),
        ({"warmup": 1.0}, r"warmup is a share of all steps, in \[0, 1\)"),
        ({"processes": 0}, "processes must be >= 1"),
    ],
)
def test_a_bad_recipe_is_refused_by_name(settings, message):
    with pytest.raises((ValueError, KeyError), match=message):
        loop.LoopConfig(epochs=1, lr=1e-3, weight_decay=0.0, monitor="val_loss", **settings)
