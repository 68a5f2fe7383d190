"""Step time of one model with megatron's core attention against SDPAttention, interleaved.

    python -m megatron_csl.kernels.bench.attention --seq 1024 --micro-batch 2

Both models are built from the same seed (they have the same parameters) and trained with torch
AdamW. Their steps alternate (A B, B A, ...), so machine load that comes and goes hits both
alike: on a shared CPU the comparison stays fair where back-to-back runs would not. Medians of
the timed steps. Works on a CPU (fp32) and on a GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from .timing import synchronize


def compare_attention(shape, *, seq_length: int, micro_batch: int, vocab_size: int = 256,
                      steps: int = 8, warmup: int = 2, device=torch.device("cpu")) -> dict:
    """{"megatron": [seconds per step], "sdpa": [...]} (needs megatron's parallel state)."""
    from megatron_csl.model import build_gpt_model, llama_transformer_config

    config = llama_transformer_config(shape, use_cpu_initialization=device.type == "cpu")
    runs = {}
    for attention in ("megatron", "sdpa"):
        torch.manual_seed(0)
        model = build_gpt_model(config, vocab_size=vocab_size, seq_length=seq_length,
                                attention=attention).to(device)
        runs[attention] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size, (micro_batch, seq_length), generator=gen).to(device)
    positions = torch.arange(seq_length, device=device).expand(micro_batch, seq_length)

    def step(attention):
        model, optimizer = runs[attention]
        optimizer.zero_grad()
        model(tokens, positions, None, labels=tokens).mean().backward()
        optimizer.step()

    for attention in runs:
        for _ in range(warmup):
            step(attention)
    times = {attention: [] for attention in runs}
    for i in range(steps):
        for attention in (("megatron", "sdpa") if i % 2 == 0 else ("sdpa", "megatron")):
            synchronize(device)
            t0 = time.perf_counter()
            step(attention)
            synchronize(device)
            times[attention].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=768)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = p.parse_args(argv)
    from megatron_csl.compat import initialize_cpu_parallel
    from megatron_csl.model import ModelShape

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    initialize_cpu_parallel(1, 1, seed=0)
    shape = ModelShape(args.layers, args.hidden, args.heads, args.ffn)
    times = compare_attention(shape, seq_length=args.seq, micro_batch=args.micro_batch,
                              steps=args.steps, device=device)
    med = {a: statistics.median(t) for a, t in times.items()}
    print(f"{args.layers} layers x {args.hidden}, {args.heads} heads, seq {args.seq} x "
          f"micro-batch {args.micro_batch}, {device.type}, {torch.get_num_threads()} thread(s): "
          f"megatron {med['megatron'] * 1e3:.0f} ms, sdpa {med['sdpa'] * 1e3:.0f} ms per step "
          f"(median of {args.steps}), speed-up {med['megatron'] / med['sdpa']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
