"""The names of the files in a run directory and a checkpoint directory: one home for all packages.

A run directory (``--run-dir``, default the ``--save`` directory) holds the run records; a
checkpoint directory (``--save``, default ``RUN_DIR/checkpoints``) holds checkpoints in
Megatron-LM's layout, so Megatron-LM's own tools read them::

    RUN_DIR/run.json  metrics.jsonl  result.json  tensorboard/
    SAVE_DIR/iter_0000100/  latest_checkpointed_iteration.txt

Run directories written before the Megatron-LM layout named the tracker ``latest``; it is still
read (``LATEST_FILES``), never written.
"""
import re

RUN_JSON = "run.json"
METRICS_JSONL = "metrics.jsonl"
RESULT_JSON = "result.json"
TENSORBOARD_DIR = "tensorboard"
DATA_CACHE_DIR = "data_cache"
CHECKPOINTS_DIR = "checkpoints"           # the default checkpoint directory inside RUN_DIR
# format_version of a checkpoint's common state (megatron_csl.training.checkpointing): 1 with this
# project's own RNG layout, 2 with Megatron-LM's RNG layout and args. The last one is written.
CHECKPOINT_FORMAT_VERSIONS = (1, 2)

LATEST_FILE = "latest_checkpointed_iteration.txt"   # Megatron-LM's tracker file
LEGACY_LATEST_FILE = "latest"                       # written by megatron-csl before config v2
LATEST_FILES = (LATEST_FILE, LEGACY_LATEST_FILE)    # read in this order

ITER_RE = re.compile(r"^iter_(\d{7,})$")


def checkpoint_dirname(step: int) -> str:
    """Megatron-LM's name of the checkpoint of iteration ``step``: ``iter_0000100``."""
    return f"iter_{step:07d}"
