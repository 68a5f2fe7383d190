#!/usr/bin/env python3
"""Compression-kernel benchmark: time and GB/s of each Triton kernel vs the device's measured
copy bandwidth, next to the PyTorch reference (and whether both agree bit for bit).

    python tools/bench_kernels.py                                   # GPU, default shapes, bf16
    python tools/bench_kernels.py --dtype fp32 --weight-shapes 11008x4096 --only s50:tensor
    python tools/bench_kernels.py --cpu-smoke                       # Triton interpreter, tiny

See docs/performance.md. The library code is megatron_csl.kernels.bench.kernels.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _csv(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weight-shapes", type=_csv, default=None,
                   help="weight shapes ROWSxCOLS (default 11008x4096,2816x1024; smoke 64x256)")
    p.add_argument("--activation-shapes", type=_csv, default=None,
                   help="activation shapes TOKENSxHIDDEN (default 16384x1024,16384x2816; "
                        "smoke 32x256)")
    p.add_argument("--dtype", choices=("bf16", "fp32", "fp16"), default=None,
                   help="tensor dtype (default bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--only", type=_csv, default=None,
                   help="only these specs, e.g. w4,s50:tensor (default: all cases)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (default 20; smoke 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (default 3; smoke 0)")
    p.add_argument("--copy-mib", type=int, default=None,
                   help="size of the copy that measures the bandwidth (default 1024; smoke 16)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny shapes on the CPU through the Triton interpreter (checks the code)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (atomically)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from megatron_csl.kernels.bench import kernels as bench

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    try:
        weight_shapes = [bench.parse_shape(s) for s in
                         (args.weight_shapes or (["11008x4096", "2816x1024"] if cuda
                                                 else ["64x256"]))]
        activation_shapes = [bench.parse_shape(s) for s in
                             (args.activation_shapes or (["16384x1024", "16384x2816"] if cuda
                                                         else ["32x256"]))]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cases = bench.CASES
    if args.only:
        known = {c[1] for c in cases}
        unknown = [s for s in args.only if s not in known]
        if unknown:
            print(f"error: --only: unknown case {unknown[0]!r}; valid: {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
        cases = tuple(c for c in cases if c[1] in args.only)
    for name in ("iters", "copy_mib"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if not cuda:
        # Kernels on CPU tensors need Triton's interpreter, chosen before the kernels compile.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[
        args.dtype or ("bf16" if cuda else "fp32")]
    device = torch.device("cuda" if cuda else "cpu")
    results, bandwidth = bench.run_kernel_bench(
        weight_shapes, activation_shapes, dtype, device,
        copy_bytes=(args.copy_mib or (1024 if cuda else 16)) * 2 ** 20,
        warmup=args.warmup if args.warmup is not None else (3 if cuda else 0),
        iters=args.iters or (20 if cuda else 1), cases=cases,
        progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(bench.format_kernel_table(results, bandwidth, device))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(bench.results_as_dicts(results, bandwidth), f, indent=1)
        os.replace(tmp, args.json)
    return 0 if all(r.equal is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
