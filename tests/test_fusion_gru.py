"""The fusion models' bidirectional GRU: nn.GRU's outputs and gradients, without its cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmlab.fusion.gru import BiGRU, reading_order

LENGTHS = [7, 3, 5, 1, 7]


def _plain_gru(gru: BiGRU) -> nn.GRU:
    """An nn.GRU with the same weights, run the ordinary way."""
    plain = nn.GRU(gru.input_size, gru.hidden_size, batch_first=True, bidirectional=True)
    plain.load_state_dict(gru.state_dict())
    return plain.double()


def _run_plain(plain: nn.GRU, x, mask):
    if mask is None:
        return plain(x)[0]
    packed = pack_padded_sequence(x, mask.sum(1), batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(plain(packed)[0], batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize("masked", [True, False])
def test_outputs_and_every_gradient_equal_nn_gru(masked):
    """Masked rows read as packed sequences do (the backward direction starts at each row's
    last step, padding outputs zeros); unmasked, every row is read whole."""
    torch.manual_seed(0)
    gru = BiGRU(5, 4).double()
    plain = _plain_gru(gru)
    x = torch.randn(len(LENGTHS), 7, 5, dtype=torch.double, requires_grad=True)
    mask = torch.arange(7) < torch.tensor(LENGTHS).unsqueeze(1) if masked else None
    ours, reference = gru(x, mask), _run_plain(plain, x, mask)
    assert ours.shape == (len(LENGTHS), 7, 8)
    assert torch.allclose(ours, reference, atol=1e-12)
    with torch.no_grad():  # evaluation skips preparing the backward, not any of the forward
        assert torch.equal(gru(x, mask), ours)
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


def test_reading_order_reverses_each_rows_prefix_and_is_its_own_inverse():
    order = reading_order(torch.tensor([3, 5, 0]), 5)
    assert order.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]
    assert torch.equal(order.gather(1, order), torch.arange(5).expand(3, 5))
