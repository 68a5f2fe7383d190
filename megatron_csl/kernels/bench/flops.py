"""Model FLOPs of one training step, as the MFU of issue 10 defines them.

MFU = (6 (N + V d) T + 6 L s d T) / (step time x measured bf16 matmul rate), with N the
non-embedding parameters, V d the (untied) output layer, T the tokens of the step, and
6 L s d per token the causal attention matmuls (QK^T and AV, 2 L s d forward per token after
halving for causality, x3 for forward + backward). The embedding lookup costs no matmul FLOPs.
This reproduces the anchors of the GPU note: 308M Llama, vocab 32000, seq 2048, 172k tokens/s
at 750 TFLOP/s -> 54.0%.
"""
from __future__ import annotations


def step_flops(shape, vocab_size: int, seq_length: int, tokens: int) -> float:
    """FLOPs of one forward + backward over `tokens` tokens (sequences of `seq_length`)."""
    from megatron_csl.model import count_parameters

    counts = count_parameters(shape, vocab_size)
    dense = 6.0 * (counts.non_embedding + counts.output_layer) * tokens
    attention = 6.0 * shape.num_layers * seq_length * shape.hidden_size * tokens
    return dense + attention


def mfu(flops: float, seconds: float, rate: float) -> float:
    """Fraction of the measured matmul rate that `flops` in `seconds` achieve."""
    if seconds <= 0 or rate <= 0:
        raise ValueError(f"seconds and rate must be positive, got {seconds}, {rate}")
    return flops / seconds / rate
