#!/usr/bin/env python3
"""Training-step benchmark: step time, tokens/s and MFU of dense and compressed formats.

    python tools/bench_step.py                      # the issue's table on a GPU (308M Llama, bf16)
    python tools/bench_step.py --attention megatron,sdpa --micro-batch 2 --formats dense,w4
    python tools/bench_step.py --cpu-smoke          # tiny shapes on a CPU (exercises the code)

Beside the project's rows it times a plain PyTorch Llama of the same shape (SDPA attention),
eager and torch.compile'd (--plain), and prints every ratio: project dense vs plain eager and
vs plain compiled, each format vs project dense, with issue 15's targets at its shapes.

See docs/performance.md. The library code is megatron_csl.kernels.bench.step.
"""
import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _csv(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--formats", type=_csv, default=None,
                   help="comma-separated compression specs (default: dense,w4,w4a4,w2a2,s50,"
                        "s50:tensor,s50:nm2/4,s50:nm64/128,s50+w4,fp8)")
    p.add_argument("--attention", type=_csv, default=None,
                   help="core attention(s), comma-separated: sdpa (flash attention via "
                        "torch SDPA) and/or megatron (megatron's DotProductAttention) "
                        "(default: sdpa)")
    p.add_argument("--layers", type=int, help="number of layers (default 24; smoke 2)")
    p.add_argument("--hidden", type=int, help="hidden size (default 1024; smoke 128)")
    p.add_argument("--heads", type=int, help="attention heads (default 16; smoke 4)")
    p.add_argument("--ffn", type=int, help="FFN hidden size (default 2816; smoke 384)")
    p.add_argument("--seq", type=int, help="sequence length (default 2048; smoke 64)")
    p.add_argument("--micro-batch", type=int, help="micro-batch size (default 8; smoke 2)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default 32000; smoke 256)")
    p.add_argument("--steps", type=int, help="timed steps (default 10; smoke 2)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps (default 3; smoke 1)")
    p.add_argument("--matmul-n", type=int,
                   help="size of the n^3 matmul that measures the FLOP rate (default 8192)")
    p.add_argument("--fp32", action="store_true", help="fp32 instead of bf16 (always on CPU)")
    p.add_argument("--no-kernels", action="store_true",
                   help="run the compression formats on the PyTorch reference, not Triton")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny model on the CPU, fp32 (checks that everything runs)")
    p.add_argument("--plain", type=_csv, default=None,
                   help="plain PyTorch Llama rows of the same shape (SDPA): eager and/or "
                        "compiled (torch.compile), or none (default: eager,compiled)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the 'plain compiled' row")
    p.add_argument("--micro-batches", type=int,
                   help="micro-batches per optimizer step (default 1)")
    p.add_argument("--transformer-impl", choices=("local", "te"), default="local",
                   help="the project's layers: megatron-core local spec or Transformer Engine")
    p.add_argument("--fp8-rows", type=_csv, default=None, metavar="FORMAT:RECIPE,...",
                   help="extra dense rows trained with TE's FP8 GEMMs (needs --transformer-impl "
                        "te), e.g. hybrid:delayed,hybrid:tensorwise,e4m3:delayed")
    p.add_argument("--dense-options", type=_csv, default=None, metavar="OPTION,...",
                   help="extra rows of the project's dense model with its speed options: "
                        "compile (torch.compile of norms and SwiGLU, --compile-backend), liger "
                        "(liger-kernel's RMSNorm, SwiGLU, cross-entropy; CUDA), compile+liger")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (atomically)")
    args = p.parse_args(argv)
    for name in ("layers", "hidden", "heads", "ffn", "seq", "micro_batch", "vocab", "steps",
                 "matmul_n", "micro_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch

    from megatron_csl.compression import SpecError, parse_spec
    from megatron_csl.kernels.bench import step as bench

    formats = args.formats or list(bench.DEFAULT_FORMATS)
    attentions = args.attention or ["sdpa"]
    try:
        for fmt in formats:
            parse_spec(fmt)
    except SpecError as err:
        print(f"error: --formats: {err}", file=sys.stderr)
        return 2
    plain = args.plain if args.plain is not None else ["eager", "compiled"]
    plain = [] if plain == ["none"] else plain
    bad = [m for m in plain if m not in ("eager", "compiled")]
    if bad:
        print(f"error: --plain must be eager and/or compiled, or none, got {bad[0]!r}",
              file=sys.stderr)
        return 2
    bad = [a for a in attentions if a not in ("sdpa", "megatron")]
    if bad:
        print(f"error: --attention must be sdpa and/or megatron, got {bad[0]!r}", file=sys.stderr)
        return 2
    from megatron_csl.layers.fp8 import check_fp8

    fp8_rows = []
    for item in args.fp8_rows or []:
        fmt, _, recipe = item.partition(":")
        try:
            check_fp8(fmt, recipe or "delayed", args.transformer_impl)
        except ValueError as err:
            print(f"error: --fp8-rows {item!r}: {err}", file=sys.stderr)
            return 2
        fp8_rows.append((fmt, recipe or "delayed"))
    dense_options = args.dense_options or []
    for option in dense_options:
        try:
            bench.parse_dense_option(option)
        except ValueError as err:
            print(f"error: --dense-options: {err}", file=sys.stderr)
            return 2
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("no CUDA device: running the CPU smoke configuration (use --cpu-smoke to say so)",
              file=sys.stderr)
    overrides = {k: v for k, v in dict(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
        ffn_hidden_size=args.ffn, seq_length=args.seq, micro_batch_size=args.micro_batch,
        vocab_size=args.vocab, steps=args.steps, warmup=args.warmup,
        matmul_n=args.matmul_n, micro_batches=args.micro_batches).items() if v is not None}
    overrides["impl"] = args.transformer_impl
    if args.no_kernels:  # otherwise MEGATRON_CSL_KERNELS decides (1, 0 or check)
        overrides["kernels"] = False
    if cuda:
        overrides["bf16"] = not args.fp32
        cfg = bench.StepBenchConfig(**overrides)
    else:
        cfg = bench.StepBenchConfig.cpu_smoke(**overrides)
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    def write_json(results, rate):
        # after every row, atomically: a run cut short by a time limit keeps its figures
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(bench.results_as_dicts(results, cfg, rate), f, indent=1)
        os.replace(tmp, args.json)

    results, rate = bench.run_step_bench(formats, attentions, cfg,
                                         progress=lambda m: print(m, file=sys.stderr,
                                                                  flush=True),
                                         plain=plain, compile_backend=args.compile_backend,
                                         fp8_rows=fp8_rows, dense_options=dense_options,
                                         on_result=write_json if args.json else None)
    print(bench.format_step_table(results, cfg, rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
