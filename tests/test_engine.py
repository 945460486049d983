"""The generation engine (no Ray): continuous batching must not change what a request gets."""

from __future__ import annotations

import pytest
import torch

from raygpt.config import ModelConfig
from raygpt.errors import RequestError
from raygpt.inference.engine import (
    EngineError,
    GenerationEngine,
    GenerationRequest,
    GenerationUpdate,
    generate_alone,
)
from raygpt.inference.text_stream import TextStream
from raygpt.model import GPT
from raygpt.model.gpt import MixedStep, PackedPrompts, RowPositions
from raygpt.model.int8 import quantize_model
from raygpt.model.kv_cache import KVCache
from raygpt.model.packed_linear import PackedLinear
from raygpt.tokenizer import get_tokenizer

BYTES = get_tokenizer("byte")
PROMPTS = ["def f(x):", "import os\n", "class A:\n    def", "x", "for i in range(10):\n  "]


def byte_model(block_size: int = 64, seed: int = 0, **block) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(
        n_layer=2, n_head=4, n_embd=64, block_size=block_size, vocab_size=257, bias=False, **block
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


MODERN = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2}


@pytest.mark.parametrize("block", [{}, MODERN], ids=["gpt2", "modern"])
def test_packed_prompts_match_one_prompt_at_a_time(block):
    """Prefill of several prompts in one pass (the engine's admission): each prompt's logits
    and cached keys and values are those of a pass of its own."""
    model = byte_model(**block)
    lengths, rows = [5, 9, 2], [2, 0, 1]
    prompts = [torch.randint(0, 256, (1, n)) for n in lengths]
    alone_cache, packed_cache = (KVCache(model.config, 3) for _ in range(2))
    with torch.no_grad():
        alone = [
            model(p, cache=alone_cache.rows(r, r + 1), last_logits_only=True)[0]
            for p, r in zip(prompts, rows, strict=True)
        ]
        packed, _ = model(
            torch.cat(prompts, dim=1),
            cache=packed_cache,
            start_pos=PackedPrompts(lengths, rows, torch.device("cpu")),
        )
    assert packed.shape == (3, 1, model.config.padded_vocab_size)
    for i, (n, r) in enumerate(zip(lengths, rows, strict=True)):
        torch.testing.assert_close(packed[i], alone[i][0], atol=1e-5, rtol=1e-5)
        for layer in range(model.config.n_layer):
            for a, b in zip(alone_cache.layer(layer), packed_cache.layer(layer), strict=True):
                torch.testing.assert_close(b[r, :, :n], a[r, :, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [{}, MODERN], ids=["gpt2", "modern"])
def test_prompt_pieces_after_cached_positions_match_one_pass(block):
    """Chunked prefill: a prompt's rest, packed with other prompts, attends to the positions an
    earlier pass cached, and gets the logits and keys of the whole prompt in one pass."""
    model = byte_model(**block)
    lengths, rows = [30, 9, 21], [1, 2, 0]
    prompts = [torch.randint(0, 256, (1, n)) for n in lengths]
    whole_cache, pieces_cache = (KVCache(model.config, 3) for _ in range(2))
    cut = {1: 12, 0: 20}  # rows 1 and 0 have this many positions cached by a first pass
    with torch.no_grad():
        whole = [
            model(p, cache=whole_cache.rows(r, r + 1), last_logits_only=True)[0]
            for p, r in zip(prompts, rows, strict=True)
        ]
        model(prompts[0][:, : cut[1]], cache=pieces_cache.rows(1, 2))
        model(prompts[2][:, : cut[0]], cache=pieces_cache.rows(0, 1))
        starts = [cut.get(r, 0) for r in rows]
        rest = [p[:, a:] for p, a in zip(prompts, starts, strict=True)]
        packed, _ = model(
            torch.cat(rest, dim=1),
            cache=pieces_cache,
            start_pos=PackedPrompts(
                [n - a for n, a in zip(lengths, starts, strict=True)],
                rows,
                torch.device("cpu"),
                starts,
            ),
        )
    for i, (n, r) in enumerate(zip(lengths, rows, strict=True)):
        torch.testing.assert_close(packed[i], whole[i][0], atol=1e-5, rtol=1e-5)
        for layer in range(model.config.n_layer):
            for a, b in zip(whole_cache.layer(layer), pieces_cache.layer(layer), strict=True):
                torch.testing.assert_close(b[r, :, :n], a[r, :, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [{}, MODERN], ids=["gpt2", "modern"])
@pytest.mark.parametrize(
    ("lengths", "rows", "starts"),
    [([9, 4], [2, 3], [0, 6]), ([4], [3], [6]), ([9], [2], [0])],
    ids=["two-pieces", "one-piece-after-cached", "one-prompt"],
)
def test_a_mixed_step_gives_each_row_what_its_own_pass_gives(block, lengths, rows, starts):
    """Prefill pieces and decoding rows in one pass (MixedStep): the decoding rows get the
    logits of a batched decode step, the pieces (a whole prompt, or the rest of one whose
    start is cached) those of a pass of their own, and the cache the same keys and values."""
    model = byte_model(**block)
    decode_lengths = [7, 3]  # rows 0 and 1 decode; rows 2 and 3 may be prefilled
    prompts = [torch.randint(0, 256, (1, n)) for n in [*decode_lengths, 6]]  # row 3: 6 cached
    pieces = [torch.randint(0, 256, (1, n)) for n in lengths]
    step_tokens = torch.tensor([[11], [12]])
    caches = []
    for _ in range(2):
        cache = KVCache(model.config, 4)
        with torch.no_grad():
            for row, prompt in zip([0, 1, 3], prompts, strict=True):
                model(prompt, cache=cache.rows(row, row + 1))
        caches.append(cache)
    two_passes, one_pass = caches
    with torch.no_grad():
        prefill = torch.cat(
            [  # each piece in a pass of its own, on its row
                model(p, cache=two_passes.rows(r, r + 1), start_pos=a, last_logits_only=True)[0]
                for p, r, a in zip(pieces, rows, starts, strict=True)
            ]
        )
        decode, _ = model(step_tokens, cache=two_passes, start_pos=torch.tensor(decode_lengths))
        mixed, _ = model(
            torch.cat([*pieces, step_tokens.T], dim=1),
            cache=one_pass,
            start_pos=MixedStep(
                PackedPrompts(lengths, rows, torch.device("cpu"), starts),
                RowPositions(torch.tensor(decode_lengths)),
            ),
        )
    pieces_count = len(lengths)
    assert mixed.shape == (pieces_count + 2, 1, model.config.padded_vocab_size)
    torch.testing.assert_close(mixed[:pieces_count], prefill, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[pieces_count:], decode, atol=1e-5, rtol=1e-5)
    for layer in range(model.config.n_layer):
        for a, b in zip(two_passes.layer(layer), one_pass.layer(layer), strict=True):
            torch.testing.assert_close(b[:, :, :10], a[:, :, :10], atol=1e-5, rtol=1e-5)


def test_a_step_prefills_up_to_its_token_budget():
    """Queued prompts join in one pass until the budget; the one that does not fit starts with
    what is left of it, and the rest wait for the next step."""
    model = byte_model()
    requests = [greedy("0123456789", 30) for _ in range(4)]
    updates = [[] for _ in requests]
    engine = GenerationEngine(model, BYTES, max_slots=4, max_prefill_tokens=25)
    for request, seen in zip(requests, updates, strict=True):
        engine.submit(request, seen.append)
    engine.step()  # 10 + 10 + the first 5 of the third prompt (and one more in its decode)
    assert (engine.stats().active, engine.stats().queued) == (3, 1)
    assert [len(tokens_of(u)) for u in updates] == [2, 2, 0, 0]
    engine.step()  # the rest of the third prompt and the fourth, with the first two decoding
    assert (engine.stats().active, engine.stats().queued) == (4, 0)
    assert [len(tokens_of(u)) for u in updates] == [3, 3, 1, 1]


def test_a_long_prompt_is_prefilled_in_pieces_while_other_rows_decode():
    """Chunked prefill: a prompt four times the step's budget takes several steps to its first
    token, and the row already decoding gets a token in every one of them."""
    model = byte_model(block_size=128)
    short, long = [], []
    engine = GenerationEngine(model, BYTES, max_slots=2, max_prefill_tokens=20)
    engine.submit(greedy("x = 1", 40), short.append)
    engine.step()
    engine.submit(greedy("0123456789" * 8, 5), long.append)
    steps = 0
    while not long:
        engine.step()
        steps += 1
        assert len(tokens_of(short)) == 2 + steps  # two from the step that admitted it
    # 80 prompt tokens at 20 a pass plus one in each decode step: the fourth step ends it
    assert steps == 4
    while not long[-1].finish_reason:
        engine.step()
    expected = model.generate(torch.tensor([greedy("0123456789" * 8, 5).prompt]), 5, temperature=0)
    assert tokens_of(long) == expected[0, 80:].tolist()


@pytest.mark.parametrize(
    ("block", "weights", "compiled"),
    [
        ({}, "fp32", False),
        ({}, "int8", False),
        ({}, "fp32", True),
        ({}, "int8", True),
        (MODERN, "int8", True),
        ({}, "packed", False),
        (MODERN, "packed", True),
        (MODERN, "packed-bf16", True),
    ],
    ids=[
        "fp32",
        "int8",
        "fp32-compiled",
        "int8-compiled",
        "modern-int8-compiled",
        "packed",
        "modern-packed-compiled",
        "modern-packed-bf16-compiled",
    ],
)
def test_batched_greedy_equals_each_request_alone(block, weights, compiled, caplog):
    """Eager or compiled decode steps (compiled_decode_blocks), rows joining and leaving:
    each request gets the tokens `generate` gives it alone. `packed` is how CPU serving lays
    out float weights (GPT.use_decode_layout: oneDNN-packed matmuls). Compiled means
    compiled: every variant here gets its own graphs, and past dynamo's recompile limit
    the steps would silently run eagerly."""
    model = byte_model(**block)
    if weights == "int8":
        model = quantize_model(model)
    elif weights.startswith("packed"):
        model = model.to(torch.bfloat16 if weights.endswith("bf16") else torch.float32)
        model.use_decode_layout()
        assert isinstance(model.transformer.h[0].mlp.c_fc, PackedLinear)
    lengths = [12, 40, 3, 60, 25]
    requests = [greedy(p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    # Two slots for five requests: the rest queue and join as rows free up. A budget of 6
    # prompt tokens a step: the longer prompts are prefilled in pieces (chunked prefill).
    for budget in (1024, 6):
        engine = GenerationEngine(
            model, BYTES, max_slots=2, compile_decode=compiled, max_prefill_tokens=budget
        )
        results = run_all(engine, requests)
        for request, updates in zip(requests, results, strict=True):
            expected = model.generate(
                torch.tensor([request.prompt]), request.max_tokens, temperature=0
            )
            expected = expected[0, len(request.prompt) :].tolist()
            assert tokens_of(updates) == expected
            assert updates[-1].finish_reason == "length"
            assert "".join(u.text for u in updates) == BYTES.decode(expected)
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]


@pytest.mark.parametrize(
    ("block", "weights", "compiled"),
    [({}, "fp32", False), (MODERN, "int8", False), (MODERN, "int8", True)],
    ids=["fp32", "modern-int8", "modern-int8-compiled"],
)
def test_static_decode_steps_give_the_tokens_of_the_dynamic_path(block, weights, compiled):
    """The decode step made for CUDA graphs (every slot, the whole cache masked per row, no
    host sync), run here on CPU: with rows joining, leaving and prefilling in pieces, each
    request gets the tokens of the dynamic path, and every decode pass has one shape."""
    model = byte_model(block_size=96, **block)
    if weights == "int8":
        model = quantize_model(model)
    lengths = [12, 40, 3, 60, 25]
    requests = [greedy(p * 2, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    dynamic = run_all(GenerationEngine(model, BYTES, max_slots=3, max_prefill_tokens=8), requests)
    shapes = []
    hook = model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    try:
        static = GenerationEngine(
            model, BYTES, 3, max_prefill_tokens=8, compile_decode=compiled, static_decode=True
        )
        results = run_all(static, requests)
    finally:
        hook.remove()
    for want, got in zip(dynamic, results, strict=True):
        assert tokens_of(got) == tokens_of(want)
    decode_shapes = {shape for shape in shapes if shape[1] == 1}
    assert decode_shapes == {(3, 1)}


def test_many_int8_rows_decode_as_each_alone():
    """Twenty rows at once: a packed prefill of twenty prompts, then INT8 decode steps of up
    to twenty rows, each row's activations quantized on their own, where alone takes one."""
    model = quantize_model(byte_model(block_size=128, **MODERN))
    requests = [greedy(PROMPTS[i % 5] * (1 + i % 3), 8 + i) for i in range(20)]
    results = run_all(GenerationEngine(model, BYTES, max_slots=32), requests)
    for request, updates in zip(requests, results, strict=True):
        expected = model.generate(torch.tensor([request.prompt]), request.max_tokens, temperature=0)
        assert tokens_of(updates) == expected[0, len(request.prompt) :].tolist()


def test_seeded_sampling_is_the_same_alone_and_batched():
    model = byte_model()
    sampled = [
        GenerationRequest(tuple(BYTES.encode(p)), 20, temperature=0.9, top_k=50, seed=i)
        for i, p in enumerate(PROMPTS)
    ]
    together = run_all(GenerationEngine(model, BYTES, max_slots=8), sampled)
    chunked = run_all(GenerationEngine(model, BYTES, max_slots=8, max_prefill_tokens=4), sampled)
    for request, updates, pieces in zip(sampled, together, chunked, strict=True):
        assert tokens_of(updates) == generate_alone(model, BYTES, request)[2]
        assert tokens_of(pieces) == tokens_of(updates)
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
    "request_, field, message",
    [
        (GenerationRequest((), 5), "prompt", "no tokens"),
        (GenerationRequest((1,), 0), "max_tokens", ">= 1"),
        (GenerationRequest((300,), 5), "prompt", "token ids"),
        (GenerationRequest((1,), 5, temperature=-1), "temperature", ">= 0"),
        (GenerationRequest((1,), 5, top_p=1.5), "top_p", "in \\(0, 1\\]"),
        (GenerationRequest((1,), 5, temperature=float("inf")), "temperature", "finite"),
        (GenerationRequest((1,), 5, seed=2**64), "seed", "2\\*\\*64"),
        (GenerationRequest((1,), 5, seed=-(2**63) - 1), "seed", "2\\*\\*63"),
        (GenerationRequest((1,), 5, stop=("x" * 257,)), "stop", "longer than 256"),
        (GenerationRequest((1,), 5, stop=("a",) * 17), "stop", "the limit is 16"),
    ],
)
def test_bad_requests_are_refused_at_submit(request_, field, message):
    engine = GenerationEngine(byte_model(), BYTES, max_slots=1)
    with pytest.raises(RequestError, match=message) as raised:
        engine.submit(request_, print)
    assert raised.value.field == field and str(raised.value).startswith(f"{field}: ")
    assert engine.stats().queued == 0


@pytest.mark.parametrize(
    "degenerate",
    [dict(temperature=1e-39), dict(temperature=1e-6), dict(temperature=1.0, top_p=5e-324)],
    ids=["denormal-temperature", "tiny-temperature", "denormal-top-p"],
)
def test_degenerate_sampling_is_greedy_and_hurts_no_neighbour(degenerate):
    """A temperature near 0 (or a top_p that rounds to 0) once turned probabilities into NaN,
    failed the step and ended every request batched with it."""
    model = byte_model()
    plain = [greedy(p, 20) for p in PROMPTS[:3]]
    odd = GenerationRequest(tuple(BYTES.encode("def f(x):")), 20, stop_at_eot=False, **degenerate)
    results = run_all(GenerationEngine(model, BYTES, max_slots=4), [*plain, odd])
    assert all(u[-1].error is None and u[-1].finish_reason == "length" for u in results)
    for request, updates in zip(plain, results, strict=False):
        assert tokens_of(updates) == generate_alone(model, BYTES, request)[2]
    assert tokens_of(results[3]) == tokens_of(results[0])  # the same prompt, greedy


def test_a_failing_row_ends_alone():
    """A row whose own text handling fails ends with an error; the row beside it goes on."""
    model = byte_model()
    first, second = greedy("x", 30), greedy("import os\n", 30)
    first_alone = generate_alone(model, BYTES, first)[2]
    second_alone = generate_alone(model, BYTES, second)[2]
    poison = next(t for t in first_alone if t not in second_alone)

    class Fragile(type(BYTES)):
        def decode_bytes(self, ids):
            if poison in ids:
                raise ValueError("cannot decode")
            return super().decode_bytes(ids)

    engine = GenerationEngine(model, Fragile(), max_slots=4)
    failing, going_on = run_all(engine, [first, second])
    assert failing[-1].finish_reason == "error" and failing[-1].error_kind == "internal"
    assert "cannot decode" in failing[-1].error
    assert going_on[-1].finish_reason == "length" and tokens_of(going_on) == second_alone
    assert engine.stats().requests_failed == 1


def test_a_failed_prefill_ends_only_the_request_it_prefilled():
    """A prompt joining decoding rows is one mixed pass; when that pass fails it is run
    again as two, so the prefill's failure ends the joining request and nothing else."""
    model = byte_model()
    decoding, joining = [], []
    engine = GenerationEngine(model, BYTES, max_slots=2)
    engine.submit(greedy("x = 1", 10), decoding.append)
    engine.step()
    forward = model.forward

    def prefill_breaks(idx, *args, start_pos=0, **kwargs):
        if isinstance(start_pos, PackedPrompts | MixedStep) or idx.shape[1] > 1:
            raise RuntimeError("prefill broke")
        return forward(idx, *args, start_pos=start_pos, **kwargs)

    model.forward = prefill_breaks
    engine.submit(greedy("abc", 5), joining.append)
    while not (decoding[-1].finish_reason and joining and joining[-1].finish_reason):
        engine.step()
    assert joining[-1].finish_reason == "error" and joining[-1].error_kind == "internal"
    assert decoding[-1].finish_reason == "length"
    del model.forward
    expected = model.generate(torch.tensor([greedy("x = 1", 10).prompt]), 10, temperature=0)
    assert tokens_of(decoding) == expected[0, 5:].tolist()


def test_a_broken_model_makes_the_engine_unhealthy_and_requests_end():
    model = byte_model()
    engine = GenerationEngine(model, BYTES, max_slots=1)  # a forward pass per request
    assert engine.health().healthy
    engine.cache.keys.clear()  # every forward pass now fails (no cache for layer 0)
    results = run_all(engine, [greedy("abc", 5), greedy("def", 5), greedy("ghi", 5)])
    assert all(u[-1].finish_reason == "error" and u[-1].error_kind == "internal" for u in results)
    health = engine.health()
    assert not health.healthy and "forward passes" in health.problem
    assert "IndexError" not in health.problem  # operator words, no exception text


def test_a_stalled_engine_is_unhealthy():
    engine = GenerationEngine(byte_model(), BYTES, max_slots=1)
    engine.submit(greedy("abc", 5), print)  # queued, and no step runs
    assert engine.health(stall_after_s=60).healthy
    assert not engine.health(stall_after_s=0).healthy


def test_a_dead_engine_ends_what_waits_and_refuses_more():
    import threading

    engine = GenerationEngine(byte_model(), BYTES, max_slots=1)
    ended = threading.Event()
    updates: list[GenerationUpdate] = []

    def collect(update):
        updates.append(update)
        if update.finish_reason:
            ended.set()

    engine.step = None  # the engine's own code breaks: its thread dies on the first step
    engine.submit(greedy("abc", 5), collect)
    engine.start()
    assert ended.wait(30), "a request waiting on a dead engine must not wait forever"
    assert updates[-1].finish_reason == "error" and updates[-1].error_kind == "unavailable"
    assert not engine.health().healthy
    with pytest.raises(EngineError, match="stopped"):
        engine.submit(greedy("abc", 5), print)


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
