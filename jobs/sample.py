"""Sample from a trained model, like nanoGPT's sample.py.

    python jobs/sample.py --checkpoint runs/tiny/final --prompt "def fibonacci(n):"
    python jobs/sample.py --checkpoint ./gpt2-hf --prompt FILE:prompt.txt --num-samples 3
    python jobs/sample.py --checkpoint CKPT --prompt FILE:code.py --speculate ngram --temperature 0

--checkpoint takes a raygpt checkpoint, a local Hugging Face GPT-2 folder or a nanoGPT ckpt.pt.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from raygpt.cli import JobParser, run_cli
from raygpt.device import pick_device
from raygpt.errors import RaygptError
from raygpt.inference.engine import GenerationEngine, GenerationRequest, GenerationUpdate
from raygpt.inference.load import checkpoint_tokenizer, load_draft, load_for_inference
from raygpt.inference.speculation import SpeculationConfig
from raygpt.model.sampling import check_sampling
from raygpt.tokenizer import get_tokenizer


def read_prompt(text: str) -> str:
    """`FILE:path` reads the prompt from a file, as in nanoGPT."""
    if not text.startswith("FILE:"):
        return text
    path = Path(text.removeprefix("FILE:"))
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise RaygptError(f"cannot read prompt file {path}: {err}") from None


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or nanoGPT ckpt.pt")
    parser.add_argument("--prompt", default="\n", help="text, or FILE:path")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--tokenizer", help="override the checkpoint's: gpt2, byte or a tokenizer.json path"
    )
    parser.add_argument(
        "--no-stop", action="store_true", help="keep going past the end-of-text token"
    )
    parser.add_argument(
        "--speculate",
        help="speculative decoding: ngram (prompt lookup), self:N (the model's first N "
        "layers as draft) or a draft checkpoint with the same tokenizer",
    )
    parser.add_argument("--speculate-k", type=int, default=4, help="tokens proposed per step")
    parser.add_argument("--ngram-min", type=int, default=2)
    parser.add_argument("--ngram-max", type=int, default=4)
    args = parser.parse_args()
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise RaygptError("--max-new-tokens and --num-samples must be >= 1")
    try:
        check_sampling(args.temperature, args.top_k, args.top_p)
    except ValueError as err:
        raise RaygptError(str(err)) from None

    device = pick_device(args.device)
    model, meta = load_for_inference(args.checkpoint, device)
    if args.tokenizer:
        tokenizer = get_tokenizer(args.tokenizer)
    elif meta.tokenizer is None:
        raise RaygptError(f"{args.checkpoint} does not say its tokenizer; pass --tokenizer")
    else:
        tokenizer = checkpoint_tokenizer(meta)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise RaygptError(
            f"tokenizer '{tokenizer.name}' has {tokenizer.vocab_size} tokens but the model knows "
            f"{model.config.vocab_size}: pass the tokenizer it was trained with"
        )
    ids = tokenizer.encode(read_prompt(args.prompt)) or [tokenizer.eot_token]
    if args.speculate:
        sample_speculating(args, model, meta, tokenizer, ids, device)
        return
    prompt = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    stop = () if args.no_stop else tuple(tokenizer.stop_tokens)

    start = time.perf_counter()
    out = model.generate(
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_tokens=stop,
        seed=args.seed,
    )
    elapsed = time.perf_counter() - start
    made = 0
    for row in out.tolist():
        new = row[len(ids) :]
        ends = [i for i, t in enumerate(new) if t in stop]
        if ends:
            new = new[: ends[0]]
        made += len(new)
        print(tokenizer.decode(ids + new))
        print("---------------")
    print(f"{made} tokens in {elapsed:.2f} s ({made / elapsed:.1f} tokens/s) on {device}")


def sample_speculating(args, model, meta, tokenizer, ids: list[int], device) -> None:
    """The samples through the generation engine with speculative decoding (each sample
    its own seed: seed, seed + 1, ...), and how many proposed tokens the model kept."""
    try:
        if args.speculate == "ngram":
            speculation = SpeculationConfig(
                "ngram", args.speculate_k, args.ngram_min, args.ngram_max
            )
        else:
            speculation = SpeculationConfig("draft", args.speculate_k, draft=args.speculate)
        draft = None
        if speculation.method == "draft":
            draft = load_draft(args.speculate, model, meta, device, int8=False, dtype=None)
    except ValueError as err:
        raise RaygptError(f"--speculate: {err}") from None
    engine = GenerationEngine(
        model,
        tokenizer,
        max_slots=args.num_samples,
        max_context=len(ids) + args.max_new_tokens,
        speculation=speculation,
        draft_model=draft,
    )
    results: list[list[GenerationUpdate]] = [[] for _ in range(args.num_samples)]
    start = time.perf_counter()
    for i, updates in enumerate(results):
        request = GenerationRequest(
            tuple(ids),
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed + i,
            stop_at_eot=not args.no_stop,
        )
        engine.submit(request, updates.append)
    while not all(u and u[-1].finish_reason for u in results):
        engine.step()
    elapsed = time.perf_counter() - start
    for updates in results:
        if updates[-1].error:
            raise RaygptError(f"generation failed: {updates[-1].error}")
        print(tokenizer.decode(ids) + "".join(u.text for u in updates))
        print("---------------")
    stats = engine.stats()
    made = stats.tokens_generated
    kept = f"{stats.tokens_accepted / stats.tokens_proposed:.0%}" if stats.tokens_proposed else "-"
    print(
        f"{made} tokens in {elapsed:.2f} s ({made / elapsed:.1f} tokens/s) on {device}, "
        f"{stats.steps} engine steps; speculated {stats.tokens_proposed} tokens, kept {kept}"
    )


if __name__ == "__main__":
    run_cli(main)
