"""The batch-size and token-budget rules, shared by the run planner and the sweep matrix.

A global batch is a whole number of micro-batches on every data-parallel rank; a token budget
becomes whole optimizer steps, rounded up so the run trains on at least the budget.
"""
import math
from typing import Optional, Tuple


class BudgetError(ValueError):
    """A batch size or budget that cannot work; the message names the values."""


def global_batch_size(requested: Optional[int], micro_batch_size: int, dp: int,
                      names=("global_batch_size", "micro_batch_size")) -> int:
    """The global batch (default one micro-batch per data-parallel rank); BudgetError unless it
    is a multiple of micro-batch x data-parallel size. ``names``: how the message names the two
    settings (sweep keys or command-line flags)."""
    unit = micro_batch_size * dp
    gbs = unit if requested is None else requested
    if gbs % unit:
        valid = [unit * k for k in range(1, 5)]
        raise BudgetError(f"{names[0]} {gbs} is not divisible by {names[1]} "
                          f"{micro_batch_size} x data-parallel size {dp} = {unit}; use a multiple "
                          f"of {unit} (e.g. {', '.join(map(str, valid))})")
    return gbs


def iterations_for_tokens(tokens: float, global_batch: int, seq_length: int) -> int:
    """Whole optimizer steps covering ``tokens`` (rounded up, at least 1)."""
    return max(1, math.ceil(tokens / (global_batch * seq_length)))


def token_budget(n_params: int, tokens_per_param: float, global_batch: int,
                 seq_length: int) -> Tuple[int, int]:
    """(train_iters, tokens) for D = tokens_per_param x N."""
    iters = iterations_for_tokens(tokens_per_param * n_params, global_batch, seq_length)
    return iters, iters * global_batch * seq_length


def train_iters(*, n_params: int, global_batch: int, seq_length: int,
                train_iters: Optional[int] = None, train_samples: Optional[int] = None,
                train_tokens: Optional[int] = None,
                tokens_per_param: Optional[float] = None) -> int:
    """Iterations from exactly one of the four budget forms."""
    if train_iters is not None:
        return train_iters
    if train_samples is not None:
        return max(1, math.ceil(train_samples / global_batch))
    if train_tokens is not None:
        return iterations_for_tokens(train_tokens, global_batch, seq_length)
    return token_budget(n_params, tokens_per_param, global_batch, seq_length)[0]
