"""Train a Llama-like SentencePiece tokenizer on a deterministic sample of C4-format shards.

Llama's tokenizer settings: byte fallback (no unknown characters), digits split one per piece,
identity normalization, whitespace kept as is, ids ``unk=0, bos=1, eos=2`` and no pad piece.
Preprocessing appends ``eos`` as the end-of-document (EOD) token.

The sample is fed to SentencePiece's trainer through ``sentence_iterator`` (one paragraph per
sentence, as SentencePiece's own one-line-per-sentence text files would give it), and the model
comes back through ``model_writer``; no temporary text file is ever written.
"""
from __future__ import annotations

import io
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, List, Optional, Sequence

import sentencepiece as spm

from megatron_csl.atomic import atomic_write_bytes, atomic_write_text
from megatron_csl.data.c4_shards import decode_batch, iter_line_batches

MODEL_TYPES = ("bpe", "unigram")

#: Special ids, as in Llama. ``eos`` doubles as the EOD token appended by preprocessing.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1

#: Trainer options shared by every model we train (Llama's trainer_spec, minus its file inputs).
LLAMA_LIKE_OPTIONS = dict(
    byte_fallback=True,
    split_digits=True,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    pad_id=PAD_ID,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    add_dummy_prefix=True,
    character_coverage=0.99995,
    split_by_unicode_script=True,
    split_by_number=True,
    split_by_whitespace=True,
    max_sentencepiece_length=16,
    # use every sampled sentence (the sample is already random and bounded by --sample-docs)
    input_sentence_size=0,
    shuffle_input_sentence=False,
)


@dataclass
class SampleStats:
    shards_read: List[str] = field(default_factory=list)
    documents: int = 0
    paragraphs: int = 0
    text_bytes: int = 0
    malformed_lines: int = 0
    too_long_paragraphs: int = 0


@dataclass
class TokenizerReport:
    model_path: str
    vocab_path: str
    vocab_size: int
    model_type: str
    seed: int
    seconds: float
    sample: SampleStats
    special_ids: dict

    def as_dict(self) -> dict:
        return asdict(self)


def sample_documents(
    paths: Sequence[str],
    sample_docs: int,
    seed: int = 0,
    sample_rate: float = 1.0,
    key: str = "text",
    stats: Optional[SampleStats] = None,
) -> Iterator[str]:
    """Up to ``sample_docs`` document texts, the same ones for the same seed.

    Shards are visited in an order shuffled by ``seed`` (so a sample of 1M documents from C4's
    1,024 shards comes from a few random shards, not always the first); each document is kept with
    probability ``sample_rate`` (drawn from the same seeded generator). C4 shards are already in
    random document order, so the default rate 1.0 (take documents as they come) is a fair sample.
    Malformed lines are skipped and counted in ``stats``.
    """
    if sample_docs <= 0:
        raise ValueError(f"sample_docs must be a positive number of documents, got {sample_docs}")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    stats = stats if stats is not None else SampleStats()
    rng = random.Random(seed)
    order = list(paths)
    rng.shuffle(order)
    for path in order:
        stats.shards_read.append(path)
        for batch in iter_line_batches(path):
            decoded = decode_batch(batch, key)
            stats.malformed_lines += len(decoded.malformed)
            for text in decoded.texts:
                if sample_rate < 1.0 and rng.random() >= sample_rate:
                    continue
                stats.documents += 1
                yield text
                if stats.documents >= sample_docs:
                    return


def training_sentences(
    documents: Iterable[str], max_sentence_bytes: int, stats: Optional[SampleStats] = None
) -> Iterator[str]:
    """Paragraphs of the documents, as SentencePiece expects one sentence per item.

    Paragraphs longer than ``max_sentence_bytes`` are skipped and counted (the trainer would drop
    them anyway, only less visibly).
    """
    stats = stats if stats is not None else SampleStats()
    for text in documents:
        for paragraph in text.split("\n"):
            if not paragraph:
                continue
            size = len(paragraph.encode("utf-8"))
            if size > max_sentence_bytes:
                stats.too_long_paragraphs += 1
                continue
            stats.paragraphs += 1
            stats.text_bytes += size
            yield paragraph


def train_tokenizer(
    paths: Sequence[str],
    output_prefix: str,
    vocab_size: int = 32000,
    model_type: str = "bpe",
    sample_docs: int = 1_000_000,
    seed: int = 0,
    sample_rate: float = 1.0,
    threads: Optional[int] = None,
    max_sentence_bytes: int = 16384,
    key: str = "text",
    progress: bool = True,
    log_level: int = 1,
) -> TokenizerReport:
    """Train and write ``{output_prefix}.model`` and ``{output_prefix}.vocab`` (atomically).

    ``log_level`` is SentencePiece's minloglevel (0 shows the trainer's INFO lines).
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported; choose one of {MODEL_TYPES}")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if threads is not None and threads <= 0:
        raise ValueError(f"threads must be positive, got {threads}")
    if not paths:
        raise ValueError("no input shards given")
    directory = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(directory, exist_ok=True)

    started = time.perf_counter()
    stats = SampleStats()
    docs: Iterable[str] = sample_documents(paths, sample_docs, seed, sample_rate, key, stats)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sample_docs, unit="doc", desc="sampling for the tokenizer")
        docs = _counted(docs, bar)
    # SentencePiece re-raises an exception from the iterator as a RuntimeError holding its text;
    # keep the original (e.g. ShardReadError naming the shard) and raise that instead.
    failure: List[BaseException] = []
    announce = None
    if progress:
        def announce():
            bar.close()
            print(f"training a {model_type} model of {vocab_size} pieces on {stats.paragraphs:,} "
                  f"paragraphs (--verbose shows SentencePiece's log)", file=sys.stderr, flush=True)
    sentences = _stop_on_error(training_sentences(docs, max_sentence_bytes, stats), failure,
                               announce)

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            num_threads=threads or os.cpu_count() or 1,
            max_sentence_length=max_sentence_bytes,
            minloglevel=log_level,
            **LLAMA_LIKE_OPTIONS,
        )
    except RuntimeError as e:
        if failure:
            raise failure[0] from e
        if stats.paragraphs == 0:
            raise ValueError(
                f"no text to train on: the sample from {len(stats.shards_read)} shard(s) had "
                f"{stats.documents} documents and {stats.malformed_lines} malformed lines"
            ) from e
        raise ValueError(
            f"SentencePiece could not train a {model_type} model with vocab_size={vocab_size} on "
            f"{stats.documents} documents ({stats.text_bytes} bytes): {e}"
        ) from e
    finally:
        if bar is not None:
            bar.close()

    if failure:
        raise failure[0]
    data = model.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=data)
    model_path, vocab_path = output_prefix + ".model", output_prefix + ".vocab"
    atomic_write_bytes(model_path, data)
    atomic_write_text(vocab_path, vocab_listing(processor))
    return TokenizerReport(
        model_path=model_path,
        vocab_path=vocab_path,
        vocab_size=processor.vocab_size(),
        model_type=model_type,
        seed=seed,
        seconds=time.perf_counter() - started,
        sample=stats,
        special_ids=dict(
            unk=processor.unk_id(), bos=processor.bos_id(), eos=processor.eos_id(),
            pad=processor.pad_id(),
        ),
    )


def _counted(items: Iterable[str], bar) -> Iterator[str]:
    """`items`, counted on the tqdm `bar`."""
    for item in items:
        bar.update(1)
        yield item
    # A corpus smaller than sample_docs ends the sample early: end the bar at 100% of what there
    # was, not at "1% 10033/1000000".
    bar.total = bar.n
    bar.refresh()


def _stop_on_error(items: Iterable[str], failure: List[BaseException], on_end=None) -> Iterator[str]:
    try:
        yield from items
    except Exception as e:  # noqa: BLE001 - re-raised by train_tokenizer
        failure.append(e)
        return
    if on_end is not None:
        on_end()


def vocab_listing(processor: spm.SentencePieceProcessor) -> str:
    """The ``piece<TAB>score`` listing SentencePiece writes as ``.vocab`` (for people to read)."""
    rows = (f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}" for i in range(processor.vocab_size()))
    return "\n".join(rows) + "\n"


def load_tokenizer(model_path: str) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model, with an error that names the path when it is not one."""
    if not os.path.isfile(model_path):
        raise ValueError(f"tokenizer model {model_path!r} does not exist")
    try:
        return spm.SentencePieceProcessor(model_file=model_path)
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{model_path!r} is not a SentencePiece model: {e}") from e
