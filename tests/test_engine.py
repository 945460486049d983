"""The generation engine (no Ray): continuous batching must not change what a request gets."""

from __future__ import annotations

import pytest
import torch

from raygpt.config import ModelConfig
from raygpt.inference.engine import (
    GenerationEngine,
    GenerationRequest,
    GenerationUpdate,
    generate_alone,
)
from raygpt.inference.text_stream import TextStream
from raygpt.model import GPT
from raygpt.model.int8 import quantize_model
from raygpt.model.kv_cache import KVCache
from raygpt.tokenizer import get_tokenizer

BYTES = get_tokenizer("byte")
PROMPTS = ["def f(x):", "import os\n", "class A:\n    def", "x", "for i in range(10):\n  "]


def byte_model(block_size: int = 64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(
        n_layer=2, n_head=4, n_embd=64, block_size=block_size, vocab_size=257, bias=False
    )
    return GPT(config).eval()


def greedy(prompt: str, max_tokens: int, **kwargs) -> GenerationRequest:
    return GenerationRequest(
        tuple(BYTES.encode(prompt)), max_tokens, temperature=0, stop_at_eot=False, **kwargs
    )


def run_all(engine: GenerationEngine, requests: list[GenerationRequest]):
    """Submit everything at once, step until all finish; each request's updates."""
    updates: dict[int, list[GenerationUpdate]] = {}
    for i, request in enumerate(requests):
        updates[i] = []
        engine.submit(request, updates[i].append)
    while not all(u and u[-1].finish_reason for u in updates.values()):
        engine.step()
    return [updates[i] for i in range(len(requests))]


def tokens_of(updates: list[GenerationUpdate]) -> list[int]:
    return [t for u in updates for t in u.token_ids]


def test_per_row_positions_match_one_row_at_a_time():
    model = byte_model()
    cache = KVCache(model.config, 3, dtype=torch.float32)
    lengths = [5, 9, 2]
    with torch.no_grad():
        for row, n in enumerate(lengths):
            model(torch.randint(0, 256, (1, n)), cache=cache.rows(row, row + 1))
        alone = [
            model(torch.tensor([[7]]), cache=cache.rows(row, row + 1), start_pos=n)[0]
            for row, n in enumerate(lengths)
        ]
        # The same three rows again, decoded together, each at its own position (the cache
        # rows hold the same keys: the step above wrote position n, which we rewrite here).
        together, _ = model(
            torch.tensor([[7], [7], [7]]), cache=cache, start_pos=torch.tensor(lengths)
        )
    for row in range(3):
        torch.testing.assert_close(together[row], alone[row][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_batched_greedy_equals_each_request_alone(int8):
    model = byte_model()
    if int8:
        model = quantize_model(model)
    lengths = [12, 40, 3, 60, 25]
    requests = [greedy(p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    # Two slots for five requests: the rest queue and join as rows free up.
    results = run_all(GenerationEngine(model, BYTES, max_slots=2), requests)
    for request, updates in zip(requests, results, strict=True):
        expected = model.generate(torch.tensor([request.prompt]), request.max_tokens, temperature=0)
        expected = expected[0, len(request.prompt) :].tolist()
        assert tokens_of(updates) == expected
        assert updates[-1].finish_reason == "length"
        assert "".join(u.text for u in updates) == BYTES.decode(expected)


def test_seeded_sampling_is_the_same_alone_and_batched():
    model = byte_model()
    sampled = [
        GenerationRequest(tuple(BYTES.encode(p)), 20, temperature=0.9, top_k=50, seed=i)
        for i, p in enumerate(PROMPTS)
    ]
    together = run_all(GenerationEngine(model, BYTES, max_slots=8), sampled)
    for request, updates in zip(sampled, together, strict=True):
        assert tokens_of(updates) == generate_alone(model, BYTES, request)[2]
    other_seed = GenerationRequest(sampled[0].prompt, 20, temperature=0.9, top_k=50, seed=99)
    assert generate_alone(model, BYTES, other_seed)[2] != tokens_of(together[0])


def test_stop_string_ends_the_completion_before_it():
    model = byte_model()
    text, reason, _ = generate_alone(model, BYTES, greedy("def f(x):", 40))
    stop = text[10:13]  # a string the model is known to produce
    cut, cut_reason, tokens = generate_alone(model, BYTES, greedy("def f(x):", 40, stop=(stop,)))
    assert (reason, cut_reason) == ("length", "stop")
    assert cut == text[: text.index(stop)]
    assert len(tokens) == text.index(stop) + len(stop)  # it stopped as soon as the stop appeared


def test_the_context_window_ends_a_request_with_length():
    model = byte_model(block_size=32)
    _, reason, tokens = generate_alone(model, BYTES, greedy("0123456789", 100))
    assert reason == "length"
    assert len(tokens) == 32 - 10 + 1  # the last token is sampled from position 31
    with pytest.raises(ValueError, match="context window is 32"):
        GenerationEngine(model, BYTES).submit(greedy("x" * 32, 5), print)


def test_cancel_frees_the_slot_for_the_next_request():
    engine = GenerationEngine(byte_model(), BYTES, max_slots=1)
    first: list[GenerationUpdate] = []
    second: list[GenerationUpdate] = []
    first_id = engine.submit(greedy("a", 50), first.append)
    engine.submit(greedy("b", 5), second.append)
    engine.step()
    assert engine.stats().active == 1 and engine.stats().queued == 1
    engine.cancel(first_id)
    while not (second and second[-1].finish_reason):
        engine.step()
    assert first[-1].finish_reason == "cancelled"
    assert len(tokens_of(first)) < 50
    assert second[-1].finish_reason == "length"
    stats = engine.stats()
    assert (stats.active, stats.queued, stats.requests_cancelled) == (0, 0, 1)


def test_background_thread_serves_requests():
    engine = GenerationEngine(byte_model(), BYTES, max_slots=4).start()
    try:
        import threading

        done = threading.Event()
        updates: list[GenerationUpdate] = []

        def collect(update: GenerationUpdate) -> None:
            updates.append(update)
            if update.finish_reason:
                done.set()

        engine.submit(greedy("abc", 10), collect)
        assert done.wait(60)
        assert len(tokens_of(updates)) == 10 and engine.alive
    finally:
        engine.stop()
    assert not engine.alive


@pytest.mark.parametrize(
    "request_, message",
    [
        (GenerationRequest((), 5), "no tokens"),
        (GenerationRequest((1,), 0), "max_tokens"),
        (GenerationRequest((300,), 5), "token ids"),
        (GenerationRequest((1,), 5, temperature=-1), "temperature"),
        (GenerationRequest((1,), 5, top_p=1.5), "top_p"),
    ],
)
def test_bad_requests_are_refused_at_submit(request_, message):
    engine = GenerationEngine(byte_model(), BYTES, max_slots=1)
    with pytest.raises(ValueError, match=message):
        engine.submit(request_, print)
    assert engine.stats().queued == 0


def test_text_stream_holds_back_possible_stop_strings_and_split_characters():
    stream = TextStream(BYTES, stop=["\n\n", "END"])
    pieces = [stream.push(b) for b in b"ab\nc"]
    assert pieces == ["a", "b", "", "\nc"]  # "\n" might have begun "\n\n"
    euro = "€".encode()  # three bytes, one character
    assert [stream.push(b) for b in euro] == ["", "", "€"]
    assert [stream.push(b) for b in b"xEN"] == ["x", "", ""]
    assert stream.push(ord("D")) == "" and stream.stopped
    assert stream.finish() == ""
    unfinished = TextStream(BYTES)
    unfinished.push(euro[0])
    assert unfinished.finish() == "\ufffd"
