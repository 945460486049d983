"""Convert a checkpoint between formats.

    python jobs/convert.py --checkpoint ./gpt2-hf --out runs/gpt2 --to raygpt
    python jobs/convert.py --checkpoint model.Q4_K_M.gguf --out runs/imported
    python jobs/convert.py --checkpoint runs/tiny/final --out ./tiny-hf --to hf

Reads raygpt checkpoints, Hugging Face folders (GPT-2, Llama, Mistral, Qwen2), GGUF files
(llama architecture) and nanoGPT ckpt.pt files; writes raygpt's format or an HF folder (GPT-2,
or Llama/Qwen2 for the modern block: loadable by transformers, vLLM and ray.serve.llm).
Either side may be a URI (s3://...).
"""

from __future__ import annotations

from raygpt import storage
from raygpt.checkpoint import META_FILE, export_hf, load_model, save_checkpoint
from raygpt.cli import JobParser, run_cli


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="what to read: a folder, a .gguf or a .pt file"
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--to", choices=("raygpt", "hf"), default="raygpt")
    args = parser.parse_args()
    model, meta = load_model(args.checkpoint)
    marker = "config.json" if args.to == "hf" else META_FILE  # written last
    with storage.writing_dir(args.out, last=marker) as out:
        if args.to == "hf":
            export_hf(model, meta, out)
        else:
            save_checkpoint(out, model, meta)
    params = model.num_params(non_embedding=False)
    print(f"wrote {args.to} checkpoint to {args.out} ({params / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    run_cli(main)
