"""raygpt.storage on a local folder and on s3:// (a local S3-compatible server): the same calls,
the same results; checkpoints read from a URI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from raygpt import storage
from raygpt.checkpoint import (
    checkpoint_format,
    load_model,
    read_model_config,
    save_checkpoint,
)
from raygpt.errors import CheckpointError
from raygpt.model import GPT

from .conftest import free_port


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/{request.node.name.replace('[', '-').rstrip(']')}-{time.monotonic_ns()}"


def test_small_files_round_trip(base):
    log = storage.join(base, "run", "metrics.jsonl")
    storage.append_text(log, '{"step": 1}\n')
    storage.append_text(log, '{"step": 2}\n')  # object stores have no append: rewritten
    assert storage.read_text(log) == '{"step": 1}\n{"step": 2}\n'
    storage.write_bytes(storage.join(base, "run", "loss.png"), b"\x89PNG")
    assert storage.is_file(log) and storage.is_dir(storage.join(base, "run"))
    assert not storage.exists(storage.join(base, "run", "nothing"))
    assert set(storage.listing(storage.join(base, "run"))) == {"metrics.jsonl", "loss.png"}
    with pytest.raises(FileNotFoundError, match="not found: .*nothing"):
        storage.read_text(storage.join(base, "run", "nothing"))
    assert storage.name_of(storage.join(base, "run")) == "run"
    assert storage.join(storage.parent_of(storage.join(base, "run")), "run") == storage.join(
        base, "run"
    )


def test_folders_upload_download_and_the_cache(base, tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a.bin").write_bytes(b"a" * 1000)
    (source / "sub" / "b.txt").write_text("b")
    target = storage.join(base, "folder")
    storage.upload(source, target)
    assert storage.listing(target).keys() == {"a.bin", "sub/b.txt"}
    assert storage.listing(target)["a.bin"][0] == 1000

    copy = storage.local_copy(target)
    assert (copy / "a.bin").read_bytes() == b"a" * 1000 and (copy / "sub" / "b.txt").is_file()
    if storage.is_uri(target):
        assert copy != source
        assert storage.local_copy(target) == copy  # unchanged: the cached copy is reused
        storage.write_text(storage.join(target, "sub", "b.txt"), "changed")
        assert (storage.local_copy(target) / "sub" / "b.txt").read_text() == "changed"
    else:
        assert copy == Path(target)  # a local path is used in place

    with storage.writing_dir(storage.join(base, "staged"), last="marker.json") as staged:
        (staged / "x.txt").write_text("x")
        (staged / "marker.json").write_text("{}")
    assert storage.listing(storage.join(base, "staged")).keys() == {"x.txt", "marker.json"}
    assert storage.read_text(storage.join(base, "staged", "x.txt")) == "x"


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_a_failed_upload_leaves_no_marker(s3_bucket, tmp_path):
    """The marker (a checkpoint's metadata, a dataset's manifest) goes first and comes back
    last: an upload that fails halfway leaves a folder a reader refuses, never a marker beside
    missing or stale files."""
    target = f"{s3_bucket}/marked-{time.monotonic_ns()}"
    source = tmp_path / "folder"
    source.mkdir()
    for i in range(4):
        (source / f"part{i}.bin").write_bytes(bytes([i]) * 100)
    (source / "meta.json").write_text("{}")
    storage.upload(source, target, last="meta.json")
    assert "meta.json" in storage.listing(target)

    (source / "unreadable.bin").symlink_to("/proc/self/mem")  # reading it fails (EIO)
    with pytest.raises(storage.StorageError, match="cannot upload"):
        storage.upload(source, target, last="meta.json")
    assert "meta.json" not in storage.listing(target)
    assert (source / "meta.json").is_file()  # the source is left as it was


def test_an_appended_log_on_s3_continues_across_processes(s3_bucket, tmp_path):
    log = f"{s3_bucket}/logs-{time.monotonic_ns()}/metrics.jsonl"
    storage.append_text(log, "a\n")
    storage.write_text(log, "a\nb\n")  # another process (a previous run) wrote more
    storage._appended.clear()  # this process starts afresh, as a resumed worker does
    storage.append_text(log, "c\n")
    assert storage.read_text(log) == "a\nb\nc\n"


def test_an_output_folder_is_replaced_only_when_asked(base):
    out = storage.join(base, "out")
    storage.write_text(storage.join(out, "old.txt"), "old")
    with pytest.raises(storage.StorageError, match="not empty; pass --overwrite"):
        storage.prepare_output(out, overwrite=False)
    assert storage.read_text(storage.join(out, "old.txt")) == "old"  # nothing lost
    storage.prepare_output(out, overwrite=True)
    assert storage.listing(out) == {}


def test_unreachable_locations_fail_with_one_clear_error(s3_bucket):
    with pytest.raises(storage.StorageError, match="cannot open nope://x/y"):
        storage.exists("nope://x/y")
    with pytest.raises(storage.StorageError, match="cannot write s3://no-such-bucket-rg/x"):
        storage.write_text("s3://no-such-bucket-rg/x", "x")
    with pytest.raises(storage.StorageError, match="not found: s3://raygpt-test/missing"):
        storage.local_copy(f"{s3_bucket}/missing")
    with pytest.raises(storage.StorageError, match="s3://raygpt-test is a bucket's root"):
        storage.parent_of(s3_bucket)


def test_a_store_that_does_not_answer_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens
    with pytest.raises(storage.StorageError, match="s3://raygpt-test/x"):
        storage.read_text("s3://raygpt-test/x")


def test_a_checkpoint_at_a_uri_loads_like_a_local_one(s3_bucket, tmp_path):
    from raygpt.checkpoint import CheckpointMeta
    from raygpt.config import ModelConfig

    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    torch.manual_seed(0)
    model = GPT(config).eval()
    save_checkpoint(tmp_path / "ckpt", model, CheckpointMeta(model=config, tokenizer="byte"))
    uri = f"{s3_bucket}/checkpoints/tiny"
    storage.upload(tmp_path / "ckpt", uri)

    assert checkpoint_format(uri) == "raygpt"
    assert read_model_config(uri) == config  # metadata read in place
    loaded, meta = load_model(uri)
    assert meta.tokenizer == "byte"
    tokens = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(loaded(tokens)[0], model(tokens)[0])
    with pytest.raises(CheckpointError, match="checkpoint not found: s3://raygpt-test/none"):
        load_model(f"{s3_bucket}/none")


def test_a_run_at_a_missing_uri_fails_before_any_worker_starts(s3_bucket):
    from raygpt.config import experiment_from_dict
    from raygpt.errors import RaygptError
    from raygpt.train.launch import plan_training

    config = experiment_from_dict(
        {
            "data": {"dataset": f"{s3_bucket}/no/such/dataset", "tokenizer": "byte"},
            "train": {"out_dir": f"{s3_bucket}/runs/x"},
        }
    )
    with pytest.raises(RaygptError, match="dataset folder not found: s3://raygpt-test/no/such"):
        plan_training(config)
