import os

import pytest
import sentencepiece as spm

from megatron_csl.data.tokenizer import (
    BOS_ID, EOS_ID, UNK_ID, sample_documents, train_tokenizer, training_sentences,
)

from .conftest import TRICKY_TEXTS, c4_rows, synthetic_texts, write_jsonl


def test_llama_like_ids_byte_fallback_and_split_digits(sp):
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (UNK_ID, BOS_ID, EOS_ID, -1)
    assert sp.vocab_size() == 600
    assert all(sp.id_to_piece(i) == f"<0x{i - 3:02X}>" for i in (3, 100, 258))  # 256 byte pieces
    text = "In 2024 a never-seen ✓ and 中 appear"
    ids = sp.encode(text)
    assert UNK_ID not in ids  # byte fallback: nothing is unknown
    assert sp.decode(ids) == text
    pieces = sp.encode("year 2024", out_type=str)
    assert [p for p in pieces if p.strip("▁").isdigit()] == ["2", "0", "2", "4"]


def test_training_is_deterministic_and_leaves_only_model_and_vocab(tmp_path):
    shard = write_jsonl(str(tmp_path / "in.jsonl.gz"), c4_rows(synthetic_texts(120) + TRICKY_TEXTS))
    models = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        report = train_tokenizer([shard], str(out / "tok"), vocab_size=500, sample_docs=100,
                                 seed=3, progress=False)
        assert sorted(os.listdir(out)) == ["tok.model", "tok.vocab"]
        assert report.sample.documents == 100
        models.append((out / "tok.model").read_bytes())
    assert models[0] == models[1]
    vocab_lines = (tmp_path / "run0" / "tok.vocab").read_text().splitlines()
    assert len(vocab_lines) == 500 and vocab_lines[0].startswith("<unk>\t")


def test_sample_is_seeded_and_the_seed_matters(tmp_path):
    paths = [write_jsonl(str(tmp_path / f"s{i}.jsonl"), c4_rows([f"shard {i} doc {j}" for j in range(30)]))
             for i in range(4)]
    first = list(sample_documents(paths, 50, seed=1, sample_rate=0.5))
    assert first == list(sample_documents(paths, 50, seed=1, sample_rate=0.5))
    assert first != list(sample_documents(paths, 50, seed=2, sample_rate=0.5))
    assert len(first) == 50 and len(set(first)) == 50
    # rate 1.0 takes whole shards in the seeded shard order
    whole = list(sample_documents(paths, 30, seed=1))
    assert len({d.split(" doc")[0] for d in whole}) == 1


def test_training_sentences_are_paragraphs_and_skip_overlong_ones():
    from megatron_csl.data.tokenizer import SampleStats

    stats = SampleStats()
    got = list(training_sentences(["a\nbb\n\nccc", "d" * 50], max_sentence_bytes=10, stats=stats))
    assert got == ["a", "bb", "ccc"]
    assert stats.too_long_paragraphs == 1 and stats.paragraphs == 3


def test_unigram_model_trains(tmp_path):
    shard = write_jsonl(str(tmp_path / "in.jsonl"), c4_rows(synthetic_texts(40)))
    report = train_tokenizer([shard], str(tmp_path / "uni"), vocab_size=400, model_type="unigram",
                             sample_docs=40, progress=False, threads=1)
    model = spm.SentencePieceProcessor(model_file=report.model_path)
    assert model.vocab_size() == 400 and model.eos_id() == EOS_ID
    text = synthetic_texts(1, seed=9)[0]
    assert model.decode(model.encode(text)) == text


def test_bad_arguments_name_the_value(tmp_path):
    shard = write_jsonl(str(tmp_path / "in.jsonl"), c4_rows(["some text"] * 5))
    with pytest.raises(ValueError, match="wordpiece"):
        train_tokenizer([shard], str(tmp_path / "t"), model_type="wordpiece", progress=False)
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer([shard], str(tmp_path / "t"), vocab_size=100, sample_docs=5, progress=False)
    with pytest.raises(ValueError, match="sample_rate"):
        list(sample_documents([shard], 5, sample_rate=0.0))
    empty = write_jsonl(str(tmp_path / "bad.jsonl"), ["not json", '{"url": 1}'])
    with pytest.raises(ValueError, match="no text to train on"):
        train_tokenizer([empty], str(tmp_path / "t"), vocab_size=300, sample_docs=5, progress=False)
    assert not os.path.exists(tmp_path / "t.model")


def test_gzip_corrupt_mid_stream_is_a_shard_error(tmp_path):
    from megatron_csl.data.c4_shards import ShardReadError

    from .conftest import write_gzip_corrupt_mid_stream

    shard = write_gzip_corrupt_mid_stream(tmp_path / "c4-train.00001-of-01024.json.gz",
                                          c4_rows(synthetic_texts(400)), good=200)
    with pytest.raises(ShardReadError, match=r"c4-train\.00001-of-01024\.json\.gz.*corrupt"):
        train_tokenizer([shard], str(tmp_path / "tok"), vocab_size=300, sample_docs=400,
                        seed=1, progress=False)
    assert not (tmp_path / "tok.model").exists()


def test_progress_bar_ends_at_100_percent_when_the_corpus_is_smaller_than_the_sample(tmp_path, capsys):
    shard = write_jsonl(str(tmp_path / "in.jsonl"), c4_rows(synthetic_texts(40)))
    train_tokenizer([shard], str(tmp_path / "t"), vocab_size=400, sample_docs=1000, threads=1)
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()
    bar = [line for line in last if "sampling for the tokenizer" in line][-1]
    assert "100%" in bar and "40/40" in bar, bar
