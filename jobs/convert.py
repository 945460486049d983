"""Convert a checkpoint between formats.

    python jobs/convert.py --checkpoint ./gpt2-hf --out runs/gpt2 --to raygpt
    python jobs/convert.py --checkpoint runs/tiny/final --out ./tiny-hf --to hf

Reads raygpt checkpoints, Hugging Face GPT-2 folders and nanoGPT ckpt.pt files; writes
raygpt's format or HF GPT-2 (loadable by transformers, vLLM and ray.serve.llm). Either side
may be a URI (s3://...).
"""

from __future__ import annotations

from raygpt import storage
from raygpt.checkpoint import META_FILE, load_model, save_checkpoint
from raygpt.checkpoint.hf_gpt2 import export_hf_gpt2
from raygpt.cli import JobParser, run_cli


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="what to read (any supported format)")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--to", choices=("raygpt", "hf"), default="raygpt")
    args = parser.parse_args()
    model, meta = load_model(args.checkpoint)
    marker = "config.json" if args.to == "hf" else META_FILE  # written last
    with storage.writing_dir(args.out, last=marker) as out:
        if args.to == "hf":
            export_hf_gpt2(model, meta, out)
        else:
            save_checkpoint(out, model, meta)
    params = model.num_params(non_embedding=False)
    print(f"wrote {args.to} checkpoint to {args.out} ({params / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    run_cli(main)
