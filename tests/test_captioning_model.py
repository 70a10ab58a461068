"""Decoders, attention and batched decoding on random tensors (no data, no training)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmlab.captioning import available, create_decoder
from mmlab.captioning import decode as decoding
from mmlab.captioning.attention import AdditiveAttention
from mmlab.captioning.decoders import MultiHeadAttention

torch.set_num_threads(2)
START, END, PAD = 1, 2, 0
DECODERS = ["lstm_attention", "transformer"]


def make(name: str, vocab_size: int = 23, dim: int = 16, grid=(3, 4), seed: int = 0, **options):
    torch.manual_seed(seed)
    sizes = (
        dict(embed_dim=16, hidden_dim=32, attention_dim=24)
        if name == "lstm_attention"
        else (dict(d_model=32, heads=4, layers=2, ff_dim=64))
    )
    return create_decoder(
        name, vocab_size=vocab_size, encoder_dim=dim, grid_size=grid, **{**sizes, **options}
    ).eval()


def grids(n: int = 5, dim: int = 16, grid=(3, 4), seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, *grid, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sequence_log_prob(decoder, grid, words: list[int]) -> float:
    """Teacher-forced log-probability of `words + <end>` for one grid."""
    tokens = torch.tensor([[START, *words]])
    logits, _ = decoder(grid.unsqueeze(0), tokens)
    log_probs = logits.log_softmax(-1)[0]
    targets = [*words, END]
    return float(sum(log_probs[t, w] for t, w in enumerate(targets)))


def test_registry_lists_names_in_unknown_name_error():
    assert available() == ["lstm_attention", "transformer"]
    with pytest.raises(KeyError, match="lstm_attention, transformer"):
        create_decoder("gru")


@pytest.mark.parametrize("name", DECODERS)
def test_teacher_forcing_shapes_and_attention_is_a_distribution(name):
    decoder = make(name)
    tokens = torch.randint(3, 23, (5, 7))
    logits, alpha = decoder(grids(), tokens)
    assert logits.shape == (5, 7, 23) and alpha.shape == (5, 7, 12)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(5, 7))


@pytest.mark.parametrize(("name", "dim"), [*((n, 16) for n in DECODERS), ("lstm_attention", 48)])
def test_step_by_step_equals_teacher_forcing(name, dim):
    """The incremental path used by decoding computes exactly what training optimises."""
    decoder, grid = make(name, dim=dim), grids(dim=dim)
    tokens = torch.randint(3, 23, (5, 6))
    logits, alpha = decoder(grid, tokens)
    memory, state = decoder.start(grid)
    for t in range(tokens.size(1)):
        log_probs, step_alpha, state = decoder.step(memory, state, tokens[:, t])
        torch.testing.assert_close(log_probs, logits[:, t].log_softmax(-1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(step_alpha, alpha[:, t], atol=1e-5, rtol=1e-4)


class WholePrefix:
    """A decoder whose step runs teacher forcing over the whole prefix (no cache): what
    decoding computes without the incremental path."""

    def __init__(self, decoder):
        self.decoder = decoder

    def start(self, grid):
        return {"grid": grid}, {"prefix": torch.zeros(len(grid), 0, dtype=torch.long)}

    def step(self, memory, state, tokens):
        prefix = torch.cat([state["prefix"], tokens.unsqueeze(1)], dim=1)
        grid = memory["grid"].repeat_interleave(len(tokens) // len(memory["grid"]), dim=0)
        logits, alpha = self.decoder(grid, prefix)
        return logits[:, -1].log_softmax(-1), alpha[:, -1], {"prefix": prefix}


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("beam_size", [1, 3])
def test_decoding_with_the_step_equals_decoding_with_the_whole_prefix(name, beam_size):
    """Greedy and beam search find the same captions, scores and attention through the
    incremental step as through teacher forcing rerun over each prefix."""
    decoder, grid = make(name, seed=2), grids(n=6, seed=3)
    options = dict(beam_size=beam_size, start_id=START, end_id=END, max_len=8)
    with torch.no_grad():  # some captions end before max_len, some do not
        decoder.fc.weight *= 2
        decoder.fc.bias[END] += 0.3
        expected = decoding.decode(WholePrefix(decoder), grid, **options)
    out = decoding.decode(decoder, grid, **options)
    assert out.tokens == expected.tokens and len({len(t) for t in out.tokens}) > 1
    torch.testing.assert_close(out.log_prob, expected.log_prob, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.length, expected.length)
    for a, b in zip(out.attention, expected.attention, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", DECODERS)
def test_a_padded_batch_gives_each_caption_what_it_gets_alone(name):
    """Captions of different lengths in one batch (the LSTM shrinks the batch as they end):
    every real position's logits and attention equal those of the caption decoded alone."""
    decoder, grid = make(name), grids()
    lengths = [6, 2, 4, 6, 3]
    tokens = torch.zeros(5, 6, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(3, 23, (n,))
    logits, alpha = decoder(grid, tokens)
    for i, n in enumerate(lengths):
        alone_logits, alone_alpha = decoder(grid[i : i + 1], tokens[i : i + 1, :n])
        torch.testing.assert_close(logits[i, :n], alone_logits[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(alpha[i, :n], alone_alpha[0], atol=1e-5, rtol=1e-4)


def test_grid_projection_is_computed_once_per_batch(monkeypatch):
    decoder = make("lstm_attention")
    calls = []
    original = AdditiveAttention.project_grid
    monkeypatch.setattr(
        AdditiveAttention,
        "project_grid",
        lambda self, grid: calls.append(1) or original(self, grid),
    )
    decoder(grids(), torch.randint(3, 23, (5, 9)))
    assert len(calls) == 1


def test_gating_scalar_and_initial_state_follow_the_paper():
    decoder = make("lstm_attention")
    assert decoder.cell.f_beta.out_features == 1  # one gating scalar per step
    grid = grids()
    h, c = decoder.init_state(grid.flatten(2).transpose(1, 2))
    torch.testing.assert_close(h, torch.tanh(decoder.init_h(grid.mean((2, 3)))))


def test_transformer_rejects_a_grid_of_another_size():
    with pytest.raises(ValueError, match=r"\(3, 4\) grid"):
        make("transformer")(grids(grid=(4, 4)), torch.randint(3, 23, (5, 3)))


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_scores_are_the_model_log_probabilities(name):
    decoder, grid = make(name), grids()
    out = decoding.greedy(decoder, grid, start_id=START, end_id=END, max_len=12)
    for i, words in enumerate(out.tokens):
        assert END not in words and START not in words
        if out.length[i] == len(words) + 1:  # reached <end>
            assert out.log_prob[i] == pytest.approx(
                sequence_log_prob(decoder, grid[i], words), abs=1e-4
            )
        assert out.attention[i].shape == (len(words), 12)


@pytest.mark.parametrize("name", DECODERS)
def test_batched_beam_search_equals_one_image_at_a_time(name):
    decoder, grid = make(name), grids(n=6)
    batched = decoding.beam_search(
        decoder, grid, beam_size=4, start_id=START, end_id=END, max_len=10
    )
    for i in range(6):
        single = decoding.beam_search(
            decoder, grid[i : i + 1], beam_size=4, start_id=START, end_id=END, max_len=10
        )
        assert single.tokens[0] == batched.tokens[i]
        assert single.log_prob[0] == pytest.approx(float(batched.log_prob[i]), abs=1e-4)
        torch.testing.assert_close(single.attention[0], batched.attention[i], atol=1e-5, rtol=1e-4)


def test_captions_of_different_lengths_in_one_batch_equal_one_at_a_time():
    """Images whose beams end at different steps (finished beams go on with free <pad>): each
    gets exactly the caption, length, score and attention it gets alone."""
    decoder, grid = make("lstm_attention", seed=1), grids(n=8)
    with torch.no_grad():  # <end> at different steps per image (and some never)
        decoder.embed.weight *= 3
        decoder.fc.weight[END] *= 2.5
    options = dict(beam_size=3, start_id=START, end_id=END, max_len=12)
    batched = decoding.beam_search(decoder, grid, **options)
    assert len({len(t) for t in batched.tokens}) > 2
    for i in range(8):
        single = decoding.beam_search(decoder, grid[i : i + 1], **options)
        assert single.tokens[0] == batched.tokens[i]
        assert float(single.length[0]) == float(batched.length[i])
        assert single.log_prob[0] == pytest.approx(float(batched.log_prob[i]), abs=1e-4)
        torch.testing.assert_close(single.attention[0], batched.attention[i], atol=1e-5, rtol=1e-4)


def test_beam_size_one_is_greedy():
    decoder, grid = make("lstm_attention"), grids()
    greedy = decoding.greedy(decoder, grid, start_id=START, end_id=END, max_len=10)
    beam = decoding.beam_search(decoder, grid, beam_size=1, start_id=START, end_id=END, max_len=10)
    assert greedy.tokens == beam.tokens


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_optimum(length_penalty):
    """With a beam as wide as every hypothesis, beam search is exhaustive search."""
    vocab_size, max_len = 6, 3  # words 3, 4, 5
    decoder = make("lstm_attention", vocab_size=vocab_size, seed=3)
    grid = grids(n=2, seed=4)
    out = decoding.beam_search(
        decoder,
        grid,
        beam_size=vocab_size**max_len,
        start_id=START,
        end_id=END,
        max_len=max_len,
        length_penalty=length_penalty,
    )
    words = [3, 4, 5]
    for i in range(2):
        best, best_words = -math.inf, None
        for n in range(max_len):  # captions that end within max_len steps
            for seq in itertools.product(words, repeat=n):
                score = sequence_log_prob(decoder, grid[i], list(seq)) / (n + 1) ** length_penalty
                if score > best:
                    best, best_words = score, list(seq)
        found = float(out.log_prob[i]) / float(out.length[i]) ** length_penalty
        if out.length[i] == len(out.tokens[i]) + 1:
            assert found == pytest.approx(best, abs=1e-5)
            assert out.tokens[i] == best_words
        else:  # a caption cut at max_len beat every finished one
            assert found >= best - 1e-6


def test_decode_validates_beam_size():
    with pytest.raises(ValueError, match="beam_size"):
        decoding.beam_search(
            make("lstm_attention"), grids(), beam_size=0, start_id=START, end_id=END
        )


def test_attention_is_the_papers_additive_attention():
    torch.manual_seed(0)
    attention = AdditiveAttention(encoder_dim=16, hidden_dim=10, attention_dim=8)
    grid, h = torch.randn(3, 12, 16), torch.randn(3, 10)
    projected = attention.project_grid(grid)
    context, alpha = attention(grid, projected, h)
    e = attention.w(torch.tanh(attention.W_e(grid) + attention.W_h(h).unsqueeze(1))).squeeze(2)
    expected = torch.softmax(e, dim=1)
    torch.testing.assert_close(alpha, expected)
    torch.testing.assert_close(context, (expected.unsqueeze(2) * grid).sum(1))


def test_teacher_forcing_is_the_tutorials_loop_with_nn_lstm_cell():
    """Teacher forcing (sorted rows, the batch shrinking, the output layer over packed
    positions) computes what a plain loop over every step computes with the same nn.LSTMCell, and so
    do the gradients of every weight and of the grid (as when the encoder is fine-tuned)."""
    from mmlab.captioning.train import caption_loss

    decoder = make("lstm_attention", dropout=0.0).double().train()
    tokens = torch.randint(3, 23, (5, 8), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = START
    for row, length in enumerate([8, 3, 6, 2, 8]):
        tokens[row, length - 1], tokens[row, length:] = END, PAD
    grid = grids().double().requires_grad_()
    logits, alpha = decoder(grid, tokens[:, :-1])
    caption_loss(logits, alpha, tokens[:, 1:], PAD, attention_penalty=1.0)[0].backward()
    ours = [grid.grad, *(p.grad for p in decoder.parameters())]

    decoder.zero_grad()
    grid.grad = None
    a = grid.flatten(2).transpose(1, 2)
    h, c = torch.tanh(decoder.init_h(a.mean(1))), torch.tanh(decoder.init_c(a.mean(1)))
    step_logits, step_alpha = [], []
    for t in range(7):  # every row every step: the padded ones are masked by the loss
        e = decoder.cell.attention.w(
            torch.tanh(decoder.cell.attention.W_e(a) + decoder.cell.attention.W_h(h).unsqueeze(1))
        ).squeeze(2)
        weights = torch.softmax(e, dim=1)
        context = torch.sigmoid(decoder.cell.f_beta(h)) * (weights.unsqueeze(2) * a).sum(1)
        h, c = decoder.cell.lstm(torch.cat([decoder.embed(tokens[:, t]), context], 1), (h, c))
        step_logits.append(decoder.fc(h))
        step_alpha.append(weights)
    inside = (tokens[:, :-1] != PAD).unsqueeze(2)
    expected_logits = torch.stack(step_logits, 1) * inside
    expected_alpha = torch.stack(step_alpha, 1) * inside
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(alpha, expected_alpha)
    loss = caption_loss(expected_logits, expected_alpha, tokens[:, 1:], PAD, 1.0)[0]
    names = ["grid", *(n for n, _ in decoder.named_parameters())]
    expected = torch.autograd.grad(loss, [grid, *decoder.parameters()])
    for name, mine, theirs in zip(names, ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, msg=name)


@pytest.mark.parametrize("grad", [True, False])
def test_beams_attend_to_their_images_one_grid_row_without_copies(grad):
    """K hidden rows per grid row (beams of one image) get what each would get from its own
    copy of the grid, with and without gradients."""
    torch.manual_seed(0)
    attention = AdditiveAttention(encoder_dim=16, hidden_dim=10, attention_dim=8)
    grid, h = torch.randn(2, 12, 16), torch.randn(6, 10)  # 3 beams for each of 2 images
    copies = grid.repeat_interleave(3, dim=0)
    with torch.set_grad_enabled(grad):
        shared = attention(grid, attention.project_grid(grid), h)
        copied = attention(copies, attention.project_grid(copies), h)
    for a, b in zip(shared, copied, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_equals_nn_multihead_attention(causal):
    """The transformer's attention, given nn.MultiheadAttention's weights, gives the module's
    output and head-averaged weights, for causal self-attention and for cross-attention,
    with the weights asked for (written out) and without (scaled_dot_product_attention)."""
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ours = MultiHeadAttention(32, 4, dropout=0.0, cross=not causal).eval()
    weight, bias = reference.in_proj_weight, reference.in_proj_bias
    with torch.no_grad():
        if causal:
            ours.qkv.weight.copy_(weight), ours.qkv.bias.copy_(bias)
        else:
            ours.q.weight.copy_(weight[:32]), ours.q.bias.copy_(bias[:32])
            ours.kv.weight.copy_(weight[32:]), ours.kv.bias.copy_(bias[32:])
        ours.proj.load_state_dict(reference.out_proj.state_dict())
    x, memory = torch.randn(3, 7, 32), torch.randn(3, 12, 32)
    keys = x if causal else memory
    mask = torch.ones(7, keys.size(1), dtype=torch.bool).triu(1) if causal else None
    expected, expected_weights = reference(x, keys, keys, attn_mask=mask, need_weights=True)
    memory_arg = None if causal else memory
    out, weights, _ = ours(x, memory_arg, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    fused, none, _ = ours(x, memory_arg)
    torch.testing.assert_close(fused, expected)
    assert none is None


@pytest.mark.slow  # compiles
@pytest.mark.parametrize("name", DECODERS)
def test_a_compiled_decoder_computes_what_the_eager_one_does(name):
    """`compile` (the notebook's parameter) changes the speed, not the captions."""
    decoder, grid = make(name), grids()
    tokens = torch.randint(3, 23, (5, 7))
    tokens[1, 4:] = PAD
    options = dict(beam_size=2, start_id=START, end_id=END, max_len=6)
    expected, expected_captions = (
        decoder(grid, tokens),
        decoding.beam_search(decoder, grid, **options),
    )
    decoder.compile()
    for a, b in zip(decoder(grid, tokens), expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert decoding.beam_search(decoder, grid, **options).tokens == expected_captions.tokens
