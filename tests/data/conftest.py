"""Shared fixtures for the data-tool tests: small C4-format shards and a tiny tokenizer."""
import gzip
import json
import os

import pytest

from megatron_csl.data.reference_files import WIKI_CORPUS as _WIKI_CORPUS
from megatron_csl.data.synthetic_c4 import shard_documents, make_language

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# real English shipped with the package (megatron_csl/data/reference/README.md)
WIKI_CORPUS = str(_WIKI_CORPUS)

# Texts that stress the tokenizer round trip: digits, accents, CJK, emoji (byte fallback),
# newlines, repeated and leading/trailing whitespace, tabs, JSON escapes.
TRICKY_TEXTS = [
    "In 1969, 12345 people watched the Apollo 11 landing.",
    "Café déjà vu — naïve façade, São Paulo and Zürich.",
    "中文文本和日本語のテキスト。",
    "Emoji: 🚀🔥 and a snowman ☃ in one line.",
    "First paragraph.\nSecond paragraph.\n\nThird after a blank line.",
    "  leading and trailing spaces  ",
    "tabs\tinside\ttext and \"quotes\" and back\\slashes",
    "x",
]


def synthetic_texts(count, seed=0):
    return [r["text"] for r in shard_documents(make_language(), seed, "train", 0, count)]


def write_jsonl(path, lines, compress=None):
    """Write raw lines (str: written as is; dict: JSON-encoded) as a shard."""
    payload = "".join((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x) + "\n"
                      for x in lines).encode("utf-8")
    compress = path.endswith(".gz") if compress is None else compress
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(payload)
    return path


def c4_rows(texts, start=0):
    return [{"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x.invalid/{start + i}"}
            for i, t in enumerate(texts)]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A 600-piece Llama-like BPE model trained on synthetic text plus the tricky texts."""
    from megatron_csl.data.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    shard = write_jsonl(str(folder / "train.jsonl"), c4_rows(synthetic_texts(150) + TRICKY_TEXTS * 3))
    report = train_tokenizer([shard], str(folder / "tiny"), vocab_size=600, model_type="bpe",
                             sample_docs=10_000, seed=0, progress=False, threads=1)
    return report.model_path


@pytest.fixture(scope="session")
def sp(tiny_tokenizer):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=tiny_tokenizer)


@pytest.fixture
def fixture_shards(tmp_path):
    """Three gzip shards and one plain .jsonl shard of known texts; returns (paths, texts)."""
    texts = synthetic_texts(40, seed=5) + TRICKY_TEXTS
    chunks = [texts[0:15], texts[15:30], texts[30:40], texts[40:]]
    paths = []
    for i, chunk in enumerate(chunks):
        name = f"c4-train.{i:05d}-of-00004.json.gz" if i < 3 else "extra.jsonl"
        paths.append(write_jsonl(str(tmp_path / name), c4_rows(chunk, start=i * 100)))
    return paths, texts


def write_gzip_corrupt_mid_stream(path, rows, good=200):
    """A gzip shard of JSON lines whose deflate stream is invalid after ``good`` lines: a full
    flush there starts a new block, whose header gets the reserved block type (ISA-L raises its
    own IsalError for it, zlib its zlib.error)."""
    import zlib

    lines = [(json.dumps(r) + "\n").encode() for r in rows]
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    first = c.compress(b"".join(lines[:good])) + c.flush(zlib.Z_FULL_FLUSH)
    data = bytearray(first + c.compress(b"".join(lines[good:])) + c.flush())
    data[len(first)] |= 0b110
    with open(path, "wb") as f:
        f.write(bytes(data))
    return str(path)
