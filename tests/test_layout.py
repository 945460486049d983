"""The design's two structural rules, checked: platform/ is no package, the core imports no Ray."""

import subprocess
import sys

from .conftest import REPO

CORE = [
    "config",
    "nanogpt_config",
    "tokenizer",
    "model",
    "kv_cache",
    "sampling",
    "checkpoint",
    "hf_gpt2",
    "nanogpt_checkpoint",
    "corpus",
    "shards",
    "shard_import",
    "training",
    "quantize",
    "evaluation",
    "run_log",
    "engine",
    "text_stream",
    "int8_release",
]


def test_platform_is_a_plain_folder():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_the_core_runs_without_ray():
    code = "import sys\n" + "".join(f"import raygpt.{m}\n" for m in CORE)
    code += "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
