"""The fusion models' bidirectional GRU reads each padded row as nn.GRU reads it alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmlab.fusion.gru import BiGRU

LENGTHS = [7, 3, 5, 1, 7]


def _plain_gru(gru: BiGRU) -> nn.GRU:
    """An nn.GRU with the same weights."""
    plain = nn.GRU(gru.input_size, gru.hidden_size, batch_first=True, bidirectional=True)
    plain.load_state_dict(gru.state_dict())
    return plain.double()


@pytest.mark.parametrize("masked", [True, False])
def test_each_row_and_every_gradient_equal_nn_gru_on_that_row_alone(masked):
    """Masked rows are read as their unpadded prefix (the backward direction starts at each
    row's last step, padding outputs zeros); unmasked, every row is read whole."""
    torch.manual_seed(0)
    gru = BiGRU(5, 4).double()
    plain = _plain_gru(gru)
    x = torch.randn(len(LENGTHS), 7, 5, dtype=torch.double, requires_grad=True)
    lengths = LENGTHS if masked else [7] * len(LENGTHS)
    mask = torch.arange(7) < torch.tensor(LENGTHS).unsqueeze(1) if masked else None
    ours = gru(x, mask)
    assert ours.shape == (len(LENGTHS), 7, 8)
    rows = [plain(x[i : i + 1, :n])[0] for i, n in enumerate(lengths)]
    reference = torch.stack([nn.functional.pad(r[0], (0, 0, 0, 7 - r.shape[1])) for r in rows])
    assert torch.allclose(ours, reference, atol=1e-12)
    weights = torch.randn_like(ours)
    ours_grads = torch.autograd.grad((ours * weights).sum(), [x, *gru.parameters()])
    plain_grads = torch.autograd.grad((reference * weights).sum(), [x, *plain.parameters()])
    for name, a, b in zip(
        ["x", *dict(gru.named_parameters())], ours_grads, plain_grads, strict=True
    ):
        assert torch.allclose(a, b, atol=1e-12), name


def test_a_rows_output_does_not_depend_on_its_batchs_padding():
    torch.manual_seed(1)
    gru = BiGRU(3, 2)
    x = torch.randn(1, 4, 3)
    short = gru(x, torch.ones(1, 4, dtype=torch.bool))
    padded = gru(torch.cat([x, torch.randn(1, 5, 3)], 1), torch.arange(9).unsqueeze(0) < 4)
    assert torch.allclose(padded[:, :4], short, atol=1e-6)
    assert padded[:, 4:].abs().max() == 0


def test_an_all_padding_row_outputs_zeros():
    gru = BiGRU(3, 2)
    out = gru(torch.randn(2, 4, 3), torch.tensor([[True, True, False, False], [False] * 4]))
    assert out[1].abs().max() == 0 and out[0, :2].abs().max() > 0
