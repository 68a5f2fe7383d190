"""C4-format shards -> Megatron indexed dataset (``{prefix}_text_document.bin/.idx``).

See ``pipeline.preprocess`` (the job), ``plan`` (work units), ``worker`` (one unit),
``output`` (naming, dtype, the final merge), and docs/data.md for the command line.
"""
from megatron_csl.data.c4_shards import MalformedLineError, ShardReadError
from megatron_csl.data.preprocess.pipeline import (
    PreprocessConfig, PreprocessReport, PreprocessStateError, preprocess,
)

__all__ = [
    "MalformedLineError", "PreprocessConfig", "PreprocessReport", "PreprocessStateError",
    "ShardReadError", "preprocess",
]
