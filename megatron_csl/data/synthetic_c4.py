"""Synthetic C4: shards of generated English-like text whose structure rewards model capacity.

Why: the demo and the tests need a corpus without downloads on which a larger model reaches a
lower loss than a smaller one, as on real text. Every document mixes regularities of increasing
difficulty:

- local statistics: a fixed lexicon of pseudo-words in classes (nouns, verbs, adjectives, names,
  places), and per-topic Zipf distributions over them (the topic is fixed per document, so
  inferring it early helps predict the rest);
- syntax: subject-verb number agreement across a relative clause or an attractor noun of the
  other number ("the red dogs near the cat *run*"), singular/plural nouns after numbers;
- long-range memory: each document has 2-4 people, each living in a place and keeping a count of
  the document's item; later sentences refer back to the place and the count;
- arithmetic: counts change by additions and transfers between people, and the sentence states
  the new totals (multi-digit addition and subtraction with carries), comparisons between two
  people's counts, and arithmetic progressions.

A ``Language`` (lexicon, topics, sentence-type transitions) is drawn from ``language_seed``; the
documents of a shard from ``(seed, split, shard index)``. Train and validation shards made with
the same language seed share one language. Output is byte-for-byte deterministic (gzip with
mtime 0) and written under a temporary name, then renamed.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import random
from dataclasses import dataclass, field
from typing import List, Sequence

from megatron_csl.atomic import atomic_write_bytes

SPLITS = ("train", "validation")

_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "z", "br", "dr", "gr", "kl", "pl", "st", "tr", "sh", "th", "ch"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
_CODAS = ["", "", "", "n", "l", "r", "m", "k", "t"]
_PREPOSITIONS = ["near", "behind", "under", "beside", "above", "around"]
_TIMES = ["morning", "evening", "winter", "summer", "spring", "night", "week"]
_CLOSERS = ["In the end", "At last", "By the evening", "After all that"]

# sentence types; a document walks a Markov chain over them
TYPES = ("filler", "agreement", "recall_place", "recall_count", "add", "give", "compare",
         "sequence")


@dataclass
class Topic:
    name: str
    nouns: List[int]
    verbs: List[int]
    adjectives: List[int]
    noun_weights: List[float]
    verb_weights: List[float]
    adjective_weights: List[float]
    items: List[int]  # nouns that people in this topic keep and count
    type_weights: List[float]


@dataclass
class Language:
    """The lexicon and grammar shared by every shard made with one language seed."""

    nouns: List[str]
    verbs: List[str]
    adjectives: List[str]
    names: List[str]
    places: List[str]
    topics: List[Topic]
    transitions: List[List[float]]  # P(next type | type), before topic reweighting

    def plural(self, noun: int) -> str:
        return _plural(self.nouns[noun])

    def noun_form(self, noun: int, count: int) -> str:
        return self.nouns[noun] if count == 1 else self.plural(noun)

    def verb_form(self, verb: int, plural_subject: bool) -> str:
        stem = self.verbs[verb]
        return stem if plural_subject else _plural(stem)

    def past(self, verb: int) -> str:
        stem = self.verbs[verb]
        return stem + "d" if stem.endswith("e") else stem + "ed"


def _plural(word: str) -> str:
    return word + "es" if word.endswith(("s", "sh", "ch", "z", "x")) else word + "s"


def _zipf(n: int, exponent: float = 1.1) -> List[float]:
    return [1.0 / (rank + 1) ** exponent for rank in range(n)]


def make_language(language_seed: int = 1234) -> Language:
    rng = random.Random(f"synthetic-c4-language:{language_seed}")
    used: set = set()

    def words(count: int, syllables: Sequence[int], capital: bool = False) -> List[str]:
        out: List[str] = []
        while len(out) < count:
            word = "".join(
                rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice(syllables))
            ) + rng.choice(_CODAS)
            # a word, its plural and its past form must not collide with another word
            forms = {word, _plural(word), word + "d", word + "ed"}
            if forms & used or len(word) < 3:
                continue
            used.update(forms)
            out.append(word.capitalize() if capital else word)
        return out

    nouns = words(600, (1, 2, 2, 3))
    verbs = words(300, (1, 2, 2))
    adjectives = words(200, (1, 2, 3))
    names = words(400, (2, 3), capital=True)
    places = words(150, (2, 3), capital=True)
    topics = []
    for t in range(24):
        topic_nouns = rng.sample(range(len(nouns)), 60)
        type_weights = [rng.uniform(0.3, 3.0) for _ in TYPES]
        topics.append(Topic(
            name=words(1, (2,))[0],
            nouns=topic_nouns,
            verbs=rng.sample(range(len(verbs)), 30),
            adjectives=rng.sample(range(len(adjectives)), 25),
            noun_weights=_zipf(60), verb_weights=_zipf(30), adjective_weights=_zipf(25),
            items=topic_nouns[:8],
            type_weights=type_weights,
        ))
    transitions = [[rng.uniform(0.2, 2.0) for _ in TYPES] for _ in TYPES]
    return Language(nouns, verbs, adjectives, names, places, topics, transitions)


@dataclass
class Person:
    name: str
    place: str
    count: int


@dataclass
class _Doc:
    language: Language
    topic: Topic
    rng: random.Random
    item: int
    people: List[Person]
    introduced: List[Person] = field(default_factory=list)

    # -- vocabulary draws from the topic's Zipf distributions
    def noun(self) -> int:
        return self.rng.choices(self.topic.nouns, self.topic.noun_weights)[0]

    def verb(self) -> int:
        return self.rng.choices(self.topic.verbs, self.topic.verb_weights)[0]

    def adjective(self) -> str:
        return self.language.adjectives[
            self.rng.choices(self.topic.adjectives, self.topic.adjective_weights)[0]]

    def items(self, count: int) -> str:
        return self.language.noun_form(self.item, count)


def _intro(d: _Doc, p: Person) -> str:
    d.introduced.append(p)
    return f"{p.name} lives in {p.place} and keeps {p.count} {d.items(p.count)}."


def _filler(d: _Doc) -> str:
    lang = d.language
    subject, obj = d.noun(), d.noun()
    return (f"The {d.adjective()} {lang.nouns[subject]} {lang.past(d.verb())} "
            f"{d.rng.choice(_PREPOSITIONS)} the {lang.plural(obj)}.")


def _agreement(d: _Doc) -> str:
    lang, rng = d.language, d.rng
    plural = rng.random() < 0.5
    head = lang.plural(d.noun()) if plural else lang.nouns[d.noun()]
    kind = rng.random()
    if kind < 0.4:  # attractor of the other number between subject and verb
        attractor = lang.nouns[d.noun()] if plural else lang.plural(d.noun())
        middle = f" {rng.choice(_PREPOSITIONS)} the {attractor}"
    elif kind < 0.8 and d.introduced:  # relative clause with a singular name as its subject
        middle = f" that {rng.choice(d.introduced).name} {lang.past(d.verb())}"
    else:
        middle = ""
    return (f"The {d.adjective()} {head}{middle} {lang.verb_form(d.verb(), plural)} "
            f"the {lang.plural(d.noun())}.")


def _recall_place(d: _Doc, p: Person) -> str:
    return f"Later that {d.rng.choice(_TIMES)}, {p.name} went back to {p.place}."


def _recall_count(d: _Doc, p: Person) -> str:
    return f"{p.name} still keeps {p.count} {d.items(p.count)}."


def _add(d: _Doc, p: Person) -> str:
    found = d.rng.randint(1, 60 if d.rng.random() < 0.8 else 600)
    p.count += found
    return f"{p.name} found {found} more {d.items(found)} and now keeps {p.count}."


def _give(d: _Doc, giver: Person, taker: Person) -> str:
    if giver.count == 0:
        return _recall_count(d, giver)
    amount = d.rng.randint(1, giver.count)
    giver.count -= amount
    taker.count += amount
    return (f"{giver.name} gave {amount} {d.items(amount)} to {taker.name}, leaving "
            f"{giver.name} with {giver.count} and {taker.name} with {taker.count}.")


def _compare(d: _Doc, a: Person, b: Person) -> str:
    plural = d.language.plural(d.item)
    if a.count == b.count:
        return f"{a.name} keeps as many {plural} as {b.name}."
    relation = "more" if a.count > b.count else "fewer"
    return f"{a.name} keeps {relation} {plural} than {b.name}."


def _sequence(d: _Doc) -> str:
    rng = d.rng
    start, step = rng.randint(1, 90), rng.randint(2, 25)
    terms = ", ".join(str(start + step * i) for i in range(rng.randint(4, 7)))
    return f"The {d.language.plural(d.noun())} were counted: {terms}."


def _closing(d: _Doc, p: Person) -> str:
    return (f"{d.rng.choice(_CLOSERS)}, {p.name} stayed in {p.place} with "
            f"{p.count} {d.items(p.count)}.")


def generate_document(language: Language, rng: random.Random) -> str:
    """One document (paragraphs separated by newlines)."""
    topic = rng.choice(language.topics)
    names = rng.sample(language.names, rng.randint(2, 4))
    people = [Person(n, rng.choice(language.places), rng.randint(0, 120)) for n in names]
    d = _Doc(language, topic, rng, rng.choice(topic.items), people)

    sentences = [_intro(d, people[0])]
    kind = rng.randrange(len(TYPES))
    for _ in range(rng.randint(6, 22)):
        weights = [a * b for a, b in zip(language.transitions[kind], topic.type_weights)]
        kind = rng.choices(range(len(TYPES)), weights)[0]
        name = TYPES[kind]
        if name in ("recall_place", "recall_count", "add", "give", "compare"):
            person = rng.choice(people)
            if person not in d.introduced:  # a person is introduced before anything else
                sentences.append(_intro(d, person))
                continue
            others = [q for q in d.introduced if q is not person]
            if name in ("give", "compare") and not others:
                sentences.append(_recall_count(d, person))
                continue
            if name == "give":
                sentences.append(_give(d, person, rng.choice(others)))
            elif name == "compare":
                sentences.append(_compare(d, person, rng.choice(others)))
            else:
                sentences.append({"recall_place": _recall_place, "recall_count": _recall_count,
                                  "add": _add}[name](d, person))
        elif name == "agreement":
            sentences.append(_agreement(d))
        elif name == "sequence":
            sentences.append(_sequence(d))
        else:
            sentences.append(_filler(d))
    sentences.append(_closing(d, rng.choice(d.introduced)))

    paragraphs, current = [], []
    for sentence in sentences:
        current.append(sentence)
        if len(current) >= rng.randint(3, 6):
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def shard_name(split: str, index: int, num_shards: int) -> str:
    """C4's naming: ``c4-train.00000-of-01024.json.gz``."""
    return f"c4-{split}.{index:05d}-of-{num_shards:05d}.json.gz"


def shard_documents(language: Language, seed: int, split: str, index: int, docs: int) -> List[dict]:
    rng = random.Random(f"synthetic-c4:{seed}:{split}:{index}")
    rows = []
    for i in range(docs):
        text = generate_document(language, rng)
        day, second = 1 + i % 28, (i * 7919) % 86400
        rows.append({
            "text": text,
            "timestamp": f"2019-04-{day:02d}T{second // 3600:02d}:{second // 60 % 60:02d}:"
                         f"{second % 60:02d}Z",
            "url": f"https://synthetic-c4.invalid/{split}/{index:05d}/{i}",
        })
    return rows


def write_shards(
    output_dir: str,
    num_shards: int = 4,
    docs_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    language_seed: int = 1234,
    progress: bool = False,
) -> List[str]:
    """Write ``num_shards`` gzip JSON Lines shards; returns their paths (in order)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not valid; choose one of {SPLITS}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    if docs_per_shard < 1:
        raise ValueError(f"docs_per_shard must be at least 1, got {docs_per_shard}")
    os.makedirs(output_dir, exist_ok=True)
    language = make_language(language_seed)
    indices = range(num_shards)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"synthetic {split} shards", unit="shard")
    paths = []
    for index in indices:
        rows = shard_documents(language, seed, split, index, docs_per_shard)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        buffer = io.BytesIO()
        # mtime=0 and no file name in the header: the same seed gives the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
            gz.write(lines)
        path = os.path.join(output_dir, shard_name(split, index, num_shards))
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def sample_text(docs: int = 2, seed: int = 0, language_seed: int = 1234) -> str:
    """A few documents, for a quick look (``make_synthetic_c4.py --show``)."""
    language = make_language(language_seed)
    rows = shard_documents(language, seed, "train", 0, docs)
    return "\n\n".join(r["text"] for r in rows)


__all__ = ["Language", "SPLITS", "TYPES", "generate_document",
           "make_language", "sample_text", "shard_documents", "shard_name", "write_shards"]
