"""Shards to training windows, and the import of llm.c / nanoGPT token files."""

import numpy as np
import pytest

from raygpt.data.import_tokens import import_llmc, import_nanogpt
from raygpt.data.shards import cut_windows, read_llmc_bin, write_llmc_bin
from raygpt.data.stream import window_dataset
from raygpt.errors import RaygptError

BLOCK = 64


def test_cut_windows_are_shifted_slices_of_the_stream():
    stream = np.arange(1000, dtype=np.uint16)
    windows = cut_windows(stream, 10)
    assert windows.shape == (99, 11)
    for i, window in enumerate(windows):
        assert np.array_equal(window, stream[i * 10 : i * 10 + 11])
    x, y = windows[:, :-1], windows[:, 1:]
    assert np.array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert cut_windows(stream[:5], 10).shape == (0, 11)


def test_window_dataset_streams_block_size_windows_from_the_shards(stdlib_shards):
    root, manifest = stdlib_shards.out_dir, stdlib_shards.manifest
    ds = window_dataset(root, "val", BLOCK)
    windows = np.concatenate(
        [b["window"] for b in ds.iter_batches(batch_size=512, batch_format="numpy")]
    )
    assert windows.shape[1] == BLOCK + 1 and windows.dtype == np.uint16
    val_tokens = manifest.splits["val"].tokens
    # each batch of documents loses less than one window at its tail
    assert val_tokens // BLOCK - 100 < len(windows) <= val_tokens // BLOCK
    import pyarrow.parquet as pq

    first = np.concatenate(
        pq.read_table(manifest.shard_paths(root, "val")[0]).column("tokens").to_pylist()[:50]
    )
    assert np.array_equal(windows[0], first[: BLOCK + 1])  # unshuffled: the stream's start
    # a different block_size from the same shards
    other = next(
        iter(window_dataset(root, "val", 17).iter_batches(batch_size=4, batch_format="numpy"))
    )
    assert other["window"].shape == (4, 18)


def test_per_epoch_shuffle_is_reproducible_from_a_seed(stdlib_shards):
    ds = window_dataset(stdlib_shards.out_dir, "val", BLOCK, shuffle_seed=1)

    def epoch(seed):
        batches = ds.iter_batches(
            batch_size=64,
            batch_format="numpy",
            local_shuffle_buffer_size=512,
            local_shuffle_seed=seed,
        )
        return np.concatenate([b["window"][:, 0] for b in batches])

    a, b, c = epoch(10), epoch(10), epoch(11)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(np.sort(a), np.sort(c))  # same windows, other order


def test_two_ranks_get_the_same_number_of_batches(ray_session, stdlib_shards):
    """What DDP needs: equal batch counts on every rank, or the all-reduce hangs."""
    ds = window_dataset(stdlib_shards.out_dir, "val", BLOCK, shuffle_seed=0)
    splits = ds.streaming_split(2, equal=True)

    @ray_session.remote(num_cpus=0.5)
    def count_batches(iterator):
        return sum(1 for _ in iterator.iter_batches(batch_size=16, drop_last=True))

    counts = ray_session.get([count_batches.remote(split) for split in splits])
    assert counts[0] == counts[1] > 10


def test_window_dataset_errors(stdlib_shards, tmp_path):
    with pytest.raises(RaygptError, match="no 'test' shards"):
        window_dataset(stdlib_shards.out_dir, "test", BLOCK)
    with pytest.raises(RaygptError, match="dataset folder not found"):
        window_dataset(tmp_path / "missing", "train", BLOCK)
    with pytest.raises(RaygptError, match="has no manifest.json"):
        window_dataset(tmp_path, "train", BLOCK)


def test_llmc_shards_import_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 50256, 200_000).astype(np.uint16)
    train[::1000] = 50256
    val = rng.integers(0, 50256, 30_000).astype(np.uint16)
    write_llmc_bin(tmp_path / "fineweb_train_000001.bin", train)
    write_llmc_bin(tmp_path / "fineweb_val_000000.bin", val)
    assert np.array_equal(read_llmc_bin(tmp_path / "fineweb_train_000001.bin"), train)
    manifest = import_llmc(str(tmp_path / "fineweb_*.bin"), str(tmp_path / "out"))
    assert manifest.splits["train"].tokens == len(train) and manifest.splits["val"].tokens == len(
        val
    )
    assert manifest.splits["train"].documents == 200
    import pyarrow.parquet as pq

    rows = (
        pq.read_table(manifest.shard_paths(tmp_path / "out", "train")).column("tokens").to_pylist()
    )
    assert np.array_equal(np.concatenate(rows), train)


def test_nanogpt_bins_import_and_bad_files(tmp_path):
    data = tmp_path / "openwebtext"
    data.mkdir()
    np.arange(5000, dtype=np.uint16).tofile(data / "train.bin")
    np.arange(700, dtype=np.uint16).tofile(data / "val.bin")
    manifest = import_nanogpt(str(data), str(tmp_path / "out"))
    assert manifest.splits["val"].tokens == 700
    with pytest.raises(RaygptError, match="not an llm.c shard"):
        import_llmc(str(data / "train.bin"), str(tmp_path / "o2"))
    (tmp_path / "bad.bin").write_bytes(
        np.array([20240520, 1, 999] + [0] * 253, dtype=np.int32).tobytes()
    )
    with pytest.raises(RaygptError, match="header says 999 tokens"):
        import_llmc(str(tmp_path / "bad.bin"), str(tmp_path / "o3"))
    (tmp_path / "gpt4.bin").write_bytes(
        np.array([20240520, 1, 2] + [0] * 253, dtype=np.int32).tobytes()
        + np.array([60000, 1], dtype=np.uint16).tobytes()
    )
    with pytest.raises(RaygptError, match="token id 60000, outside the gpt2 vocabulary"):
        import_llmc(str(tmp_path / "gpt4.bin"), str(tmp_path / "o4"))
    with pytest.raises(RaygptError, match="has no val.bin"):
        (data / "val.bin").unlink()
        import_nanogpt(str(data), str(tmp_path / "o5"))


def small_dataset(root, tokens_per_doc):
    """A byte-tokenizer dataset written by the shard writer itself (no Ray): train and val."""
    from raygpt.data.shards import Manifest, ShardWriter, write_manifest

    root.mkdir(parents=True)
    writers = {
        split: ShardWriter(root, split, np.dtype(np.uint16), 1 << 20) for split in ("train", "val")
    }
    for split, writer in writers.items():
        for doc in tokens_per_doc[split]:
            writer.add(np.array(doc, dtype=np.uint16))
        writer.flush()
    manifest = Manifest("byte", 257, 256, "uint16", {s: w.stats for s, w in writers.items()})
    write_manifest(root, manifest)
    return manifest


def train_plan(dataset, out_dir):
    from raygpt.config import experiment_from_dict
    from raygpt.train.launch import plan_training

    config = {
        "model": {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8},
        "data": {"dataset": str(dataset), "tokenizer": "byte"},
        "train": {"out_dir": str(out_dir), "batch_size": 2},
    }
    return plan_training(experiment_from_dict(config))


def test_a_changed_shard_fails_before_training_or_evaluation(tmp_path):
    from raygpt.data.shards import val_windows

    docs = {"train": [list(range(200))] * 3, "val": [list(range(100))] * 2}
    small_dataset(tmp_path / "data", docs)
    train_plan(tmp_path / "data", tmp_path / "run")  # as written: fine
    shard = tmp_path / "data" / "val" / "val_00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: bit rot, a bad copy
    shard.write_bytes(bytes(data))
    with pytest.raises(RaygptError, match=r"val_00000.parquet: sha256 .* is not the manifest's"):
        train_plan(tmp_path / "data", tmp_path / "run")
    with pytest.raises(RaygptError, match=r"val_00000.parquet: sha256"):
        val_windows(tmp_path / "data", 8, 4)


def test_token_ids_beyond_the_vocabulary_fail_naming_the_shard(tmp_path):
    docs = {"train": [list(range(200)), [5, 300, 7] * 20], "val": [list(range(100))] * 2}
    small_dataset(tmp_path / "data", docs)  # sha256 right, content wrong for the tokenizer
    with pytest.raises(
        RaygptError, match=r"train_00000.parquet: token id 300 is outside the byte vocabulary \(257"
    ):
        train_plan(tmp_path / "data", tmp_path / "run")
