"""Errors a training run stops with, each carrying the process exit code launchers read.

Exit codes (docs/interfaces.md): 0 finished, 1 error during training, 2 bad arguments or inputs,
3 preempted with a checkpoint saved (``signals.REQUEUE_EXIT_CODE``).
"""


class PretrainError(Exception):
    """A run cannot continue; the message says why. Exit code 1."""

    exit_code = 1


class ConfigError(PretrainError):
    """Bad flags, config file, data path or tokenizer: fix the command line. Exit code 2."""

    exit_code = 2


class DivergenceError(PretrainError):
    """Training loss became NaN or infinite. Exit code 1; earlier checkpoints are kept."""

    exit_code = 1
