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
        ({"amp": "bf16"}, "amp must be True, False or 'auto'"),
        ({"compile": "yes"}, "compile must be True, False or 'auto'"),
    ],
)
def test_a_bad_recipe_is_refused_by_name(settings, message):
    with pytest.raises((ValueError, KeyError), match=message):
        loop.LoopConfig(epochs=1, lr=1e-3, weight_decay=0.0, monitor="val_loss", **settings)


def test_amp_on_a_cpu_trains_under_bfloat16_autocast():
    x, y = _data()
    seen = []

    class Recording(nn.Linear):
        def forward(self, inputs):
            out = super().forward(inputs)
            if self.training:
                seen.append(out.dtype)
            return out

    torch.manual_seed(0)
    model = Recording(3, 1)
    before = float(nn.functional.mse_loss(model(x), y))
    config = loop.LoopConfig(
        epochs=4, lr=0.05, weight_decay=0.0, monitor="val_loss", mode="min", amp=True
    )
    result = loop.fit(_study, model, (x, y), config)
    assert seen.count(torch.bfloat16) == 4 * 4  # every step (validation runs in float32)
    assert result.best_score < before / 2
    assert next(result.model.parameters()).dtype == torch.float32  # weights stay float32


def test_auto_means_on_cuda_only():
    assert loop.amp_dtype("cpu", "auto") is None and loop.amp_dtype("cpu", False) is None
    assert loop.amp_dtype("cpu", True) == torch.bfloat16
    assert not loop.on_for("cpu", "auto") and loop.on_for("cuda", "auto")
    assert not loop.grad_scaler("cpu", True).is_enabled()  # bfloat16 needs no loss scaling


def test_float16_gets_a_grad_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert loop.amp_dtype("cuda", "auto") == torch.float16
    assert loop.amp_dtype("cuda", False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loop.amp_dtype("cuda", "auto") == torch.bfloat16


@pytest.mark.parametrize(
    "module", ["mmlab.fusion.train", "mmlab.captioning.train", "mmlab.retrieval.train"]
)
def test_every_study_hands_amp_and_compile_to_the_loop(module):
    import importlib

    config = importlib.import_module(module).TrainConfig(amp=True, compile="auto")
    recipe = loop.LoopConfig.of(config, monitor="val_loss")
    assert (recipe.amp, recipe.compile) == (True, "auto")
