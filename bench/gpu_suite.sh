#!/usr/bin/env bash
# Every GPU number raygpt reports, in one command (bench/gpu_suite.py says what it measures).
#   bash bench/gpu_suite.sh            # on one H100/H200: under 8 minutes, tables in $OUT or runs/gpu_suite
#   bash bench/gpu_suite.sh --smoke    # every part at toy size on the CPU, under 3 minutes (CI)
# On the device tool's GPU machine (Python 3.12, torch with CUDA, no Ray, no network): build
# Ray's bundle here once (../shared/tools/gpu-ray-bundle.sh), carry .gpu, and this script
# unpacks it; without it the Ray Train comparison and INT8 (torchao) say they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
if [ -f .gpu/site.tar.xz ] && ! "$python" -c "import ray" 2>/dev/null; then
  mkdir -p /tmp/raygpt-site && tar xJf .gpu/site.tar.xz -C /tmp/raygpt-site
  export PYTHONPATH=/tmp/raygpt-site:${PYTHONPATH:-}
fi
# The engine's text stream needs GPT-2's BPE ranks: on a GPU machine carry .cache/tiktoken.
export PYTHONPATH=platform:bench:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} TOKENIZERS_PARALLELISM=false
exec "$python" bench/gpu_suite.py "$@"
