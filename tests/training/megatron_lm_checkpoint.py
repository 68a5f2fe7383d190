"""Megatron-LM's side of the checkpoint interop test, run in its own process.

    python megatron_lm_checkpoint.py save DIR    # a checkpoint as Megatron-LM's pretrain_gpt.py
                                                 # writes it (torch_dist): DIR/iter_0000005/ and
                                                 # DIR/latest_checkpointed_iteration.txt
    python megatron_lm_checkpoint.py load DIR    # load DIR's newest checkpoint the way Megatron-LM
                                                 # does; prints JSON facts about it
    python megatron_lm_checkpoint.py save DIR --num-layers 3   # the same with another shape

`megatron_lm_reads` repeats, key for key, what Megatron-LM's megatron/training/checkpointing.py
(NVIDIA/Megatron-LM, stored commit 0032978f; megatron.training is not on PyPI, so it cannot run
here) reads from a torch_dist checkpoint in `load_checkpoint` / `_load_base_checkpoint` /
`check_checkpoint_args` / `load_args_from_checkpoint`.

The model is megatron-core's own GPTModel with megatron's own local layer spec (no megatron-csl
layers), and the common state follows Megatron-LM's checkpointing.py: args (a Namespace),
iteration, checkpoint_version, model, opt_param_scheduler.
"""
import argparse
import json
import random
import sys
import warnings
from pathlib import Path

import numpy
import torch

warnings.filterwarnings("ignore")
SHAPE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=4,
             ffn_hidden_size=128)
VOCAB, SEQ, ITERATION = 256, 32, 5


def megatron_gpt():
    """megatron-core's GPTModel, built as Megatron-LM's pretrain_gpt.py builds a Llama model."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(
        **SHAPE, kv_channels=16, normalization="RMSNorm", gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, hidden_dropout=0.0,
        attention_dropout=0.0, bias_activation_fusion=False, bias_dropout_fusion=False,
        masked_softmax_fusion=False, apply_rope_fusion=False, persist_layer_norm=False,
        gradient_accumulation_fusion=False, use_cpu_initialization=True, layernorm_epsilon=1e-5)
    return GPTModel(config=config,
                    transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                    vocab_size=VOCAB, max_sequence_length=SEQ, pre_process=True, post_process=True,
                    share_embeddings_and_output_weights=False, position_embedding_type="rope",
                    rotary_percent=1.0, rotary_base=10000)


def megatron_lm_reads(root, model, run_args):
    """Megatron-LM's load-side reads of DIR's newest checkpoint, in its order; ``run_args`` is
    the loading run's Namespace. Returns what Megatron-LM would take from the checkpoint."""
    from megatron.core import dist_checkpointing, parallel_state as mpu
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.optimizer import DistributedOptimizer

    # read_metadata(): the tracker holds an int (or 'release').
    iteration = int((root / "latest_checkpointed_iteration.txt").read_text().strip())
    # get_checkpoint_name(..., return_base_dir=True) and _get_checkpoint_format().
    name = root / "iter_{:07d}".format(iteration)
    assert dist_checkpointing.check_is_distributed_checkpoint(str(name))
    # _load_global_dist_base_checkpoint(rank0=True): the common state.
    state_dict = dist_checkpointing.load_common_state_dict(str(name))
    # load_checkpoint(): ckpt_args = state_dict.get("args"); (TP, PP) decide RNG and optimizer.
    ckpt_args = state_dict["args"]
    ckpt_tp_pp = (getattr(ckpt_args, "tensor_model_parallel_size", 1),
                  getattr(ckpt_args, "pipeline_model_parallel_size", 1))
    run_tp_pp = (run_args.tensor_model_parallel_size, run_args.pipeline_model_parallel_size)
    load_rng = ckpt_tp_pp == run_tp_pp and not getattr(ckpt_args, "no_save_rng", False)
    assert not getattr(ckpt_args, "no_save_optim", False)
    for name_ in ("world_size", "data_parallel_size"):   # rerun-state decision
        getattr(ckpt_args, name_, 0)
    sharded_sd_metadata = dist_checkpointing.load_content_metadata(preloaded_state_dict=state_dict)
    if getattr(ckpt_args, "use_distributed_optimizer", False):
        assert sharded_sd_metadata["distrib_optim_sharding_type"] in \
            DistributedOptimizer.checkpoint_fully_reshardable_formats
    # generate_state_dict(): key 'model' for one model chunk; get_rng_state(torch_dist): one
    # ShardedObject 'rng_state' per (PP, TP) rank holding a list, replica_id = DP rank.
    request = {"model": model.sharded_state_dict(metadata=sharded_sd_metadata)}
    if load_rng:
        request["rng_state"] = ShardedObject(
            "rng_state", None, (mpu.get_pipeline_model_parallel_world_size(),
                                mpu.get_tensor_model_parallel_world_size()),
            (mpu.get_pipeline_model_parallel_rank(), mpu.get_tensor_model_parallel_rank()),
            replica_id=mpu.get_data_parallel_rank())
    loaded = dist_checkpointing.load(request, str(name))
    state_dict.update(loaded)
    # After the load: checkpoint_version, iteration, num_floating_point_operations_so_far.
    checkpoint_version = state_dict.get("checkpoint_version", 0)
    iteration = state_dict["iteration"]
    flops = state_dict.get("num_floating_point_operations_so_far", 0)
    # check_checkpoint_args(): asserts equality (add_position_embedding defaults to True).
    for field in ("num_layers", "hidden_size", "num_attention_heads"):
        assert getattr(ckpt_args, field) == getattr(run_args, field), field
    assert getattr(ckpt_args, "add_position_embedding", True) == run_args.add_position_embedding
    consumed = (getattr(ckpt_args, "consumed_train_samples", 0),
                getattr(ckpt_args, "skipped_train_samples", 0),
                getattr(ckpt_args, "consumed_valid_samples", 0))
    model.load_state_dict(state_dict["model"], strict=False)
    # OptimizerParamScheduler.load_state_dict(state_dict['opt_param_scheduler']).
    scheduler = state_dict["opt_param_scheduler"]
    # rng: rng_state[0] (no --data-parallel-random-init) and its five keys; cuda_rng_state
    # exists only in checkpoints written on a GPU.
    rng_keys = None
    if load_rng:
        rng_state = state_dict["rng_state"][0]
        random.setstate(rng_state["random_rng_state"])
        numpy.random.set_state(rng_state["np_rng_state"])
        torch.set_rng_state(rng_state["torch_rng_state"])
        assert rng_state["rng_tracker_states"], "empty tracker states: Megatron-LM exits"
        rng_keys = sorted(rng_state)
    # load_args_from_checkpoint() (--use-checkpoint-args): the model fields it copies.
    use_checkpoint_args = {f: getattr(ckpt_args, f, None) for f in (
        "num_layers", "hidden_size", "ffn_hidden_size", "seq_length", "num_attention_heads",
        "num_query_groups", "group_query_attention", "kv_channels", "max_position_embeddings",
        "position_embedding_type", "add_position_embedding", "use_rotary_position_embeddings",
        "rotary_base", "rotary_percent", "rotary_interleaved", "add_bias_linear", "add_qkv_bias",
        "squared_relu", "swiglu", "untie_embeddings_and_output_weights", "apply_layernorm_1p",
        "normalization", "attention_dropout", "hidden_dropout", "padded_vocab_size",
        "ckpt_format", "tensor_model_parallel_size", "pipeline_model_parallel_size")}
    return {"iteration": iteration, "checkpoint_version": checkpoint_version, "flops": flops,
            "consumed": list(consumed),
            "scheduler": {k: scheduler[k] for k in ("num_steps", "lr_warmup_steps",
                                                    "lr_decay_steps", "wd_incr_steps")},
            "rng_keys": rng_keys, "use_checkpoint_args": use_checkpoint_args}


def main(mode, root, num_layers=2):
    from megatron.core import dist_checkpointing

    from megatron_csl.compat import initialize_cpu_parallel

    SHAPE["num_layers"] = num_layers
    initialize_cpu_parallel(1, 1, seed=7)
    model = megatron_gpt()
    root = Path(root)
    if mode == "save":
        with torch.no_grad():   # a recognisable embedding: row i is all i / 1000
            model.embedding.word_embeddings.weight.copy_(
                torch.arange(VOCAB, dtype=torch.float32)[:, None].expand(VOCAB, 64) / 1000)
        ckpt = root / f"iter_{ITERATION:07d}"
        ckpt.mkdir(parents=True)
        args = argparse.Namespace(**SHAPE, seq_length=SEQ, max_position_embeddings=SEQ,
                                  padded_vocab_size=VOCAB, tensor_model_parallel_size=1,
                                  pipeline_model_parallel_size=1, ckpt_format="torch_dist",
                                  iteration=ITERATION, group_query_attention=False,
                                  kv_channels=16, swiglu=True, normalization="RMSNorm",
                                  position_embedding_type="rope",
                                  untie_embeddings_and_output_weights=True,
                                  add_bias_linear=False, consumed_train_samples=ITERATION * 4,
                                  consumed_valid_samples=0, use_distributed_optimizer=False)
        state = {"args": args, "iteration": ITERATION, "checkpoint_version": 3.0,
                 "model": model.sharded_state_dict(),
                 "opt_param_scheduler": {"num_steps": ITERATION * 4},
                 "num_floating_point_operations_so_far": 0}
        dist_checkpointing.save(state, str(ckpt))
        (root / "latest_checkpointed_iteration.txt").write_text(str(ITERATION))
        return {"saved": str(ckpt)}
    if mode == "reads":
        run_args = argparse.Namespace(**SHAPE, tensor_model_parallel_size=1,
                                      pipeline_model_parallel_size=1,
                                      add_position_embedding=True)   # Megatron-LM's default
        return megatron_lm_reads(root, model, run_args)
    iteration = int((root / "latest_checkpointed_iteration.txt").read_text().strip())
    ckpt = root / f"iter_{iteration:07d}"
    common = dist_checkpointing.load_common_state_dict(str(ckpt))
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(ckpt))
    model.load_state_dict(loaded["model"])
    return {"iteration": common["iteration"], "checkpoint_version": common["checkpoint_version"],
            "embedding_row_3": model.embedding.word_embeddings.weight[3, :4].tolist(),
            "output_sum": float(model.output_layer.weight.double().sum())}


if __name__ == "__main__":
    layers = int(sys.argv[sys.argv.index("--num-layers") + 1]) if "--num-layers" in sys.argv else 2
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2], layers), default=str))
