"""Speculative decoding in the engine: proposals change how fast, never what comes out."""

from __future__ import annotations

import pytest
import torch

from raygpt.inference.draft_model import layers_of
from raygpt.inference.engine import GenerationEngine, GenerationRequest
from raygpt.inference.prompt_lookup import PromptLookup
from raygpt.inference.speculation import SpeculationConfig, accept_greedy
from raygpt.model.int8 import quantize_model
from tests.test_engine import BYTES, MODERN, PROMPTS, byte_model, greedy, run_all, tokens_of

NGRAM = SpeculationConfig("ngram", k=4, ngram_min=1, ngram_max=3)
DRAFT = SpeculationConfig("draft", k=3, draft="test")


def test_prompt_lookup_proposes_what_followed_the_latest_longest_match():
    lookup = PromptLookup([1, 2, 3, 4, 9, 2, 3, 5, 6], min_n=1, max_n=3)
    assert lookup.propose(4) == []  # 6 never occurred before
    lookup.append(2)
    assert lookup.propose(2) == [3, 5]  # the latest 2 was followed by 3, 5 (not 3, 4)
    lookup.append(3)
    lookup.append(4)  # the suffix 2, 3, 4 matches the start: the longer match wins
    assert lookup.propose(3) == [9, 2, 3]
    assert PromptLookup([7, 7], 2, 3).propose(4) == []  # its own tail is no match


def test_greedy_acceptance_keeps_the_agreeing_prefix_and_one_token_more():
    assert accept_greedy([5, 6, 7], [5, 6, 8, 9]) == [5, 6, 8]
    assert accept_greedy([5, 6], [5, 6, 1]) == [5, 6, 1]  # all kept: one more
    assert accept_greedy([4], [5, 6]) == [5]


def speculative_engine(model, method: str, **kwargs) -> GenerationEngine:
    if method == "ngram":
        return GenerationEngine(model, BYTES, speculation=NGRAM, **kwargs)
    draft = {
        "draft": byte_model(block_size=model.config.block_size, seed=1),  # another model
        "self-draft": layers_of(model, 1),  # the target's first layer and head
    }[method]
    return GenerationEngine(model, BYTES, speculation=DRAFT, draft_model=draft, **kwargs)


@pytest.mark.parametrize(
    ("method", "weights", "compiled"),
    [
        ("ngram", "fp32", False),
        ("draft", "fp32", False),
        ("self-draft", "int8", False),
        ("ngram", "int8", True),
        ("self-draft", "packed", True),
    ],
)
def test_greedy_speculation_gives_exactly_the_tokens_of_plain_decoding(method, weights, compiled):
    """Alone and batched with rows joining, leaving and opting out: each request gets the
    tokens of `generate` without speculation."""
    model = byte_model(block_size=128, **(MODERN if weights != "fp32" else {}))
    if weights == "int8":
        model = quantize_model(model)
    elif weights == "packed":
        model.use_decode_layout()
    lengths = [30, 7, 45, 2, 20, 33]
    prompts = [p * 3 for p in PROMPTS] + ["abcabcabcabc"]
    requests = [greedy(p, n) for p, n in zip(prompts, lengths, strict=True)]
    requests[1] = greedy(prompts[1], lengths[1], speculate=False)
    expected = [
        model.generate(torch.tensor([r.prompt]), r.max_tokens, temperature=0)[0, len(r.prompt) :]
        for r in requests
    ]
    for slots in (1, 3):
        engine = speculative_engine(model, method, max_slots=slots, compile_decode=compiled)
        results = run_all(engine, requests)
        for want, updates in zip(expected, results, strict=True):
            assert tokens_of(updates) == want.tolist()
            assert updates[-1].finish_reason == "length"
        stats = engine.stats()
        assert stats.tokens_accepted > 0 and stats.steps < sum(lengths)


def test_an_opted_out_request_proposes_nothing():
    engine = speculative_engine(byte_model(), "ngram", max_slots=2)
    run_all(engine, [greedy("abababab", 20, speculate=False)])
    assert engine.stats().tokens_proposed == 0
    run_all(engine, [greedy("abababab", 20)])
    assert engine.stats().tokens_proposed > 0


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test of observed counts against cell probabilities (cells expecting fewer
    than 5 pooled into one)."""
    expected = probs * counts.sum()
    small = expected < 5
    observed = torch.cat([counts[~small], counts[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    statistic = float(((observed - expected)[keep] ** 2 / expected[keep]).sum())
    freedom = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(freedom / 2), torch.tensor(statistic / 2)))


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_sampled_speculation_keeps_the_target_distribution(method):
    """The first three sampled tokens of many seeds, with speculation, against the target's
    own joint distribution over them (top-k 4, so 64 outcomes): a rule that keeps a
    proposal too often, or redraws from the target's p instead of the residual after a
    refusal, fails this."""
    model = byte_model(block_size=64, seed=3)
    with torch.no_grad():  # sharper than random init: p far from uniform
        model.lm_head.weight.mul_(2)
    sampling = dict(temperature=1.0, top_k=4)
    # A prompt of the tokens the model likes, so prompt lookup finds matches.
    prompt = model.generate(torch.tensor([BYTES.encode("ab")]), 30, seed=7, **sampling)[0].tolist()

    # The target's joint distribution of the first three tokens, from its conditionals.
    def next_probs(prefix: list[int]) -> torch.Tensor:
        logits = model(torch.tensor([prefix]))[0][0, -1, : model.config.vocab_size]
        top = torch.topk(logits, 4)
        return torch.zeros_like(logits).index_put_((top.indices,), torch.softmax(top.values, -1))

    outcomes, probs = [], []
    with torch.no_grad():
        first = next_probs(prompt)
        for a in first.nonzero().flatten().tolist():
            second = next_probs([*prompt, a])
            for b in second.nonzero().flatten().tolist():
                third = next_probs([*prompt, a, b])
                for c in third.nonzero().flatten().tolist():
                    outcomes.append((a, b, c))
                    probs.append(float(first[a] * second[b] * third[c]))
    index = {outcome: i for i, outcome in enumerate(outcomes)}

    samples = 2000
    requests = [
        GenerationRequest(tuple(prompt), 4, seed=seed, stop_at_eot=False, **sampling)
        for seed in range(samples)
    ]
    if method == "ngram":
        engine = GenerationEngine(model, BYTES, max_slots=32, max_queue=samples, speculation=NGRAM)
    else:  # the same model unsharpened: q overlaps p without equalling it
        draft = byte_model(block_size=64, seed=3)
        engine = GenerationEngine(model, BYTES, 32, samples, speculation=DRAFT, draft_model=draft)
    counts = torch.zeros(len(outcomes), dtype=torch.float64)
    for updates in run_all(engine, requests):
        counts[index[tuple(tokens_of(updates)[:3])]] += 1
    stats = engine.stats()
    assert stats.tokens_proposed > samples // 2  # speculation ran: most requests proposed
    assert 0 < stats.tokens_accepted < stats.tokens_proposed  # and some were refused
    p_value = chi_square_p_value(counts, torch.tensor(probs, dtype=torch.float64))
    assert p_value > 1e-3, f"p = {p_value:.2e}"


def test_speculation_settings_are_checked():
    with pytest.raises(ValueError, match="k must be"):
        SpeculationConfig("ngram", k=0)
    with pytest.raises(ValueError, match="draft checkpoint"):
        SpeculationConfig("draft")
    with pytest.raises(ValueError, match="method"):
        SpeculationConfig("medusa")
    other_vocab = byte_model()
    other_vocab.config.vocab_size = 100
    with pytest.raises(ValueError, match="same tokenizer"):
        GenerationEngine(byte_model(), BYTES, speculation=DRAFT, draft_model=other_vocab)
