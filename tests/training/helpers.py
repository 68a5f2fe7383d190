"""Shared helpers for the training tests: tiny indexed datasets and run arguments."""
import numpy
import torch

TINY_MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
              "--ffn-hidden-size", "128", "--seq-length", "32"]


def write_indexed_dataset(prefix, documents, dtype=numpy.uint16):
    """A Megatron indexed dataset (PREFIX.bin/.idx) written by megatron-core's own builder."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=dtype)
    for doc in documents:
        builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
    builder.finalize(str(prefix) + ".idx")
    return str(prefix)


def random_documents(n_docs, vocab, seed=0, min_len=5, max_len=80):
    rng = numpy.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(min_len, max_len))).tolist()
            for _ in range(n_docs)]


def tool_env():
    """Environment for a tool run as a subprocess: one torch thread, no warnings, and no
    torchrun rank variables inherited from the test process."""
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env
