"""The generation engine: continuous batching over a fixed pool of KV-cache slots.

One preallocated KVCache holds `max_slots` rows. A queued request is admitted into a free
row by its prefill (its prompt in one forward pass, which also samples its first token);
then every step decodes one token for all active rows together, each at its own position
(`GPT.forward` with per-row positions). A row leaves the moment its request ends (stop
token, stop string, max_tokens, the context window, or a cancel), and the next step may
admit a new one: short requests never wait for long ones. Active rows are kept compacted
at the front of the cache (a leaving row is overwritten by the last one), so a step reads
`cache[:n]` as a view and copies nothing.

No Ray here: serve_apps/ runs this engine in a Serve replica; tests and benchmarks drive it
directly. Updates go to a per-request callback on the engine's thread.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from raygpt.inference.text_stream import TextStream
from raygpt.model import GPT
from raygpt.model.kv_cache import KVCache
from raygpt.model.sampling import check_sampling, sample_next_token
from raygpt.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationRequest:
    """One completion: prompt token ids and how to sample its continuation."""

    prompt: tuple[int, ...]
    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one
    stop_at_eot: bool = True  # the end-of-text token ends the completion (not part of it)

    def check(self, block_size: int, vocab_size: int) -> None:
        """Raise ValueError naming what is wrong; the engine never starts a bad request."""
        if not self.prompt:
            raise ValueError("the prompt has no tokens")
        if len(self.prompt) >= block_size:
            raise ValueError(
                f"the prompt has {len(self.prompt)} tokens; the context window is {block_size} "
                "(prompt and completion together)"
            )
        if not all(0 <= t < vocab_size for t in self.prompt):
            raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        check_sampling(self.temperature, self.top_k, self.top_p)  # not mid-batch, later


@dataclass
class GenerationUpdate:
    """What a request produced since its previous update."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int  # so far
    finish_reason: str | None = None  # set on the last update only
    error: str | None = None


UpdateCallback = Callable[[GenerationUpdate], None]


@dataclass
class EngineStats:
    max_slots: int
    active: int
    queued: int
    steps: int
    tokens_generated: int
    requests_finished: int
    requests_cancelled: int


@dataclass
class _Sequence:
    id: int
    request: GenerationRequest
    on_update: UpdateCallback
    text: TextStream
    generator: torch.Generator | None
    cached: int = 0  # positions of this row already in the KV cache
    tokens: list[int] = field(default_factory=list)


class GenerationEngine:
    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        max_slots: int = 32,
        max_queue: int = 1024,
    ) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_slots = max_slots
        self.max_queue = max_queue
        self.block_size = model.config.block_size
        param = model.transformer.wpe.weight  # float even when the matmuls are int8
        self.device = param.device
        self.cache = KVCache(model.config, max_slots, self.block_size, param.dtype, param.device)
        self._slots: list[_Sequence] = []  # row i of the cache is _slots[i]
        self._queue: deque[_Sequence] = deque()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._next_id = 0
        self._steps = self._tokens = self._finished = self._cancels = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- called from any thread --------------------------------------------------------------

    def submit(self, request: GenerationRequest, on_update: UpdateCallback) -> int:
        """Queue a request; returns its id (for cancel). Raises ValueError for a bad request
        and RuntimeError when the queue is full."""
        request.check(self.block_size, self.model.config.vocab_size)
        generator = None
        if request.temperature > 0:
            seed = request.seed if request.seed is not None else random.getrandbits(63)
            generator = torch.Generator(device=self.device).manual_seed(seed)
        with self._wake:
            if len(self._queue) >= self.max_queue:
                raise RuntimeError(f"the engine's queue is full ({self.max_queue} requests)")
            sequence = _Sequence(
                self._next_id,
                request,
                on_update,
                TextStream(self.tokenizer, request.stop),
                generator,
            )
            self._next_id += 1
            self._queue.append(sequence)
            self._wake.notify()
        return sequence.id

    def cancel(self, request_id: int) -> None:
        """End a request (a client went away): its row is free for the next step."""
        with self._wake:
            self._cancelled.add(request_id)
            self._wake.notify()

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                self.max_slots,
                len(self._slots),
                len(self._queue),
                self._steps,
                self._tokens,
                self._finished,
                self._cancels,
            )

    def start(self) -> GenerationEngine:
        """Run steps on a background thread until `stop`."""
        self._thread = threading.Thread(target=self._run, name="raygpt-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the engine's own thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._queue or self._slots or self._cancelled):
                    self._wake.wait()
                if self._stopping:
                    return
            self.step()

    @torch.no_grad()
    def step(self) -> None:
        """Cancel, admit what fits, decode one token for every active row."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                kept = [s for s in self._queue if s.id not in cancelled]
                dropped = [s for s in self._queue if s.id in cancelled]
                self._queue = deque(kept)
            else:
                dropped = []
            admitted = []
            while self._queue and len(self._slots) + len(admitted) < self.max_slots:
                admitted.append(self._queue.popleft())
        for sequence in dropped:
            self._finish_update(sequence, "cancelled")
        self._leave([i for i, s in enumerate(self._slots) if s.id in cancelled], "cancelled")
        try:
            for sequence in admitted:
                self._prefill(sequence)
            if self._slots:
                self._decode()
        except Exception as err:  # a failing step must not take the replica down with it
            error = f"{type(err).__name__}: {err}"
            for sequence in admitted:
                if sequence not in self._slots:
                    self._finish_update(sequence, "error", error)
            self._leave(list(range(len(self._slots))), "error", error)
        with self._lock:
            self._steps += 1

    def _prefill(self, sequence: _Sequence) -> None:
        row = len(self._slots)
        self._slots.append(sequence)
        prompt = torch.tensor([sequence.request.prompt], dtype=torch.long, device=self.device)
        logits, _ = self.model(
            prompt, cache=self.cache.rows(row, row + 1), start_pos=0, last_logits_only=True
        )
        sequence.cached = prompt.shape[1]
        token = self._sample(logits[:, -1], [sequence])[0]
        if self._accept(sequence, token):
            self._leave([row])

    def _decode(self) -> None:
        active = self._slots
        n = len(active)
        last = torch.tensor([[s.tokens[-1]] for s in active], dtype=torch.long, device=self.device)
        positions = torch.tensor([s.cached for s in active], dtype=torch.long, device=self.device)
        logits, _ = self.model(last, cache=self.cache.rows(0, n), start_pos=positions)
        for sequence in active:
            sequence.cached += 1
        tokens = self._sample(logits[:, -1], active)
        self._leave(
            [i for i, (s, t) in enumerate(zip(active, tokens, strict=True)) if self._accept(s, t)]
        )

    def _sample(self, logits: torch.Tensor, sequences: list[_Sequence]) -> list[int]:
        """One token per row, each with its own request's settings and random stream."""
        logits = logits[:, : self.model.config.vocab_size]  # padded rows are never tokens
        tokens = logits.argmax(dim=-1)  # greedy rows keep these
        for i, sequence in enumerate(sequences):
            request = sequence.request
            if request.temperature > 0:
                tokens[i] = sample_next_token(
                    logits[i : i + 1],
                    request.temperature,
                    request.top_k,
                    request.top_p,
                    sequence.generator,
                )[0]
        return tokens.tolist()

    def _accept(self, sequence: _Sequence, token: int) -> bool:
        """Record a sampled token and send its text; True when the request is finished."""
        request = sequence.request
        with self._lock:
            self._tokens += 1
        if request.stop_at_eot and token == self.tokenizer.eot_token:
            self._finish_update(sequence, "stop")
            return True
        sequence.tokens.append(token)
        text = sequence.text.push(token)
        if sequence.text.stopped:
            self._update(sequence, text, [token], "stop")
            return True
        at_limit = len(sequence.tokens) >= request.max_tokens
        # The next step would feed this token at position `cached`: it must fit the window.
        at_window = sequence.cached >= self.block_size
        if at_limit or at_window:
            self._update(sequence, text + sequence.text.finish(), [token], "length")
            return True
        self._update(sequence, text, [token], None)
        return False

    def _leave(self, rows: list[int], reason: str | None = None, error: str | None = None) -> None:
        """Free rows (highest first), moving the last active row into each gap."""
        for row in sorted(rows, reverse=True):
            sequence = self._slots[row]
            if reason is not None:
                self._finish_update(sequence, reason, error)
            last = len(self._slots) - 1
            if row != last:
                moved = self._slots[last]
                self.cache.copy_row(last, row, moved.cached)
                self._slots[row] = moved
            self._slots.pop()
            with self._lock:
                self._finished += 1

    def _finish_update(self, sequence: _Sequence, reason: str, error: str | None = None) -> None:
        if reason == "cancelled":
            with self._lock:
                self._cancels += 1
        tail = sequence.text.finish() if reason == "stop" and not sequence.text.stopped else ""
        self._update(sequence, tail, [], reason, error)

    def _update(
        self,
        sequence: _Sequence,
        text: str,
        token_ids: list[int],
        finish_reason: str | None,
        error: str | None = None,
    ) -> None:
        update = GenerationUpdate(
            text,
            token_ids,
            len(sequence.request.prompt),
            len(sequence.tokens),
            finish_reason,
            error,
        )
        try:
            sequence.on_update(update)
        except Exception:  # a broken consumer loses its own stream, never the engine
            with self._lock:
                self._cancelled.add(sequence.id)


def generate_alone(
    model: GPT, tokenizer: Tokenizer, request: GenerationRequest
) -> tuple[str, str, list[int]]:
    """Run one request through its own engine: (text, finish_reason, token ids). For tests,
    benchmarks and the CLI; a service keeps one engine busy instead."""
    engine = GenerationEngine(model, tokenizer, max_slots=1)
    updates: list[GenerationUpdate] = []
    engine.submit(request, updates.append)
    while not (updates and updates[-1].finish_reason):
        engine.step()
    if updates[-1].error:
        raise RuntimeError(updates[-1].error)
    text = "".join(u.text for u in updates)
    return text, updates[-1].finish_reason, [t for u in updates for t in u.token_ids]
