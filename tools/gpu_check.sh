#!/usr/bin/env bash
# Every GPU-only check of the open work in ONE device call, most important first, each step under
# its own time limit, so that a session's 15 device-minutes (machine start included) cover it:
#
#   1. tests that need CUDA: compiled Triton kernels == PyTorch reference (bitwise for masks and
#      integer codes), CPU == CUDA compression, the tie rule, SDPA attention;     (#10, #3)
#   2. tools/bench_kernels.py: each kernel's time and GB/s against the copy bandwidth;   (#10)
#   3. tools/bench_step.py at the default 308M shape, every format, ratio to dense;        (#10)
#   4. tools/bench_step.py at the 1.23B shape, dense and fp8;                              (#10)
#   5. launch/pretrain.py on the GPU: NCCL, bf16, distributed optimizer, a resume that must
#      reproduce the uninterrupted losses;                                                  (#4)
#
# Prepare on the CPU machine (once per checkout):
#   ../shared/tools/device-wheels.sh tabulate==0.10.0 hypothesis==6.170.15 \
#       sortedcontainers==2.4.0 pytest-timeout==2.4.0
# Then with the device tool: run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Results come back under $OUT: gpu_check.log (everything printed), tests.txt, kernels.json,
# step.json, step_1b.json, pretrain.txt, summary.txt (one line per step: ok/FAILED/TIMEOUT, seconds).
#
# On a machine without CUDA it still runs (the tests skip, the benchmarks use --cpu-smoke), which
# is how the script itself is checked: `OUT=/tmp/gc bash tools/gpu_check.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS="ignore:Transformer Engine and Apex are not installed"
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    SMOKE=()
    SHAPE_1B=(--layers 24 --hidden 2048 --heads 16 --ffn 5632 --micro-batch 4)
    "$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" \
        | tee -a "$OUT/gpu_check.log"
else
    SMOKE=(--cpu-smoke)
    SHAPE_1B=()
    echo "device: no CUDA; benchmarks in --cpu-smoke mode" | tee -a "$OUT/gpu_check.log"
fi

# step NAME SECONDS OUTPUT_FILE COMMAND...: run under a time limit, keep going on failure.
step() {
    local name=$1 limit=$2 out=$3 start status
    shift 3
    echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/gpu_check.log"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > >(tee -a "$OUT/gpu_check.log" > "$OUT/$out") 2>&1
    case $? in
        0) status=ok ;;
        124|137) status=TIMEOUT ;;
        *) status=FAILED ;;
    esac
    echo "$name: $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt" "$OUT/gpu_check.log"
}

step tests 150 tests.txt \
    "$PY" -m pytest -q -p no:cacheprovider -x tests/kernels tests/compression/test_gpu.py \
        tests/layers/test_te_layers.py
step kernels 60 kernels.txt "$PY" tools/bench_kernels.py "${SMOKE[@]}" --json "$OUT/kernels.json"
step step_308m 180 step.txt "$PY" tools/bench_step.py "${SMOKE[@]}" --json "$OUT/step.json"
step step_1b 90 step_1b.txt "$PY" tools/bench_step.py "${SMOKE[@]}" "${SHAPE_1B[@]}" \
    --formats dense,fp8 --json "$OUT/step_1b.json"
step pretrain 100 pretrain.txt "$PY" tools/gpu_pretrain_check.py --work /tmp/gpu_pretrain
echo "=== done; results in $OUT" | tee -a "$OUT/gpu_check.log"
