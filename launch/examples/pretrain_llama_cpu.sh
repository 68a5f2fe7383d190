#!/bin/bash
# Megatron-LM's examples/llama/train_llama3_8b_h100_fp8.sh command line, scaled down to a tiny
# Llama that trains on a CPU in seconds, with one addition: --compression w4. Every other flag is
# Megatron-LM's, with Megatron-LM's meaning (docs/pretrain.md has the table).
#
#   bash launch/examples/pretrain_llama_cpu.sh CHECKPOINT_DIR [more flags...]
#
# Run it again with the same CHECKPOINT_DIR and it resumes from the newest checkpoint there
# (--save DIR --load DIR); the run records (run.json, metrics.jsonl, result.json) go to the same
# directory. On a GPU machine, raise the sizes and use torchrun --nproc-per-node N as usual.
set -euo pipefail
CHECKPOINT_PATH=${1:?usage: $0 CHECKPOINT_DIR [more flags...]}
shift
cd "$(dirname "$0")/../.."

MODEL_ARGS=(
    --use-mcore-models
    --num-layers 2
    --hidden-size 64
    --ffn-hidden-size 176
    --num-attention-heads 4
    --group-query-attention
    --num-query-groups 2
    --kv-channels 16
    --seq-length 64
    --max-position-embeddings 64
    --position-embedding-type rope
    --rotary-base 500000
    --rotary-percent 1.0
    --swiglu
    --normalization RMSNorm
    --untie-embeddings-and-output-weights
    --disable-bias-linear
    --attention-dropout 0.0
    --hidden-dropout 0.0
    --init-method-std 0.02
    --compression w4
)
TRAINING_ARGS=(
    --micro-batch-size 2
    --global-batch-size 4
    --train-iters 6
    --lr 3e-4
    --min-lr 3e-5
    --lr-decay-iters 6
    --lr-decay-style cosine
    --lr-warmup-iters 1
    --adam-beta1 0.9
    --adam-beta2 0.95
    --weight-decay 0.1
    --clip-grad 1.0
    --bf16
    --exit-duration-in-mins 230
)
PARALLEL_ARGS=(
    --tensor-model-parallel-size 1
    --pipeline-model-parallel-size 1
    --sequence-parallel
    --recompute-activations
)
DATA_ARGS=(
    --mock-data
    --tokenizer-type NullTokenizer
    --vocab-size 256
    --split 99,1,0
    --eod-mask-loss
)
CHECKPOINT_ARGS=(
    --save "$CHECKPOINT_PATH"
    --load "$CHECKPOINT_PATH"
    --save-interval 3
    --ckpt-format torch_dist
    --no-load-optim
    --no-load-rng
)
LOGGING_ARGS=(
    --log-interval 1
    --eval-interval 3
    --eval-iters 2
    --tensorboard-dir "$CHECKPOINT_PATH/tensorboard"
    --log-throughput
    --wandb-project megatron-csl-example
    --wandb-exp-name llama-tiny-w4
)

exec "${PYTHON:-python}" launch/pretrain.py "${MODEL_ARGS[@]}" "${TRAINING_ARGS[@]}" \
    "${PARALLEL_ARGS[@]}" "${DATA_ARGS[@]}" "${CHECKPOINT_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@"
