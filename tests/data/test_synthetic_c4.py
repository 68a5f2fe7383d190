import gzip
import json
import os
import re

import pytest

from megatron_csl.data.synthetic_c4 import make_language, shard_documents, write_shards


@pytest.fixture(scope="module")
def language():
    return make_language()


@pytest.fixture(scope="module")
def documents(language):
    return [r["text"] for r in shard_documents(language, 0, "train", 0, 150)]


def read_rows(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_shards_are_c4_format_and_byte_identical_for_a_seed(tmp_path):
    a = write_shards(str(tmp_path / "a"), num_shards=2, docs_per_shard=20, seed=7)
    b = write_shards(str(tmp_path / "b"), num_shards=2, docs_per_shard=20, seed=7)
    c = write_shards(str(tmp_path / "c"), num_shards=2, docs_per_shard=20, seed=8)
    assert [os.path.basename(p) for p in a] == ["c4-train.00000-of-00002.json.gz",
                                                "c4-train.00001-of-00002.json.gz"]
    assert [open(p, "rb").read() for p in a] == [open(p, "rb").read() for p in b]
    assert open(a[0], "rb").read() != open(c[0], "rb").read()
    rows = read_rows(a[0])
    assert len(rows) == 20 and all(set(r) == {"text", "timestamp", "url"} for r in rows)
    assert read_rows(a[0]) != read_rows(a[1])  # shards hold different documents
    assert sorted(os.listdir(tmp_path / "a")) == [os.path.basename(p) for p in a]  # no temp files


def test_validation_split_differs_but_shares_the_language(tmp_path, language):
    train = read_rows(write_shards(str(tmp_path), 1, 30, split="train")[0])
    valid = read_rows(write_shards(str(tmp_path), 1, 30, split="validation")[0])
    assert {r["text"] for r in train}.isdisjoint({r["text"] for r in valid})
    names = set(language.names)
    assert {w for r in valid for w in re.findall(r"\b[A-Z]\w+", r["text"])} & names


def _check_people(doc, language):
    """Replay a document's facts: places and counts stated later must follow from earlier ones."""
    name = r"([A-Z][a-z]+)"
    place, count = {}, {}
    checked = 0
    for sentence in re.split(r"(?<=\.)\s+", doc.replace("\n", " ")):
        if m := re.fullmatch(name + r" lives in " + name + r" and keeps (\d+) \w+\.", sentence):
            place[m[1]], count[m[1]] = m[2], int(m[3])
        elif m := re.fullmatch(r"Later that \w+, " + name + r" went back to " + name + r"\.", sentence):
            assert place[m[1]] == m[2]; checked += 1
        elif m := re.fullmatch(name + r" still keeps (\d+) \w+\.", sentence):
            assert count[m[1]] == int(m[2]); checked += 1
        elif m := re.fullmatch(name + r" found (\d+) more \w+ and now keeps (\d+)\.", sentence):
            assert count[m[1]] + int(m[2]) == int(m[3]); checked += 1
            count[m[1]] = int(m[3])
        elif m := re.fullmatch(name + r" gave (\d+) \w+ to " + name + r", leaving \1 with (\d+) and "
                               + r"\3 with (\d+)\.", sentence):
            k = int(m[2])
            assert (count[m[1]] - k, count[m[3]] + k) == (int(m[4]), int(m[5])); checked += 1
            count[m[1]], count[m[3]] = int(m[4]), int(m[5])
        elif m := re.fullmatch(name + r" keeps (more|fewer) \w+ than " + name + r"\.", sentence):
            a, b = count[m[1]], count[m[3]]
            assert (a > b) if m[2] == "more" else (a < b); checked += 1
        elif m := re.fullmatch(name + r" keeps as many \w+ as " + name + r"\.", sentence):
            assert count[m[1]] == count[m[2]]; checked += 1
        elif m := re.fullmatch(r"[A-Z][\w ]+, " + name + r" stayed in " + name + r" with (\d+) \w+\.",
                               sentence):
            assert (place[m[1]], count[m[1]]) == (m[2], int(m[3])); checked += 1
        elif m := re.fullmatch(r"The \w+ were counted: ([\d, ]+)\.", sentence):
            terms = [int(x) for x in m[1].split(", ")]
            steps = {b - a for a, b in zip(terms, terms[1:])}
            assert len(terms) >= 4 and len(steps) == 1; checked += 1
    return checked


def test_long_range_facts_and_arithmetic_are_consistent(documents, language):
    checked = sum(_check_people(doc, language) for doc in documents)
    assert checked > 5 * len(documents)  # the structure is dense, not incidental


def test_subject_verb_agreement_skips_attractors_and_clauses(documents, language):
    singular, plural = set(language.nouns), {language.plural(i) for i in range(len(language.nouns))}
    verb_sg = {language.verb_form(i, False) for i in range(len(language.verbs))}
    verb_pl = {language.verb_form(i, True) for i in range(len(language.verbs))}
    pattern = re.compile(r"The \w+ (\w+)(?: (?:near|behind|under|beside|above|around) the \w+"
                         r"| that [A-Z][a-z]+ \w+)? (\w+) the \w+\.")
    seen = {"sg": 0, "pl": 0}
    for doc in documents:
        for head, verb in pattern.findall(doc):
            if verb in verb_sg | verb_pl:
                if head in plural:
                    assert verb in verb_pl; seen["pl"] += 1
                else:
                    assert head in singular and verb in verb_sg; seen["sg"] += 1
    assert seen["sg"] > 20 and seen["pl"] > 20


def test_documents_vary_in_topic_and_length(documents):
    lengths = [len(d.split()) for d in documents]
    assert min(lengths) < 100 < max(lengths)
    assert all("\n" in d for d in documents if len(d.split()) > 120)  # paragraphs


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split 'test'"):
        write_shards(str(tmp_path), split="test")
    with pytest.raises(ValueError, match="num_shards"):
        write_shards(str(tmp_path), num_shards=0)
