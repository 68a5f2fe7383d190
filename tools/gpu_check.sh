#!/usr/bin/env bash
# Every GPU-only check and measurement of issue 15 in ONE call (under 9 minutes), each step under
# its own time limit; a failing step never stops the others, and the summary counts failures.
#
#   tests        every test that needs CUDA (compiled Triton kernels == PyTorch reference, CPU ==
#                CUDA compression, no host sync in the compression path, weight cache, TE fp8,
#                int8 GEMM, SDPA attention) and the kernel tests on compiled kernels; no -x
#   kernels      tools/bench_kernels.py: each kernel's time and % of the measured copy bandwidth
#   step_308m    tools/bench_step.py at 308M (24x1024, FFN 2816, micro-batch 8), every format,
#                beside plain PyTorch (SDPA) eager and torch.compile'd, every ratio; the project's
#                dense step also with its speed options (--dense-options compile,liger)
#   step_1b      tools/bench_step.py at 1.23B (24x2048, FFN 5632, micro-batch 4): dense, w4a4,
#                w8a8 (int8 GEMM), fp8, with the plain rows and the dense speed options
#   te           Transformer Engine spec (--transformer-impl te), bf16 and FP8 (hybrid, delayed
#                and current scaling) at 1.23B, if transformer_engine imports (skipped otherwise)
#   demo_size    the GPU demo's largest model (10m, seq 512, micro-batch 32) tokens/s, and the
#                tokens_per_param at which `make demo GPU=1` trains in 8 of its 9 minutes
#   pretrain     tools/gpu_pretrain_check.py: NCCL, bf16, distributed optimizer, stop + resume
#
# Usage: bash tools/gpu_check.sh [--help] [--cpu-smoke]
#   OUT=DIR       where results go (default /tmp/gpu_check): gpu_check.log (everything printed),
#                 summary.txt (one line per step: ok / FAILED / TIMEOUT / skipped, seconds, and a
#                 last line with the number of failed steps), tests.txt, kernels.json, step.json,
#                 step_1b.json, te.json, demo_rate.json, demo_size.txt, pretrain.txt
#   PYTHON=EXE    the interpreter (default python3); it must import torch with CUDA
#   --cpu-smoke   run every step tiny on a CPU (checks the script itself, not the GPU)
#
# megatron-core: the GPU image has torch but not megatron-core. Put its wheel (and those of
# tabulate, hypothesis, sortedcontainers, pytest-timeout) into the git-ignored .whl/ folder of the
# checkout, e.g. on a machine with network access:
#     python3 -m pip download --no-deps --python-version 3.12 --only-binary=:all: -d .whl \
#         megatron-core==0.16.1 tabulate==0.10.0 hypothesis==6.170.15 sortedcontainers==2.4.0 \
#         pytest-timeout==2.4.0 liger-kernel==0.8.5
# (liger-kernel: the `liger` rows; without it they say "unavailable".)
# The script installs .whl/*.whl into /tmp/site (no network, no dependencies) before it starts.
# Exit status: 0 when every step passed, 1 when any failed, 2 when it could not start.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

SMOKE_MODE=0
for arg in "$@"; do
    case $arg in
        -h|--help) usage; exit 0 ;;
        --cpu-smoke) SMOKE_MODE=1 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (valid: --help, --cpu-smoke)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check.sh: '$PY' cannot import torch; set PYTHON to an interpreter with torch and CUDA" >&2
    exit 2
fi
if [ "$SMOKE_MODE" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible to '$PY' (torch.cuda.is_available() is False):" \
         "nothing measured. Run it on a GPU machine, or --cpu-smoke to check the script itself." >&2
    exit 2
fi

OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS="ignore:Transformer Engine and Apex are not installed"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import liger_kernel" 2>/dev/null; then
    echo "note: liger-kernel is not installed (no .whl/liger_kernel-*.whl): the 'dense +liger'" \
         "rows will say unavailable" | tee -a "$OUT/gpu_check.log"
fi

if [ "$SMOKE_MODE" = 1 ]; then
    SMOKE=(--cpu-smoke)
    SHAPE_308M=(--formats dense,w4a4,s50:nm2/4)
    SHAPE_1B=()
    PRETRAIN=(--iters 4)
    PLAIN=(--plain eager,compiled --compile-backend aot_eager)
    DENSE_OPTIONS=(--dense-options compile,liger)
    DEMO_SHAPE=(--cpu-smoke --steps 1 --warmup 0)
    DEMO_LIMIT=120
    TESTS=(tests/kernels/test_bench_step_setup.py tests/compression/test_gpu.py)
    echo "device: CPU (--cpu-smoke: checks the script, measures nothing)" | tee -a "$OUT/gpu_check.log"
else
    SMOKE=()
    SHAPE_308M=(--warmup 2 --steps 6)
    SHAPE_1B=(--layers 24 --hidden 2048 --heads 16 --ffn 5632 --micro-batch 4 --warmup 2 --steps 5)
    PRETRAIN=()
    PLAIN=(--plain eager,compiled)
    DENSE_OPTIONS=(--dense-options compile,liger)
    DEMO_SHAPE=(--layers 6 --hidden 384 --heads 6 --ffn 1024 --vocab 4096 --seq 512
                --micro-batch 32 --warmup 2 --steps 5)
    DEMO_LIMIT=20
    TESTS=(tests/kernels tests/compression/test_gpu.py tests/layers/test_te_layers.py
           tests/layers/test_weight_cache.py tests/layers/test_te_fp8.py tests/layers/test_fused.py)
    "$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" \
        | tee -a "$OUT/gpu_check.log"
fi

FAILED=0
# step NAME SECONDS OUTPUT_FILE COMMAND...: run under a time limit, keep going on failure.
step() {
    local name=$1 limit=$2 out=$3 start status
    shift 3
    echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/gpu_check.log"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > >(tee -a "$OUT/gpu_check.log" > "$OUT/$out") 2>&1
    case $? in
        0) status=ok ;;
        124|137) status=TIMEOUT; FAILED=$((FAILED + 1)) ;;
        *) status=FAILED; FAILED=$((FAILED + 1)) ;;
    esac
    echo "$name: $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt" "$OUT/gpu_check.log"
}

# Limits add up to 540 s (505 s without TE).
step tests 120 tests.txt \
    "$PY" -m pytest -q -p no:cacheprovider -m "not slow and not slurm" "${TESTS[@]}"
step kernels 25 kernels.txt "$PY" tools/bench_kernels.py "${SMOKE[@]}" --json "$OUT/kernels.json"
step step_308m 160 step.txt "$PY" tools/bench_step.py "${SMOKE[@]}" "${SHAPE_308M[@]}" \
    "${PLAIN[@]}" "${DENSE_OPTIONS[@]}" --json "$OUT/step.json"
step step_1b 130 step_1b.txt "$PY" tools/bench_step.py "${SMOKE[@]}" "${SHAPE_1B[@]}" \
    --formats dense,w4a4,w8a8,fp8 "${PLAIN[@]}" "${DENSE_OPTIONS[@]}" --json "$OUT/step_1b.json"
if "$PY" -c "import transformer_engine.pytorch" 2>/dev/null && [ "$SMOKE_MODE" = 0 ]; then
    step te 35 te.txt "$PY" tools/bench_step.py "${SHAPE_1B[@]}" --transformer-impl te \
        --attention megatron --formats dense --fp8-rows hybrid:delayed,hybrid:tensorwise,e4m3:delayed --plain none \
        --json "$OUT/te.json"
else
    echo "te: skipped (transformer_engine does not import)" | tee -a "$OUT/summary.txt" "$OUT/gpu_check.log"
fi
# make demo GPU=1 sized from a measured speed: the demo's largest model (10m) at its settings.
step demo_size "$DEMO_LIMIT" demo_size.txt bash -c "\"\$0\" tools/bench_step.py ${DEMO_SHAPE[*]} \
    --formats dense --plain none --json '$OUT/demo_rate.json' \
    && \"\$0\" -m megatron_csl.demo_sizing --from-json '$OUT/demo_rate.json'" "$PY"
step pretrain 50 pretrain.txt "$PY" tools/gpu_pretrain_check.py --work /tmp/gpu_pretrain "${PRETRAIN[@]}"
echo "failed steps: $FAILED" | tee -a "$OUT/summary.txt" "$OUT/gpu_check.log"
echo "=== done; results in $OUT" | tee -a "$OUT/gpu_check.log"
[ "$FAILED" = 0 ]
