"""Decoders, attention and batched decoding on random tensors (no data, no training)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmlab.captioning import available, create_decoder
from mmlab.captioning import decode as decoding
from mmlab.captioning.attention import AdditiveAttention
from mmlab.captioning.decoders import dropout, multihead_attention

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
    """The incremental path used by decoding computes exactly what training optimises
    (dim 48 on 12 locations: the LSTM folds W_c into the cached grid projection)."""
    decoder, grid = make(name, dim=dim), grids(dim=dim)
    tokens = torch.randint(3, 23, (5, 6))
    logits, alpha = decoder(grid, tokens)
    memory, state = decoder.start(grid)
    for t in range(tokens.size(1)):
        log_probs, step_alpha, state = decoder.step(memory, state, tokens[:, t])
        torch.testing.assert_close(log_probs, logits[:, t].log_softmax(-1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(step_alpha, alpha[:, t], atol=1e-5, rtol=1e-4)


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
    H, A = decoder.hidden_dim, decoder.attention_dim
    assert decoder.hidden_proj.out_features == 4 * H + A + 1  # f_beta gives one scalar
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
    decoder, grid = make("lstm_attention"), grids(n=8)
    with torch.no_grad():
        decoder.fc.weight[END] *= 3  # <end> at different steps per image (and some never)
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


def test_folded_context_projection_equals_projecting_the_context():
    """`beta * alpha @ (W_c a)` (cached per batch) is `W_c (beta * alpha @ a)` (per step)."""
    from mmlab.captioning.decoders import grid_tokens

    decoder = make("lstm_attention", dim=48)
    grid = grid_tokens(grids(dim=48))
    folded = decoder.project_grid(grid)
    assert "grid_gates" in folded
    plain = {"projected_grid": folded["projected_grid"], "grid": grid}
    h, c = decoder.init_state(grid)
    word_gates = torch.randn(5, 4 * decoder.hidden_dim)
    for a, b in zip(
        decoder._cell(folded, word_gates, h, c), decoder._cell(plain, word_gates, h, c), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_attention_is_the_papers_additive_attention():
    torch.manual_seed(0)
    attention = AdditiveAttention(encoder_dim=16, attention_dim=8)
    grid, W_h_h = torch.randn(3, 12, 16), torch.randn(3, 8)
    projected = attention.project_grid(grid)
    context, alpha = attention(grid, projected, W_h_h)
    e = attention.w(torch.tanh(attention.W_e(grid) + W_h_h.unsqueeze(1))).squeeze(2)
    expected = torch.softmax(e, dim=1)
    torch.testing.assert_close(alpha, expected)
    torch.testing.assert_close(context, (expected.unsqueeze(2) * grid).sum(1))


def test_decoding_scores_attention_in_blocks_with_the_same_result(monkeypatch):
    """Without gradients, the attention scores are computed a few rows at a time (to stay in
    the CPU cache while decoding many beams); alpha is the same as in one piece."""
    from mmlab.captioning import attention as module

    torch.manual_seed(0)
    attention = AdditiveAttention(encoder_dim=16, attention_dim=8)
    grid, W_h_h = torch.randn(7, 12, 16), torch.randn(7, 8)
    projected = attention.project_grid(grid)
    _, whole = attention(grid, projected, W_h_h)
    monkeypatch.setattr(module, "block_elements", lambda: 2 * 12 * 8)  # 2 rows: 4 blocks
    with torch.no_grad():
        _, blocked = attention(grid, projected, W_h_h)
    torch.testing.assert_close(blocked, whole)


@pytest.mark.parametrize("dim", [16, 96])  # W_c per step; W_c a cached per batch (deep grid)
def test_the_hand_written_training_backward_equals_autograds(monkeypatch, dim):
    """On a CPU, teacher forcing runs the recurrence as one node with a hand-written backward;
    its gradients (every weight, and the grid's, as when the encoder is fine-tuned) must be
    autograd's through `_cell` step by step, with captions of different lengths and the
    attention penalty on alpha."""
    from mmlab.captioning import attention as module
    from mmlab.captioning.train import caption_loss

    monkeypatch.setattr(module, "block_elements", lambda: 2 * 12 * 24)  # blocks of 2 rows
    decoder = make("lstm_attention", dim=dim, dropout=0.0).double().train()
    tokens = torch.randint(3, 23, (5, 8), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = START
    for row, length in enumerate([8, 3, 6, 2, 8]):
        tokens[row, length - 1], tokens[row, length:] = END, PAD
    results = []
    for recurrence in ("_fused", "_stepwise"):
        monkeypatch.setattr(decoder, "_fused", getattr(decoder, recurrence))
        grid = grids(dim=dim).double().requires_grad_()
        decoder.zero_grad()
        logits, alpha = decoder(grid, tokens[:, :-1])
        caption_loss(logits, alpha, tokens[:, 1:], PAD, attention_penalty=1.0)[0].backward()
        grads = {name: p.grad for name, p in decoder.named_parameters()}
        results.append((logits, alpha, grid.grad, grads))
    (logits, alpha, d_grid, grads), expected = results
    torch.testing.assert_close(logits, expected[0])
    torch.testing.assert_close(alpha, expected[1])
    torch.testing.assert_close(d_grid, expected[2])
    assert grads.keys() == expected[3].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[3][name], msg=name)


def test_word_gates_from_the_vocabulary_table_equal_the_products_word_by_word():
    """A batch with more words than the vocabulary looks its input-gate products up in a
    table of the vocabulary's: the values and the gradients of the embedding and of the input
    weights must be those of multiplying word by word (padding never gets a gradient)."""
    decoder = make("lstm_attention").double().train()
    words = torch.randint(1, 23, (60,), generator=torch.Generator().manual_seed(3))
    upstream = torch.randn(60, 4 * 32, dtype=torch.double)
    results = []
    for table in (True, False):
        decoder.zero_grad()
        gates = decoder.word_gates(words) if table else decoder.input_gates(decoder.embed(words))
        (gates * upstream).sum().backward()
        results.append((gates, decoder.embed.weight.grad, decoder.input_gates.weight.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    assert results[0][1][PAD].abs().sum() == 0


@pytest.mark.parametrize("grad", [True, False])
def test_beams_attend_to_their_images_one_grid_row_without_copies(grad):
    """K hidden rows per grid row (beams of one image) get what each would get from its own
    copy of the grid, with and without gradients (the blocked decoding path)."""
    torch.manual_seed(0)
    attention = AdditiveAttention(encoder_dim=16, attention_dim=8)
    grid, W_h_h = torch.randn(2, 12, 16), torch.randn(6, 8)  # 3 beams for each of 2 images
    copies = grid.repeat_interleave(3, dim=0)
    with torch.set_grad_enabled(grad):
        shared = attention(grid, attention.project_grid(grid), W_h_h)
        copied = attention(copies, attention.project_grid(copies), W_h_h)
    for a, b in zip(shared, copied, strict=True):
        torch.testing.assert_close(a, b)


def test_decoder_dropout_drops_a_fraction_p_and_rescales_the_rest():
    """The decoder's own dropout (a cheaper mask on a CPU) behaves as `F.dropout`: each value
    is kept with probability 1 - p and scaled by 1 / (1 - p), the gradient flows through the
    kept ones only, and outside training nothing changes."""
    torch.manual_seed(0)
    x = torch.ones(1000, 256, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.005  # 256000 draws: sd 0.0009
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
    assert dropout(x, 0.3, training=False) is x


@pytest.mark.parametrize("causal", [False, True])
def test_written_out_attention_equals_the_multihead_attention_module(causal):
    """The transformer's layers run their attention by hand (`multihead_attention`) with the
    parameters of `nn.MultiheadAttention`: the output and the head-averaged weights must be
    the module's, for self-attention with a causal mask and for cross-attention."""
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x, memory = torch.randn(3, 7, 32), torch.randn(3, 12, 32)
    keys = x if causal else memory
    mask = torch.ones(7, keys.size(1), dtype=torch.bool).triu(1) if causal else None
    expected, expected_weights = attn(x, keys, keys, attn_mask=mask, need_weights=True)
    out, weights = multihead_attention(attn, x, keys, causal=causal, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    fused, none = multihead_attention(attn, x, keys, causal=causal)
    torch.testing.assert_close(fused, expected)
    assert none is None
