"""The preprocessing pipeline on small fixture shards written by the tests (always runs)."""
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from megatron_csl.data.c4_shards import MalformedLineError, ShardReadError
from megatron_csl.data.preprocess import (
    PreprocessConfig, PreprocessStateError, preprocess,
)
from megatron_csl.data.preprocess import worker as worker_module
from megatron_csl.data.preprocess.output import token_dtype

from .conftest import c4_rows, synthetic_texts, write_jsonl


def read_dataset(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(prefix)


def run(paths, model, prefix, **kw):
    kw.setdefault("progress", False)
    return preprocess(PreprocessConfig(inputs=paths, tokenizer_model=model,
                                       output_prefix=str(prefix), **kw))


def expected_documents(sp, texts, eod):
    out = []
    for ids in sp.encode(texts):
        if ids:
            out.append(ids + ([sp.eos_id()] if eod else []))
    return out


def test_documents_equal_sentencepiece_encoding_plus_eod(fixture_shards, tiny_tokenizer, sp, tmp_path):
    paths, texts = fixture_shards
    report = run(paths, tiny_tokenizer, tmp_path / "out" / "c4", append_eod=True)
    prefix = str(tmp_path / "out" / "c4_text_document")
    assert report.dataset_prefix == prefix
    ds = read_dataset(prefix)
    want = expected_documents(sp, texts, eod=True)
    assert len(ds) == len(want) == report.documents == len(texts)
    for i, ids in enumerate(want):
        assert ds[i].tolist() == ids
    assert ds.index.dtype == np.uint16 and report.dtype == "uint16"
    assert ds.document_indices.tolist() == list(range(len(want) + 1))
    assert report.tokens == sum(map(len, want))
    # Megatron's .idx header: magic, version 1, dtype code (8 = uint16), counts
    with open(prefix + ".idx", "rb") as f:
        header = f.read(9 + 8 + 1 + 16)
    assert header[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack("<QBQQ", header[9:]) == (1, 8, len(want), len(want) + 1)
    # work files are gone once the job finished; the summary stays beside the dataset
    assert sorted(os.listdir(tmp_path / "out")) == [
        "c4_text_document.bin", "c4_text_document.idx", "c4_text_document.stats.json"]


def test_output_does_not_depend_on_worker_count(fixture_shards, tiny_tokenizer, tmp_path):
    paths, _ = fixture_shards
    outputs = []
    for workers in (1, 2, 3):
        report = run(paths, tiny_tokenizer, tmp_path / f"k{workers}", workers=workers, append_eod=True)
        outputs.append([open(report.dataset_prefix + s, "rb").read() for s in (".bin", ".idx")])
    assert outputs[0] == outputs[1] == outputs[2]


def test_single_shard_is_split_across_two_workers_in_line_order(tiny_tokenizer, sp, tmp_path):
    texts = synthetic_texts(60, seed=2)
    shard = write_jsonl(str(tmp_path / "one.json.gz"), c4_rows(texts))
    report = run([shard], tiny_tokenizer, tmp_path / "split", workers=2)
    assert report.units == 2
    ds = read_dataset(report.dataset_prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == expected_documents(sp, texts, eod=False)


def test_malformed_lines_are_counted_and_reported(tiny_tokenizer, sp, tmp_path):
    lines = [json.dumps({"text": "good one"}), "{broken", json.dumps({"url": "no text"}), "",
             json.dumps({"text": ""}), json.dumps({"text": "good two"}), json.dumps([1])]
    shard = write_jsonl(str(tmp_path / "mixed.jsonl"), lines)
    report = run([shard], tiny_tokenizer, tmp_path / "m", append_eod=True)
    assert report.documents == 2 and report.lines == 7
    assert report.malformed == 3 and report.blank_lines == 1 and report.empty_documents == 1
    examples = report.malformed_by_shard[shard]["examples"]
    assert [line for line, _ in examples] == [2, 3, 7]
    ds = read_dataset(report.dataset_prefix)
    assert [ds[i].tolist() for i in range(2)] == expected_documents(sp, ["good one", "good two"], True)
    with open(report.dataset_prefix + ".stats.json") as f:
        assert json.load(f)["report"]["malformed"] == 3


def test_strict_makes_a_malformed_line_fatal_and_names_it(tiny_tokenizer, tmp_path):
    shard = write_jsonl(str(tmp_path / "bad.jsonl"), [json.dumps({"text": "ok"}), "{broken"])
    with pytest.raises(MalformedLineError, match=r"bad\.jsonl line 2: invalid JSON"):
        run([shard], tiny_tokenizer, tmp_path / "s", strict=True)
    assert not os.path.exists(str(tmp_path / "s_text_document.idx"))


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_gzip_fails_naming_the_shard_and_writes_no_output(
        fixture_shards, tiny_tokenizer, tmp_path, workers):
    paths, _ = fixture_shards
    data = open(paths[1], "rb").read()
    with open(paths[1], "wb") as f:
        f.write(data[: len(data) - 40])
    with pytest.raises(ShardReadError, match=os.path.basename(paths[1]) + ".*truncated"):
        run(paths, tiny_tokenizer, tmp_path / "t", workers=workers)
    assert not os.path.exists(str(tmp_path / "t_text_document.bin"))
    assert not os.path.exists(str(tmp_path / "t_text_document.idx"))


def test_interrupted_job_resumes_without_redoing_finished_units(
        fixture_shards, tiny_tokenizer, tmp_path, monkeypatch):
    paths, _ = fixture_shards
    reference = run(paths, tiny_tokenizer, tmp_path / "ref", append_eod=True)
    calls = []
    real_run = worker_module.UnitWorker.run

    def flaky_run(self, unit, progress=None):
        calls.append(unit.name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the job were killed during its third unit
        return real_run(self, unit, progress)

    monkeypatch.setattr(worker_module.UnitWorker, "run", flaky_run)
    with pytest.raises(KeyboardInterrupt):
        run(paths, tiny_tokenizer, tmp_path / "job", append_eod=True)
    work = tmp_path / "job_text_document.work"
    assert len([n for n in os.listdir(work) if n.endswith(".done.json")]) == 2
    assert not os.path.exists(str(tmp_path / "job_text_document.idx"))  # no half output

    calls.clear()
    monkeypatch.setattr(worker_module.UnitWorker, "run", real_run)
    counted = []
    monkeypatch.setattr(worker_module.UnitWorker, "run",
                        lambda self, unit, progress=None: counted.append(unit.name) or
                        real_run(self, unit, progress))
    # a restart with another worker count reuses the saved plan and the finished units
    report = run(paths, tiny_tokenizer, tmp_path / "job", append_eod=True, workers=1)
    assert report.units_resumed == 2 and len(counted) == report.units - 2
    for suffix in (".bin", ".idx"):
        assert open(report.dataset_prefix + suffix, "rb").read() == \
            open(reference.dataset_prefix + suffix, "rb").read()
    assert not work.exists()


def test_rerun_of_a_finished_job_is_a_no_op_and_changed_settings_need_overwrite(
        fixture_shards, tiny_tokenizer, tmp_path):
    paths, _ = fixture_shards
    first = run(paths, tiny_tokenizer, tmp_path / "o", append_eod=True)
    again = run(paths, tiny_tokenizer, tmp_path / "o", append_eod=True)
    assert again.already_complete and again.documents == first.documents
    with pytest.raises(PreprocessStateError, match="append_eod.*--overwrite"):
        run(paths, tiny_tokenizer, tmp_path / "o", append_eod=False)
    replaced = run(paths, tiny_tokenizer, tmp_path / "o", append_eod=False, overwrite=True)
    assert replaced.tokens == first.tokens - first.documents


def test_max_docs_takes_the_first_lines_in_input_order(fixture_shards, tiny_tokenizer, sp, tmp_path):
    paths, texts = fixture_shards
    report = run(paths, tiny_tokenizer, tmp_path / "few", max_docs=20, workers=2)
    ds = read_dataset(report.dataset_prefix)
    assert report.documents == len(ds) == 20
    assert [ds[i].tolist() for i in range(20)] == expected_documents(sp, texts[:20], eod=False)


def test_keep_work_dir_and_custom_work_dir(fixture_shards, tiny_tokenizer, tmp_path):
    paths, _ = fixture_shards
    work = tmp_path / "scratch"
    report = run(paths, tiny_tokenizer, tmp_path / "w", work_dir=str(work), keep_work_dir=True)
    names = sorted(os.listdir(work))
    assert "plan.json" in names
    assert len([n for n in names if n.endswith(".done.json")]) == report.units


def test_progress_bar_shows_documents_and_tokens_per_second(fixture_shards, tiny_tokenizer,
                                                            tmp_path, capsys):
    paths, _ = fixture_shards
    run(paths, tiny_tokenizer, tmp_path / "p", progress=True)
    err = capsys.readouterr().err
    assert "docs/s" in err and "tokens/s" in err and "units 4/4" in err


def test_bad_configuration_is_rejected_with_the_value(fixture_shards, tiny_tokenizer, tmp_path):
    paths, _ = fixture_shards
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        run(paths, tiny_tokenizer, tmp_path / "x", workers=0)
    with pytest.raises(ValueError, match="max_docs"):
        run(paths, tiny_tokenizer, tmp_path / "x", max_docs=0)
    with pytest.raises(ValueError, match="no-such.model"):
        run(paths, str(tmp_path / "no-such.model"), tmp_path / "x")
    with pytest.raises(ValueError, match="matches no files"):
        run([str(tmp_path / "missing-*.json.gz")], tiny_tokenizer, tmp_path / "x")


def test_token_dtype_follows_megatron_rule():
    assert token_dtype(32000) == np.uint16
    assert token_dtype(65499) == np.uint16
    assert token_dtype(65500) == np.int32
    assert token_dtype(128256) == np.int32


def test_output_feeds_megatron_gpt_dataset(fixture_shards, tiny_tokenizer, tmp_path):
    """What training reads: megatron-core's GPTDataset over our files, with megatron-core's
    SentencePiece tokenizer wrapper agreeing that our EOD is the eos id."""
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import Split
    from megatron.core.tokenizers import MegatronTokenizer

    paths, _ = fixture_shards
    report = run(paths, tiny_tokenizer, tmp_path / "g", append_eod=True)
    indexed = read_dataset(report.dataset_prefix)
    tokenizer = MegatronTokenizer.from_pretrained(
        tokenizer_path=tiny_tokenizer, metadata_path={"library": "sentencepiece"})
    assert tokenizer.eod == 2 and tokenizer.vocab_size == 600
    config = GPTDatasetConfig(
        random_seed=1, sequence_length=16, split="1,0,0", tokenizer=tokenizer,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask=False,
    )
    dataset = GPTDataset(indexed, report.dataset_prefix, np.arange(len(indexed)), 20,
                         Split.train, config)
    stream = np.concatenate([indexed[i] for i in range(len(indexed))]).tolist()
    text = "," + ",".join(map(str, stream)) + ","
    for i in range(3):
        sample = dataset[i]
        window = np.concatenate([sample["tokens"].numpy(), sample["labels"].numpy()[-1:]])
        assert len(window) == 17
        # every sample is a window of documents in some shuffled order; its parts are ours
        pieces = ",".join(map(str, window.tolist())).split(",2,")
        assert all(f",{piece.strip(',')}," in text for piece in pieces if piece.strip(","))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=80), min_size=1, max_size=12))
def test_any_text_round_trips_through_the_pipeline(tiny_tokenizer, sp, tmp_path_factory, texts):
    folder = tmp_path_factory.mktemp("prop")
    shard = write_jsonl(str(folder / "p.jsonl.gz"), c4_rows(texts))
    want = expected_documents(sp, texts, eod=True)
    if not want:
        with pytest.raises(ValueError, match="no documents"):
            run([shard], tiny_tokenizer, folder / "o", append_eod=True)
        return
    report = run([shard], tiny_tokenizer, folder / "o", append_eod=True)
    ds = read_dataset(report.dataset_prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == want
    assert report.empty_documents == len(texts) - len(want)


def test_interrupting_the_pool_stops_workers_and_a_rerun_finishes(
        fixture_shards, tiny_tokenizer, tmp_path, monkeypatch):
    import multiprocessing

    from megatron_csl.data.preprocess import pipeline

    paths, _ = fixture_shards
    real_done = pipeline._ProgressBar.unit_done

    def interrupt_after_first(self, stats):
        real_done(self, stats)
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM via the CLI) while other units run

    monkeypatch.setattr(pipeline._ProgressBar, "unit_done", interrupt_after_first)
    before = set(multiprocessing.active_children())
    with pytest.raises(KeyboardInterrupt):
        run(paths, tiny_tokenizer, tmp_path / "i", workers=2)
    assert set(multiprocessing.active_children()) - before == set()  # pool terminated and joined
    work = tmp_path / "i_text_document.work"
    assert len([n for n in os.listdir(work) if n.endswith(".done.json")]) >= 1
    assert not os.path.exists(str(tmp_path / "i_text_document.idx"))
    monkeypatch.setattr(pipeline._ProgressBar, "unit_done", real_done)
    report = run(paths, tiny_tokenizer, tmp_path / "i", workers=2)
    assert report.units_resumed >= 1 and report.documents == 48


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.integers(1, 6), max_size=5), max_size=4))
def test_batched_add_documents_equals_one_call_per_document(tmp_path_factory, batches):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    folder = tmp_path_factory.mktemp("b")
    one, many = (IndexedDatasetBuilder(str(folder / f"{n}.bin"), dtype=np.uint16)
                 for n in ("one", "many"))
    token = 0
    for lengths in batches:
        tokens = np.arange(token, token + sum(lengths), dtype=np.uint16)
        token += sum(lengths)
        worker_module.add_documents(many, tokens, np.array(lengths, dtype=np.int64))
        for start, length in zip(np.cumsum([0] + lengths[:-1]), lengths):
            one.add_document(tokens[start:start + length], [length])
    for name, builder in (("one", one), ("many", many)):
        builder.finalize(str(folder / f"{name}.idx"))
    for suffix in (".bin", ".idx"):
        assert (folder / f"one{suffix}").read_bytes() == (folder / f"many{suffix}").read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_gzip_corrupt_mid_stream_fails_naming_the_shard(fixture_shards, tiny_tokenizer, tmp_path,
                                                        workers):
    from .conftest import write_gzip_corrupt_mid_stream

    paths, texts = fixture_shards
    bad = write_gzip_corrupt_mid_stream(tmp_path / "c4-train.00009-of-00010.json.gz",
                                        c4_rows(texts * 20), good=len(texts) * 10)
    # A ShardReadError (it crosses the worker pool), not "MaybeEncodingError: Can't pickle
    # IsalError".
    with pytest.raises(ShardReadError, match=r"c4-train\.00009-of-00010\.json\.gz.*corrupt"):
        run(paths[:1] + [bad], tiny_tokenizer, tmp_path / "c", workers=workers)
    assert not os.path.exists(str(tmp_path / "c_text_document.idx"))
