"""`python -m raygpt.release.memory_probe CHECKPOINT [NEW_TOKENS]`: peak RSS of loading and decoding.

Run in a fresh process by raygpt.release.evaluation, so one model's memory never counts for another.
Prints {"peak_mb": ..., "baseline_mb": ...}: the process's peak resident memory (torch's
runtime included), and what it held after imports, before the model was loaded.
"""

from __future__ import annotations

import json
import resource
import sys

import torch

from raygpt.inference.load import load_for_inference


def _rss_peak_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process's own
    memory map; getrusage's ru_maxrss survives exec, so a child of a big parent (a pipeline
    driver holding a model) would report the parent's size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    checkpoint, new_tokens = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 32
    baseline = _rss_peak_mb()
    model, _ = load_for_inference(checkpoint)
    prompt = torch.zeros(1, 16, dtype=torch.long)
    model.generate(prompt, new_tokens, temperature=0)
    print(json.dumps({"peak_mb": _rss_peak_mb(), "baseline_mb": baseline}))


if __name__ == "__main__":
    main()
