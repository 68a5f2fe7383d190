"""Pretraining: flags and config files, run plan, data, optimizer, checkpoints, the loop.

``run_pretrain(argv)`` runs one job on this rank and returns its exit code; ``launch/pretrain.py``
is the command-line wrapper that torchrun or srun starts.
"""
from .errors import ConfigError, DivergenceError, PretrainError
from .signals import REQUEUE_EXIT_CODE


def run_pretrain(argv=None) -> int:
    from .loop import run_pretrain as _run

    return _run(argv)


__all__ = ["run_pretrain", "REQUEUE_EXIT_CODE", "PretrainError", "ConfigError", "DivergenceError"]
