"""The generation engine: continuous batching over a fixed pool of KV-cache slots.

One preallocated KVCache holds `max_slots` rows. Queued requests are admitted into free
rows by their prefill: each step runs one forward pass over up to `max_prefill_tokens`
prompt tokens, packed back to back, which also samples the first token of each prompt it
completes. A prompt longer than what is left of that budget is prefilled in pieces over
several steps (chunked prefill), so a long prompt never stalls the rows already decoding
for more than one budget's pass. Then every step decodes one token for all active rows
together, each at its own position (`GPT.forward` with per-row positions), and chooses
every row's token in one pass (greedy or sampled, each row from its own seeded stream); a
row still prefilling feeds its next prompt token in that pass instead. While prompts join,
prefill and decode are one pass (`MixedStep`: one matmul per weight for the new prompts'
tokens and the decoding rows' together), so a burst of arrivals does not cost the rows
already decoding a pass of their own per step. A row leaves the
moment its request ends (stop token, stop string, max_tokens, the context window, or a
cancel), and the next step may admit a new one: short requests never wait for long ones.
Active rows are kept compacted at the front of the cache (a leaving row is overwritten by
the last one), so a step reads `cache[:n]` as a view and copies nothing.

A failure ends only the requests it belongs to: a failed prefill pass ends the requests it
prefilled, a text-stream error its own row; only a failed decode pass ends every active row
(a failed mixed pass is run again as the two passes, so that rule holds for it too).
The engine keeps a health record (failing steps in a row, the time of its last finished
step) that a replica reports, and a dead engine answers every waiting request with an
error.

No Ray here: serve_apps/ runs this engine in a Serve replica; tests and benchmarks drive it
directly. Updates go to a per-request callback on the engine's thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from raygpt.errors import RequestError
from raygpt.inference.cuda_graph import CapturedStep
from raygpt.inference.draft_model import DraftModel, DraftRow
from raygpt.inference.prompt_lookup import PromptLookup
from raygpt.inference.speculation import SpeculationConfig, accept_greedy, accept_sampled
from raygpt.inference.text_stream import TextStream
from raygpt.model import GPT
from raygpt.model.gpt import MixedStep, PackedPrompts, RowPositions
from raygpt.model.kv_cache import KVCache
from raygpt.model.sampling import check_sampling, is_greedy, row_probs, sample_rows
from raygpt.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
MAX_STOPS = 16
MAX_STOP_CHARS = 256  # each is searched for after every token: keep that cheap
FAILED_FORWARDS_UNHEALTHY = 3  # forward passes failing in a row: the model or device is broken
STALL_UNHEALTHY_S = 120.0  # work waiting and no step finished for this long: stalled

# Why a request ended in an error: the caller maps these to its own answers (HTTP status).
INVALID, OVERLOADED, UNAVAILABLE, INTERNAL = "invalid", "overloaded", "unavailable", "internal"


class EngineError(RuntimeError):
    """The engine cannot take a request now: `kind` is OVERLOADED or UNAVAILABLE."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


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
    stop_at_eot: bool = True  # an end token (end-of-text, end-of-turn) ends it, unseen
    speculate: bool = True  # when the engine speculates: False opts this request out

    def check(self, block_size: int, vocab_size: int) -> None:
        """Raise RequestError naming the field at fault; the engine never starts a bad request."""
        if not self.prompt:
            raise RequestError("prompt", "the prompt has no tokens")
        if len(self.prompt) >= block_size:
            raise RequestError(
                "prompt",
                f"the prompt has {len(self.prompt)} tokens; the context window is {block_size} "
                "(prompt and completion together)",
            )
        if not all(0 <= t < vocab_size for t in self.prompt):
            raise RequestError("prompt", f"prompt token ids must be in [0, {vocab_size})")
        if self.max_tokens < 1:
            raise RequestError("max_tokens", f"must be >= 1, got {self.max_tokens}")
        check_sampling(self.temperature, self.top_k, self.top_p)  # not mid-batch, later
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise RequestError("seed", f"must be in [-2**63, 2**64 - 1], got {self.seed}")
        if len(self.stop) > MAX_STOPS:
            raise RequestError("stop", f"{len(self.stop)} stop strings; the limit is {MAX_STOPS}")
        if any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise RequestError("stop", f"a stop string is longer than {MAX_STOP_CHARS} characters")


@dataclass
class GenerationUpdate:
    """What a request produced since its previous update."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int  # so far
    finish_reason: str | None = None  # set on the last update only
    error: str | None = None  # what went wrong, for the service's log
    error_kind: str | None = None  # INVALID, OVERLOADED, UNAVAILABLE or INTERNAL


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
    requests_failed: int
    tokens_proposed: int = 0  # speculated tokens the target verified
    tokens_accepted: int = 0  # ... and kept: accepted / proposed is the acceptance rate


@dataclass
class EngineHealth:
    healthy: bool
    problem: str | None  # why not, in words fit for an operator (no exception text)
    failed_forwards: int  # forward passes that failed in a row
    seconds_since_step: float


@dataclass
class _Sequence:
    id: int
    request: GenerationRequest
    on_update: UpdateCallback
    text: TextStream
    generator: torch.Generator | None
    cached: int = 0  # positions of this row already in the KV cache
    tokens: list[int] = field(default_factory=list)
    lookup: PromptLookup | None = None  # its n-gram index, when the engine looks up prompts
    draft_cached: int = 0  # positions of this row in the draft model's cache

    @property
    def sampling(self) -> tuple[float, int | None, float | None] | None:
        """Its sampling settings; None for a greedy row."""
        if self.generator is None:
            return None
        return self.request.temperature, self.request.top_k, self.request.top_p

    @property
    def prefilling(self) -> bool:
        return self.cached < len(self.request.prompt)

    def next_piece(self, n: int) -> list[int]:
        """Its next `n` prompt tokens to prefill, after those already cached."""
        return self.request.prompt[self.cached : self.cached + n]

    def next_input(self) -> int:
        """What this row feeds the decode step: its next prompt token while the prompt is not
        all cached (chunked prefill), else the token it sampled last."""
        return self.request.prompt[self.cached] if self.prefilling else self.tokens[-1]


class GenerationEngine:
    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        max_slots: int = 32,
        max_queue: int = 1024,
        max_context: int | None = None,
        compile_decode: bool = False,
        max_prefill_tokens: int = 512,
        speculation: SpeculationConfig | None = None,
        draft_model: GPT | None = None,
        static_decode: bool | None = None,
        mixed_steps: bool = True,
    ) -> None:
        """`max_context` caps the context window below the model's (SmolLM2's 8192 tokens in
        32 slots would need a 12 GB cache): prompt and completion together fit in it.
        `compile_decode` runs the decode steps' blocks compiled (gpt.compiled_decode_blocks).
        `max_prefill_tokens` bounds the prompt tokens one step prefills (a longer prompt is
        prefilled in pieces over several steps): the rows already decoding wait for that
        pass. `speculation` makes rows propose tokens each step that the model verifies in
        the decode pass (inference/speculation.py); method `draft` proposes with
        `draft_model`, which must share the model's tokenizer. `static_decode` (default: on
        CUDA) runs plain decode steps over every slot and the whole cache, masked per row:
        the same shapes every step and no host sync inside it, so on CUDA the step is
        captured once as a CUDA graph and replayed (inference/cuda_graph.py). `mixed_steps`
        False runs a step's prefill and decode as two passes even where one would do (for
        benchmarks: what MixedStep saves)."""
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.model = model.eval()
        self.compile_decode = compile_decode
        self.tokenizer = tokenizer
        self.max_slots = max_slots
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.mixed_steps = mixed_steps
        self.block_size = min(model.config.block_size, max_context or model.config.block_size)
        self.device, dtype = model.param_device_dtype
        self.speculation = speculation or SpeculationConfig()
        # Spare positions past the window take the padded tails of rows that propose fewer
        # tokens than their neighbours in a step.
        spare = self.speculation.k if self.speculation.enabled else 0
        self.cache = KVCache(model.config, max_slots, self.block_size, dtype, self.device, spare)
        self.static_decode = self.device.type == "cuda" if static_decode is None else static_decode
        self._static_step = self._static_logits
        if self.static_decode and self.device.type == "cuda":
            self._static_step = CapturedStep(self._static_logits)
        self.draft: DraftModel | None = None
        if self.speculation.method == "draft":
            if draft_model is None:
                raise ValueError("speculation method draft needs a draft model")
            if draft_model.config.vocab_size != model.config.vocab_size:
                raise ValueError(
                    f"the draft model's vocabulary ({draft_model.config.vocab_size}) is not "
                    f"the model's ({model.config.vocab_size}): it needs the same tokenizer"
                )
            self.draft = DraftModel(
                draft_model, max_slots, self.block_size, self.speculation.k, compile_decode
            )
        self._slots: list[_Sequence] = []  # row i of the cache is _slots[i]
        self._queue: deque[_Sequence] = deque()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._next_id = 0
        self._steps = self._tokens = self._finished = self._cancels = self._failures = 0
        self._proposed = self._accepted = 0
        self._failed_forwards = 0  # in a row; any forward pass that works resets it
        self._last_step = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dead: str | None = None  # why the engine's thread ended, if it did

    # -- called from any thread --------------------------------------------------------------

    def submit(self, request: GenerationRequest, on_update: UpdateCallback) -> int:
        """Queue a request; returns its id (for cancel). Raises RequestError for a bad request
        and EngineError when the queue is full or the engine is dead."""
        request.check(self.block_size, self.model.config.vocab_size)
        generator = None
        if not is_greedy(request.temperature):
            seed = request.seed if request.seed is not None else random.getrandbits(63)
            generator = torch.Generator(device=self.device).manual_seed(seed)
        lookup = None
        if self.speculation.method == "ngram" and request.speculate:
            spec = self.speculation
            lookup = PromptLookup(list(request.prompt), spec.ngram_min, spec.ngram_max)
        with self._wake:
            if self._dead is not None:
                raise EngineError(UNAVAILABLE, "the generation engine has stopped")
            if len(self._queue) >= self.max_queue:
                raise EngineError(
                    OVERLOADED, f"the engine's queue is full ({self.max_queue} requests)"
                )
            sequence = _Sequence(
                self._next_id,
                request,
                on_update,
                TextStream(self.tokenizer, request.stop),
                generator,
            )
            sequence.lookup = lookup
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
                self._failures,
                self._proposed,
                self._accepted,
            )

    def health(self, stall_after_s: float = STALL_UNHEALTHY_S) -> EngineHealth:
        """Unhealthy when the thread is dead, forward passes keep failing, or work waits while
        no step has finished for `stall_after_s`."""
        with self._lock:
            waiting = bool(self._queue or self._slots)
            since = time.monotonic() - self._last_step
            failing = self._failed_forwards
            dead = self._dead
        problem = None
        if dead is not None or (self._thread is not None and not self._thread.is_alive()):
            problem = "the generation engine has stopped"
        elif failing >= FAILED_FORWARDS_UNHEALTHY:
            problem = f"the last {failing} forward passes of the model failed"
        elif waiting and since > stall_after_s:
            problem = f"requests are waiting and no step has finished for {since:.0f} s"
        return EngineHealth(problem is None, problem, failing, since)

    def start(self, threads: int | None = None) -> GenerationEngine:
        """Run steps on a background thread until `stop`, with `threads` torch threads
        (default: the caller's)."""
        threads = threads or torch.get_num_threads()
        self._thread = threading.Thread(
            target=self._run, args=(threads,), name="raygpt-engine", daemon=True
        )
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

    def _run(self, threads: int) -> None:
        # OpenMP's thread count belongs to each thread: a new one starts with the default.
        torch.set_num_threads(threads)
        try:
            while True:
                with self._wake:
                    while not (self._stopping or self._queue or self._slots or self._cancelled):
                        self._wake.wait()
                    if self._stopping:
                        return
                self.step()
        except BaseException as err:  # a bug in the engine itself: fail loudly, never hang
            logger.exception("the generation engine's thread died")
            self._die(f"{type(err).__name__}: {err}")

    def _die(self, reason: str) -> None:
        """No more steps: every queued and active request ends with an error now."""
        with self._lock:
            self._dead = reason
            waiting, self._queue = list(self._queue), deque()
            active, self._slots = list(self._slots), []
        for sequence in waiting + active:
            self._finish_update(sequence, "error", reason, UNAVAILABLE)

    @torch.no_grad()
    def step(self) -> None:
        """Cancel, prefill up to the budget (admitting what fits), decode one token for every
        active row: one pass for both when it can (_prefill_and_decode), else two."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            dropped = [s for s in self._queue if s.id in cancelled]
            if dropped:
                self._queue = deque(s for s in self._queue if s.id not in cancelled)
        for sequence in dropped:
            self._finish_update(sequence, "cancelled")
        self._leave([i for i, s in enumerate(self._slots) if s.id in cancelled], "cancelled")
        pieces = self._admit()
        mixed = bool(pieces) and self._can_mix(pieces) and self._prefill_and_decode(pieces)
        if not mixed:
            if pieces:
                self._prefill(pieces)
            if self._slots:
                self._decode()
        with self._lock:
            self._steps += 1
            self._last_step = time.monotonic()

    def _admit(self) -> list[tuple[int, int]]:
        """This step's prefill, as (row, tokens) pieces within the budget: first the rest of
        prompts admitted earlier, oldest first, then queued requests moved into free rows, the
        last of them cut at the budget (its prompt goes on in the next steps)."""
        budget = self.max_prefill_tokens
        pieces = []
        for row, sequence in enumerate(self._slots):
            if budget and sequence.prefilling:
                n = min(budget, len(sequence.request.prompt) - sequence.cached)
                pieces.append((row, n))
                budget -= n
        with self._lock:
            while budget and self._queue and len(self._slots) < self.max_slots:
                sequence = self._queue.popleft()
                self._slots.append(sequence)
                n = min(budget, len(sequence.request.prompt))
                pieces.append((len(self._slots) - 1, n))
                budget -= n
        return pieces

    def _prefill(self, pieces: list[tuple[int, int]]) -> None:
        """One forward pass over every piece (packed, each attending to its own row only); a
        prompt completed here gets its first token. A failed pass ends these requests alone."""
        rows = [row for row, _ in pieces]
        sequences = [self._slots[row] for row in rows]
        starts = [s.cached for s in sequences]
        lengths = [n for _, n in pieces]
        chunks = [s.next_piece(n) for s, n in zip(sequences, lengths, strict=True)]
        tokens = torch.tensor([[t for chunk in chunks for t in chunk]], device=self.device)
        packed = PackedPrompts(lengths, rows, self.device, starts)
        logits = self._forward(rows, tokens, cache=self.cache, start_pos=packed)
        if logits is None:
            return
        for sequence, n in zip(sequences, lengths, strict=True):
            sequence.cached += n
        done = [i for i, s in enumerate(sequences) if not s.prefilling]
        if done:
            chosen = self._choose(_rows(logits, done)[:, -1], [sequences[i] for i in done])
            self._accept_all([rows[i] for i in done], [[t] for t in chosen])

    def _can_mix(self, pieces: list[tuple[int, int]]) -> bool:
        """Whether this step's prefill and decode can be one pass: some rows decode, the rows
        being prefilled are the last ones (the decoding rows are a view of the cache's first
        rows), and no row speculates (its proposals widen its row past one token)."""
        rows = sorted(row for row, _ in pieces)
        n = len(self._slots)
        return (
            self.mixed_steps
            and len(pieces) < n
            and rows == list(range(n - len(pieces), n))
            and not self.speculation.enabled
            and not self.static_decode
        )

    def _prefill_and_decode(self, pieces: list[tuple[int, int]]) -> bool:
        """This step's prefill pieces and one token for every other row in one forward pass
        (MixedStep): the rows decoding pay no pass of their own while prompts join, which is
        what a burst of arrivals costs them. A row prefilled here takes its first token from
        its piece and decodes from the next step. False when the pass fails: nothing was
        kept, and the step runs as two passes, so a failure ends only the requests its own
        pass held."""
        n_decoding = len(self._slots) - len(pieces)
        prefilled = [self._slots[row] for row, _ in pieces]
        decoding = self._slots[:n_decoding]
        lengths = [n for _, n in pieces]
        starts = [s.cached for s in prefilled]
        chunks = [t for s, n in zip(prefilled, lengths, strict=True) for t in s.next_piece(n)]
        tokens = torch.tensor([chunks + [s.next_input() for s in decoding]], device=self.device)
        cached = [s.cached for s in decoding]
        positions = torch.tensor(cached, dtype=torch.long, device=self.device)
        step = MixedStep(
            PackedPrompts(lengths, [row for row, _ in pieces], self.device, starts),
            RowPositions(positions, max(cached) + 1),
        )
        try:
            logits, _ = self.model(tokens, cache=self.cache, start_pos=step)
        except Exception as err:
            logger.warning("a mixed prefill and decode pass failed (%s); retrying as two", err)
            return False
        with self._lock:
            self._failed_forwards = 0
        for sequence, n in zip(prefilled, lengths, strict=True):
            sequence.cached += n
        for sequence in decoding:
            sequence.cached += 1
        rows = [row for row, _ in pieces] + list(range(n_decoding))
        sequences = prefilled + decoding
        ready = sorted(
            (i for i, s in enumerate(sequences) if not s.prefilling), key=lambda i: rows[i]
        )
        if ready:
            chosen = self._choose(_rows(logits, ready)[:, -1], [sequences[i] for i in ready])
            self._accept_all([rows[i] for i in ready], [[t] for t in chosen])
        return True

    def _decode(self) -> None:
        """One pass for every active row: its last token, and the tokens it proposes when the
        engine speculates, each row at its own position. Rows keep what the model agrees
        with (at least one token each), and each is accepted on its own. A row still
        prefilling feeds its next prompt token, and takes a token only once that was its
        prompt's last."""
        active = self._slots
        n = len(active)
        proposals = self._propose(active)
        width = 1 + max(len(tokens) for tokens, _ in proposals)
        inputs = [
            [s.next_input(), *tokens] + [0] * (width - 1 - len(tokens))
            for s, (tokens, _) in zip(active, proposals, strict=True)
        ]
        cached = [s.cached for s in active]
        if width == 1 and self.static_decode:
            free = self.max_slots - n  # free slots decode a dummy token at position 0
            logits = self._forward(
                list(range(n)),
                torch.tensor(inputs + [[0]] * free, dtype=torch.long, device=self.device),
                cached + [0] * free,
            )
        else:
            logits = self._forward(
                list(range(n)),
                torch.tensor(inputs, dtype=torch.long, device=self.device),
                cache=self.cache.rows(0, n),
                start_pos=torch.tensor(cached, dtype=torch.long, device=self.device),
                # known here: the step needs no host sync for it
                attend_to=max(c + 1 + len(t) for c, (t, _) in zip(cached, proposals, strict=True)),
                compiled=self.compile_decode,
            )
        if logits is None:
            return
        for sequence in active:
            sequence.cached += 1
        emitted: dict[int, list[int]] = {}
        plain = [i for i, s in enumerate(active) if not s.prefilling and not proposals[i][0]]
        if plain:
            chosen = self._choose(_rows(logits, plain)[:, 0], [active[i] for i in plain])
            emitted.update((i, [token]) for i, token in zip(plain, chosen, strict=True))
        speculated = [i for i in range(n) if proposals[i][0]]
        if speculated:
            emitted.update(self._verify(speculated, logits, proposals))
        rows = sorted(emitted)
        self._accept_all(rows, [emitted[i] for i in rows])

    def _propose(self, active: list[_Sequence]) -> list[tuple[list[int], torch.Tensor | None]]:
        """Each row's speculated tokens this step, with the distribution a draft model drew
        them from for sampled rows (None: copied tokens, or greedy)."""
        none: tuple[list[int], torch.Tensor | None] = ([], None)
        if not self.speculation.enabled:
            return [none] * len(active)
        limits = [self._proposal_limit(s) for s in active]
        if self.draft is None:
            return [
                (s.lookup.propose(limit), None) if limit and s.lookup else none
                for s, limit in zip(active, limits, strict=True)
            ]
        if not any(limits):
            return [none] * len(active)
        rows = [
            DraftRow(
                list(s.request.prompt) + s.tokens, s.draft_cached, limit, s.sampling, s.generator
            )
            for s, limit in zip(active, limits, strict=True)
        ]
        proposals = self.draft.propose(rows)
        for sequence, row in zip(active, rows, strict=True):
            sequence.draft_cached = row.cached
        return proposals

    def _proposal_limit(self, sequence: _Sequence) -> int:
        """How many tokens a row may propose: none while prefilling or opted out; never more
        than its max_tokens could keep, nor past the context window."""
        if sequence.prefilling or not sequence.request.speculate:
            return 0
        left = sequence.request.max_tokens - len(sequence.tokens) - 1
        room = self.block_size - 1 - sequence.cached
        return max(0, min(self.speculation.k, left, room))

    def _verify(
        self,
        rows: list[int],
        logits: torch.Tensor,
        proposals: list[tuple[list[int], torch.Tensor | None]],
    ) -> dict[int, list[int]]:
        """What each speculating row emits: the proposals the model agrees with and one
        token of the model's own (inference/speculation.py's rule)."""
        logits = logits[:, :, : self.model.config.vocab_size]
        argmax = logits[rows].argmax(dim=-1).tolist()
        sampled = [row for row in rows if self._slots[row].sampling is not None]
        probs = {}
        if sampled:  # one softmax for every position of every sampled row
            width = logits.shape[1]
            settings = [self._slots[row].sampling for row in sampled for _ in range(width)]
            flat = row_probs(logits[sampled].flatten(0, 1), settings)
            probs = dict(zip(sampled, flat.view(len(sampled), width, -1), strict=True))
        emitted = {}
        for i, row in enumerate(rows):
            sequence, (tokens, draft_probs) = self._slots[row], proposals[row]
            if sequence.sampling is None:
                emitted[row] = accept_greedy(tokens, argmax[i])
            else:
                target = probs[row][: len(tokens) + 1]
                emitted[row] = accept_sampled(tokens, target, draft_probs, sequence.generator)
            kept = len(emitted[row]) - 1
            # The draft's cache holds this row's context, then the proposals it fed: those
            # past the kept ones are stale.
            context = sequence.cached  # this step's input is counted now: the whole context
            sequence.draft_cached = min(sequence.draft_cached, context + kept)
            with self._lock:
                self._proposed += len(tokens)
                self._accepted += kept
        return emitted

    def _choose(self, logits: torch.Tensor, sequences: list[_Sequence]) -> list[int]:
        """Every row's next token in one pass: greedy rows take the argmax, sampled rows
        invert their distribution at a number drawn from their own generator, so a row gets
        the same token alone or batched. A kind that is every row reads `logits` in place:
        a copy of 32 rows of SmolLM2's vocabulary costs more than the argmax."""
        logits = logits[:, : self.model.config.vocab_size]  # padded rows are never tokens
        tokens = [0] * len(sequences)
        greedy = [i for i, s in enumerate(sequences) if s.generator is None]
        if greedy:
            chosen = _rows(logits, greedy).argmax(dim=-1).tolist()
            for i, token in zip(greedy, chosen, strict=True):
                tokens[i] = token
        sampled = [i for i, s in enumerate(sequences) if s.generator is not None]
        if sampled:
            settings = [
                (r.temperature, r.top_k, r.top_p) for r in (sequences[i].request for i in sampled)
            ]
            uniforms = [
                torch.rand(
                    1, generator=sequences[i].generator, dtype=torch.float64, device=self.device
                )
                for i in sampled
            ]
            chosen = sample_rows(_rows(logits, sampled), settings, torch.cat(uniforms)).tolist()
            for i, token in zip(sampled, chosen, strict=True):
                tokens[i] = token
        return tokens

    def _accept_all(self, rows: list[int], tokens: list[list[int]]) -> None:
        """Accept each row's tokens in order (a step's speculation may emit several); a row
        ends at the first that finishes it, and a row whose own handling fails ends alone."""
        ended, failed = [], []
        for row, emitted in zip(rows, tokens, strict=True):
            sequence = self._slots[row]
            cached = sequence.cached  # the first token's input is cached; each next one's too
            try:
                for offset, token in enumerate(emitted):
                    sequence.cached = cached + offset
                    if self._accept(sequence, token):
                        ended.append(row)
                        break
            except Exception as err:  # this row's own failure
                failed.append((row, err))
        for row, err in failed:
            self._report_failure(self._slots[row], err)
        self._leave(ended + [row for row, _ in failed])

    def _static_logits(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token for every slot, each at its own position, attending over the whole
        cache (masked per row): fixed shapes, whatever the rows' lengths."""
        logits, _ = self.model(
            tokens,
            cache=self.cache,
            start_pos=positions,
            attend_to=self.cache.max_len,
            compiled=self.compile_decode,
        )
        return logits

    def _forward(
        self,
        rows: list[int],
        tokens: torch.Tensor,
        static_positions: list[int] | None = None,
        **kwargs,
    ) -> torch.Tensor | None:
        """The model on these rows (`static_positions`: the static decode step over every
        slot); None when it fails, which ends every one of them."""
        try:
            if static_positions is not None:
                positions = torch.tensor(static_positions, dtype=torch.long, device=self.device)
                logits = self._static_step(tokens, positions)[: len(rows)]
            else:
                logits, _ = self.model(tokens, **kwargs)
        except Exception as err:
            with self._lock:
                self._failed_forwards += 1
            self._fail(rows, err)
            return None
        with self._lock:
            self._failed_forwards = 0
        return logits

    def _accept(self, sequence: _Sequence, token: int) -> bool:
        """Record a sampled token and send its text; True when the request is finished."""
        request = sequence.request
        with self._lock:
            self._tokens += 1
        if request.stop_at_eot and token in self.tokenizer.stop_tokens:
            self._finish_update(sequence, "stop")
            return True
        sequence.tokens.append(token)
        if sequence.lookup is not None:
            sequence.lookup.append(token)
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

    def _fail(self, rows: list[int], err: Exception) -> None:
        """End these rows with an error (logged here; callers send no exception text on)."""
        for row in rows:
            self._report_failure(self._slots[row], err)
        self._leave(rows)

    def _report_failure(self, sequence: _Sequence, err: Exception) -> None:
        logger.warning("request %d failed: %s: %s", sequence.id, type(err).__name__, err)
        with self._lock:
            self._failures += 1
        self._finish_update(sequence, "error", f"{type(err).__name__}: {err}", INTERNAL)

    def _leave(self, rows: list[int], reason: str | None = None) -> None:
        """Free rows (highest first), moving the last active row into each gap."""
        for row in sorted(rows, reverse=True):
            sequence = self._slots[row]
            if reason is not None:
                self._finish_update(sequence, reason)
            last = len(self._slots) - 1
            if row != last:
                moved = self._slots[last]
                self.cache.copy_row(last, row, moved.cached)
                if self.draft is not None:
                    self.draft.cache.copy_row(last, row, moved.draft_cached)
                self._slots[row] = moved
            self._slots.pop()
            with self._lock:
                self._finished += 1

    def _finish_update(
        self,
        sequence: _Sequence,
        reason: str,
        error: str | None = None,
        error_kind: str | None = None,
    ) -> None:
        if reason == "cancelled":
            with self._lock:
                self._cancels += 1
        tail = sequence.text.finish() if reason == "stop" and not sequence.text.stopped else ""
        self._update(sequence, tail, [], reason, error, error_kind)

    def _update(
        self,
        sequence: _Sequence,
        text: str,
        token_ids: list[int],
        finish_reason: str | None,
        error: str | None = None,
        error_kind: str | None = None,
    ) -> None:
        update = GenerationUpdate(
            text,
            token_ids,
            len(sequence.request.prompt),
            len(sequence.tokens),
            finish_reason,
            error,
            error_kind,
        )
        try:
            sequence.on_update(update)
        except Exception:  # a broken consumer loses its own stream, never the engine
            with self._lock:
                self._cancelled.add(sequence.id)


def _rows(tensor: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """tensor[indices]: the tensor itself when they are all its rows in order (no copy)."""
    if indices == list(range(tensor.shape[0])):
        return tensor
    return tensor[indices]


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
