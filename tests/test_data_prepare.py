"""The Ray Data pipeline: corpus to token shards, on a real local Ray."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raygpt.data.corpus import HIDDEN, KEPT, OUTSIDE, content_hash, decode_document, resolve_inputs
from raygpt.data.prepare import PrepareOptions, prepare_dataset
from raygpt.data.shards import file_sha256, read_manifest
from raygpt.errors import RaygptError
from raygpt.tokenizer import get_tokenizer


def shard_rows(root, manifest, split):
    for path in manifest.shard_paths(root, split):
        table = pq.read_table(path)
        yield from zip(
            table.column("tokens").to_pylist(), table.column("hash").to_pylist(), strict=True
        )


def test_stdlib_manifest_counts_add_up(stdlib_shards):
    result = stdlib_shards
    manifest = read_manifest(result.out_dir)
    assert manifest == result.manifest
    assert (manifest.tokenizer, manifest.vocab_size, manifest.token_dtype) == (
        "gpt2",
        50257,
        "uint16",
    )
    kept = sum(split.documents for split in manifest.splits.values())
    not_read = (HIDDEN, OUTSIDE)  # left out while listing
    assert manifest.files_read == kept + sum(
        n for reason, n in manifest.skipped.items() if reason not in not_read
    )
    assert manifest.files_read == len(resolve_inputs(["stdlib"]).files) > 1000
    assert manifest.splits["train"].documents > 10 * manifest.splits["val"].documents > 0
    for name, split in manifest.splits.items():
        assert split.tokens == sum(s["tokens"] for s in split.shards)
        assert split.documents == sum(s["documents"] for s in split.shards)
        rows = list(shard_rows(result.out_dir, manifest, name))
        assert len(rows) == split.documents
        assert sum(len(tokens) for tokens, _ in rows) == split.tokens
        for shard in split.shards:
            assert file_sha256(Path(result.out_dir) / shard["file"]) == shard["sha256"]
    assert result.bytes_read > 20e6


def test_stdlib_shards_round_trip_to_the_source_documents(stdlib_shards):
    root, manifest = stdlib_shards.out_dir, stdlib_shards.manifest
    tokenizer = get_tokenizer("gpt2")
    sources = {}
    for path in resolve_inputs(["stdlib"]).files:
        text, status = decode_document(Path(path).read_bytes())
        if status == KEPT:
            sources[content_hash(text)] = text
    rows = list(shard_rows(root, manifest, "train")) + list(shard_rows(root, manifest, "val"))
    assert {h for _, h in rows} <= set(sources)
    assert len({h for _, h in rows}) == len(rows)  # de-duplicated
    for tokens, doc_hash in rows[:: max(1, len(rows) // 60)]:  # a sample across the corpus
        assert tokens[-1] == tokenizer.eot_token and tokenizer.eot_token not in tokens[:-1]
        assert tokenizer.decode(tokens[:-1]) == sources[doc_hash]


def test_identical_input_gives_identical_shards_whatever_the_parallelism(ray_session, tmp_path):
    outputs = []
    for actors in (1, 3):
        options = PrepareOptions(
            out_dir=str(tmp_path / f"run{actors}"),
            include=["*/json/*", "*/email/*"],
            tokenizer_actors=actors,
            shard_tokens=50_000,
        )
        outputs.append(prepare_dataset(options).manifest)
    first, second = outputs
    assert first.splits["train"].shards == second.splits["train"].shards
    assert first.splits["val"].shards == second.splits["val"].shards
    assert len(first.splits["train"].shards) > 2  # several shards, each checksummed


def make_corpus(root):
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "pkg" / "b.py").write_text("print('héllo wörld')\n")
    (root / "pkg" / "copy_of_a.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "pkg" / "latin1.py").write_bytes("x = 'café'\n".encode("latin-1"))
    (root / "pkg" / "blob.py").write_bytes(bytes(range(256)) * 4)
    (root / "pkg" / "empty.py").write_text("   \n")
    (root / "pkg" / "notes.txt").write_text("not python")
    (root / ".git").mkdir()
    (root / ".git" / "hidden.py").write_text("x = 1\n")
    (root / "pkg" / ".secrets.py").write_text("API_KEY = 'sk-do-not-train-on-me'\n")
    (root.parent / "outside.py").write_text("PASSWORD = 'hunter2'\n")
    (root / "pkg" / "link.py").symlink_to(root.parent / "outside.py")


def test_bad_files_are_counted_skips(ray_session, tmp_path):
    make_corpus(tmp_path / "src")
    result = prepare_dataset(
        PrepareOptions(
            out_dir=str(tmp_path / "out"),
            inputs=[str(tmp_path / "src")],
            include=["*.py"],
            val_fraction=0.0,
        )
    )
    manifest = result.manifest
    assert manifest.files_read == 6  # .txt excluded by pattern; dotfiles, the link: not read
    assert manifest.skipped == {
        "binary": 1,
        "duplicate": 1,
        "empty": 1,
        "undecodable": 1,
        "hidden": 2,  # .git/hidden.py, pkg/.secrets.py
        "symlink_outside_input": 1,  # pkg/link.py -> ../outside.py
    }
    assert manifest.splits["train"].documents == 2 and manifest.splits["val"].documents == 0
    rows = list(shard_rows(result.out_dir, manifest, "train"))
    tokenizer = get_tokenizer("gpt2")
    assert [tokenizer.decode(t[:-1]) for t, _ in rows] == [
        "def add(a, b):\n    return a + b\n",
        "print('héllo wörld')\n",
    ]
    texts = [tokenizer.decode(t) for t, _ in rows]
    assert not any("sk-do-not-train" in t or "hunter2" in t for t in texts)


def test_dotfiles_and_outside_links_are_read_only_when_asked(tmp_path):
    make_corpus(tmp_path / "src")
    plain = resolve_inputs([str(tmp_path / "src")], include=["*.py"])
    opted = resolve_inputs(
        [str(tmp_path / "src")], include=["*.py"], include_hidden=True, follow_symlinks=True
    )
    assert set(opted.files) - set(plain.files) == {
        str((tmp_path / "src" / ".git" / "hidden.py").resolve()),
        str((tmp_path / "src" / "pkg" / ".secrets.py").resolve()),
        str((tmp_path / "outside.py").resolve()),
    }
    assert opted.skipped == {} and plain.skipped == {"hidden": 2, "symlink_outside_input": 1}
    # a glob leaves the same out
    matched = resolve_inputs([str(tmp_path / "src" / "pkg" / "*.py")])
    assert matched.skipped == {"symlink_outside_input": 1}
    assert not any(f.endswith(("outside.py", ".secrets.py")) for f in matched.files)


def test_size_filters_and_byte_tokenizer(ray_session, tmp_path):
    make_corpus(tmp_path / "src")
    result = prepare_dataset(
        PrepareOptions(
            out_dir=str(tmp_path / "out"),
            inputs=[str(tmp_path / "src" / "pkg" / "*.py")],
            tokenizer="byte",
            min_chars=25,
            val_fraction=0.0,
        )
    )
    assert result.manifest.skipped["too_small"] == 1  # b.py is 22 characters
    assert result.manifest.token_dtype == "uint16" and result.manifest.eot_token == 256
    ((tokens, _),) = shard_rows(result.out_dir, result.manifest, "train")
    assert bytes(tokens[:-1]).decode() == "def add(a, b):\n    return a + b\n"


def test_jsonl_and_parquet_text_columns(ray_session, tmp_path):
    docs = [f"document number {i}\n" * (i + 1) for i in range(20)]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"content": d, "id": i}) + "\n" for i, d in enumerate(docs[:10]))
    )
    parquet = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"content": docs[10:]}), parquet)
    result = prepare_dataset(
        PrepareOptions(
            out_dir=str(tmp_path / "out"), inputs=[str(jsonl), str(parquet)], text_column="content"
        )
    )
    manifest = result.manifest
    assert manifest.files_read == 20
    assert sum(s.documents for s in manifest.splits.values()) == 20
    # files and table rows in one run
    make_corpus(tmp_path / "src")
    mixed = prepare_dataset(
        PrepareOptions(
            out_dir=str(tmp_path / "mixed"),
            inputs=[str(tmp_path / "src" / "pkg" / "a.py"), str(jsonl), str(parquet)],
            text_column="content",
        )
    )
    assert mixed.manifest.files_read == 21
    assert sum(s.documents for s in mixed.manifest.splits.values()) == 21
    with pytest.raises(RaygptError, match="has no column 'text'"):
        prepare_dataset(PrepareOptions(out_dir=str(tmp_path / "x"), inputs=[str(parquet)]))


@pytest.mark.parametrize(
    "inputs, include, message",
    [
        (["/nonexistent/corpus"], None, "input not found: /nonexistent/corpus"),
        (["{src}"], ["*.rs"], r"no files in .* match include=\['\*.rs'\]"),
        (["{src}/*.cpp"], None, "input pattern matched nothing"),
        (["{bin}"], None, r"no usable documents .* all skipped \(2 binary\)"),
    ],
)
def test_bad_inputs_are_one_clear_error(ray_session, tmp_path, inputs, include, message):
    make_corpus(tmp_path / "src")
    (tmp_path / "bin").mkdir()
    for name in ("x.so", "y.png"):
        (tmp_path / "bin" / name).write_bytes(b"\x89PNG\x00\x00" + bytes(100))
    inputs = [i.format(src=tmp_path / "src", bin=tmp_path / "bin") for i in inputs]
    with pytest.raises(RaygptError, match=message):
        prepare_dataset(
            PrepareOptions(out_dir=str(tmp_path / "out"), inputs=inputs, include=include)
        )
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_output_folder_is_never_silently_replaced(ray_session, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(RaygptError, match="not empty; pass --overwrite"):
        prepare_dataset(PrepareOptions(out_dir=str(out)))
    assert (out / "precious.txt").read_text() == "keep me"


def test_options_are_checked_before_any_work(tmp_path):
    for bad in (dict(val_fraction=1.0), dict(min_chars=10, max_chars=5), dict(shard_tokens=0)):
        with pytest.raises(RaygptError):
            PrepareOptions(out_dir=str(tmp_path), **bad).check()


def test_split_is_by_content_not_order(ray_session, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    docs = {f"f{i:03d}.py": f"value_{i} = {i * 7919}\n" for i in range(200)}
    for name, text in docs.items():
        (src / name).write_text(text)
    result = prepare_dataset(
        PrepareOptions(out_dir=str(tmp_path / "a"), inputs=[str(src)], val_fraction=0.2)
    )
    val_hashes = {h for _, h in shard_rows(result.out_dir, result.manifest, "val")}
    assert 20 < len(val_hashes) < 60
    # rename every file: same documents, other order -> the same documents land in val
    for name in list(docs):
        (src / name).rename(src / f"z_{name[::-1]}")
    again = prepare_dataset(
        PrepareOptions(out_dir=str(tmp_path / "b"), inputs=[str(src)], val_fraction=0.2)
    )
    assert {h for _, h in shard_rows(again.out_dir, again.manifest, "val")} == val_hashes


def test_prepare_job_end_to_end(tmp_path):
    """The entrypoint as a user runs it: its own local Ray, a summary, and clear errors."""
    from .conftest import run_job

    make_corpus(tmp_path / "src")
    ok = run_job(
        "prepare_data.py",
        "--input",
        str(tmp_path / "src"),
        "--include",
        "*.py",
        "--out",
        str(tmp_path / "out"),
        "--num-cpus",
        "2",
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (
        "train:" in ok.stdout
        and "skipped: 1 binary, 1 duplicate, 1 empty, 1 undecodable (of 6 read)" in ok.stdout
        and "left out: 2 hidden, 1 symlink_outside_input" in ok.stdout
    )
    assert "tokens/s" in ok.stdout
    bad = run_job(
        "prepare_data.py", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"error: input not found: {tmp_path / 'nope'}"
