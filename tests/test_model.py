import pytest
import torch

from raygpt.checkpoint import load_model
from raygpt.config import ModelConfig
from raygpt.model import GPT
from raygpt.model.kv_cache import KVCache
from raygpt.model.packed_linear import PackedLinear
from raygpt.model.sampling import CDF_BLOCK, invert_cdf, sample_next_token

SMALL = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=300, bias=False)
MODERN = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2}


def small_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(**{**SMALL.__dict__, **overrides})
    return GPT(config).eval()


def test_logits_equal_transformers_gpt2_after_import(hf_dir, hf_model):
    model, meta = load_model(hf_dir)
    assert meta.source == "hf-gpt2" and meta.tokenizer == "gpt2"
    assert model.config.padded_vocab_size == 50304
    idx = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(idx).logits
    assert (ours[..., :50257] - theirs).abs().max().item() < 1e-4


def test_cached_prefill_and_decode_give_the_full_forward_logits():
    model = small_model()
    idx = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config, batch_size=3, max_len=40)
        prefill, _ = model(idx[:, :25], cache=cache, start_pos=0)
        chunk, _ = model(idx[:, 25:32], cache=cache, start_pos=25)  # several new tokens at once
        steps = [model(idx[:, t : t + 1], cache=cache, start_pos=t)[0] for t in range(32, 40)]
    incremental = torch.cat([prefill, chunk, *steps], dim=1)
    assert torch.allclose(incremental, full, atol=1e-5)


@pytest.mark.parametrize("new_tokens", [30, 100])  # 100 runs past block_size=64: a sliding window
def test_greedy_generation_with_cache_equals_without(new_tokens):
    model = small_model()
    prompt = torch.randint(0, 300, (2, 7))
    with_cache = model.generate(prompt, new_tokens, temperature=0)
    without = model.generate(prompt, new_tokens, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 7 + new_tokens)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :7], prompt)


def test_greedy_generation_matches_transformers_generate(hf_dir, hf_model):
    model, _ = load_model(hf_dir)
    prompt = torch.randint(0, 50257, (1, 5))
    ours = model.generate(prompt, 30, temperature=0)
    theirs = hf_model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = small_model()
    prompt = torch.randint(0, 300, (1, 4))
    kwargs = dict(temperature=1.0, top_k=50, top_p=0.95)
    a = model.generate(prompt, 40, seed=7, **kwargs)
    b = model.generate(prompt, 40, seed=7, **kwargs)
    c = model.generate(prompt, 40, seed=8, **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # top_k=1 leaves one candidate: the same as greedy whatever the seed
    assert torch.equal(
        model.generate(prompt, 20, top_k=1, seed=3), model.generate(prompt, 20, temperature=0)
    )


def test_stop_tokens_end_a_row_and_pad_it():
    model = small_model()
    prompt = torch.randint(0, 300, (2, 4))
    free = model.generate(prompt, 20, temperature=0)
    stop = int(free[0, 4 + 5])  # row 0's sixth new token
    out = model.generate(prompt, 20, temperature=0, stop_tokens=[stop])
    row0 = out[0, 4:].tolist()
    first = row0.index(stop)
    assert first <= 5 and torch.equal(out[0, : 4 + first + 1], free[0, : 4 + first + 1])
    assert all(t == stop for t in row0[first:])  # padded after the stop
    if stop not in free[1, 4:].tolist():
        assert out.shape[1] == free.shape[1]  # the other row kept going
        assert torch.equal(out[1], free[1])


def test_padded_vocabulary_is_never_sampled():
    model = small_model()
    with torch.no_grad():  # make the padding rows the most likely "tokens" by far
        model.transformer.wte.weight[300:] = model.transformer.wte.weight[:20].sum(0) * 100
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 30, temperature=2.0, seed=0)
    assert int(out.max()) < 300


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {
        int(sample_next_token(logits, top_p=0.6, generator=torch.Generator().manual_seed(s)))
        for s in range(200)
    }
    assert draws == {0, 1}
    assert (
        int(sample_next_token(logits, top_p=0.4, generator=torch.Generator().manual_seed(0))) == 0
    )
    assert int(sample_next_token(logits, temperature=0)) == 0


def test_sampling_draws_each_token_at_its_probability():
    """Inverting the distribution at one uniform number per row: frequencies follow the
    probabilities, a token of probability 0 never comes, and rows draw independently."""
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.15, 0.05], [0.0, 0.0, 0.0, 0.0, 1.0]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [sample_next_token(probs.log(), generator=generator) for _ in range(20_000)]
    )
    frequencies = torch.bincount(draws[:, 0], minlength=5) / len(draws)
    torch.testing.assert_close(frequencies, probs[0], atol=0.015, rtol=0)
    assert frequencies[1] == 0
    assert bool((draws[:, 1] == 4).all())
    edge = invert_cdf(probs, torch.tensor([0.0, 1.0 - 2**-53], dtype=torch.float64))
    assert edge.tolist() == [0, 4]  # the ends of [0, 1) land on tokens of probability > 0


def test_inverting_a_vocabulary_of_many_blocks_matches_one_cumulative_sum():
    """The two-level inversion (block sums, then one block) picks what a float64 cumulative
    sum of the whole row picks, across block edges and a part-filled last block, and the
    ends of [0, 1) still land on tokens of weight > 0 when whole blocks weigh nothing."""
    vocab = 3 * CDF_BLOCK + 77
    weights = torch.rand(4, vocab, generator=torch.Generator().manual_seed(0)) ** 4
    weights[:, : CDF_BLOCK + 5] = 0  # the first block and the next one's start
    weights[1, 2 * CDF_BLOCK :] = 0  # row 1 ends one block and a tail early
    weights[2, : vocab - 3] = 0  # row 2: only the tail's last tokens
    uniforms = torch.rand(500, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cdf = weights.double().cumsum(dim=-1)
    for u in uniforms:
        expected = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).squeeze(-1)
        assert invert_cdf(weights, u).tolist() == expected.tolist()
    for end in (0.0, 1.0 - 2**-53):
        tokens = invert_cdf(weights, torch.full((4,), end, dtype=torch.float64))
        assert bool((weights.gather(1, tokens[:, None]) > 0).all())


def test_crop_block_size():
    model = small_model()
    idx = torch.randint(0, 300, (1, 32))
    with torch.no_grad():
        before, _ = model(idx)
        model.crop_block_size(32)
        after, _ = model(idx)
    assert torch.equal(before, after)
    assert model.transformer.wpe.weight.shape[0] == 32
    with pytest.raises(ValueError, match="exceeds block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_training_step_with_dropout_reduces_loss():
    model = small_model(dropout=0.1, bias=True).train()
    assert model.lm_head.weight is model.transformer.wte.weight
    data = torch.randint(0, 300, (4, 33))
    x, y = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(
        torch.log(torch.tensor(300.0)).item(), rel=0.1
    )  # ~uniform at init
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("block", [{}, MODERN], ids=["gpt2", "modern"])
def test_decode_layout_packs_every_matmul_and_keeps_results(block):
    """CPU serving packs each weight for oneDNN (tied head: a packed copy, the embedding
    keeps the matrix): same logits, same greedy tokens, with and without the KV cache."""
    model = small_model(**block)
    prompt = torch.randint(0, 300, (2, 5))
    idx = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        before_logits, _ = model(idx)
    before = model.generate(prompt, 30, temperature=0)
    model.use_decode_layout()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [] and isinstance(model.lm_head, PackedLinear)
    assert isinstance(model.transformer.wte, torch.nn.Embedding)
    with torch.no_grad():
        after_logits, _ = model(idx)
    assert torch.allclose(before_logits, after_logits, atol=1e-5)
    assert torch.equal(model.generate(prompt, 30, temperature=0), before)
    assert torch.equal(model.generate(prompt, 30, temperature=0, use_cache=False), before)


def test_decode_layout_in_bfloat16_follows_the_unpacked_model():
    model = small_model(**MODERN).to(torch.bfloat16)
    idx = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        before, _ = model(idx)
        after, _ = model.use_decode_layout()(idx)
    assert after.dtype == torch.bfloat16
    assert torch.allclose(before.float(), after.float(), atol=0.05, rtol=0.05)


def test_sampling_rejects_impossible_parameters():
    logits = torch.zeros(1, 10)
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1.0), dict(top_k=-2)):
        with pytest.raises(ValueError):
            sample_next_token(logits, **bad)
