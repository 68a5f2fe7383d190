"""Megatron-LM's side of the checkpoint interop test, run in its own process.

    python megatron_lm_checkpoint.py save DIR    # a checkpoint as Megatron-LM's pretrain_gpt.py
                                                 # writes it (torch_dist): DIR/iter_0000005/ and
                                                 # DIR/latest_checkpointed_iteration.txt
    python megatron_lm_checkpoint.py load DIR    # load DIR's newest checkpoint the way Megatron-LM
                                                 # does; prints JSON facts about it

The model is megatron-core's own GPTModel with megatron's own local layer spec (no megatron-csl
layers), and the common state follows Megatron-LM's checkpointing.py: args (a Namespace),
iteration, checkpoint_version, model, opt_param_scheduler.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

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


def main(mode, root):
    from megatron.core import dist_checkpointing

    from megatron_csl.compat import initialize_cpu_parallel

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
                                  iteration=ITERATION)
        state = {"args": args, "iteration": ITERATION, "checkpoint_version": 3.0,
                 "model": model.sharded_state_dict(),
                 "opt_param_scheduler": {"num_steps": ITERATION * 4},
                 "num_floating_point_operations_so_far": 0}
        dist_checkpointing.save(state, str(ckpt))
        (root / "latest_checkpointed_iteration.txt").write_text(str(ITERATION))
        return {"saved": str(ckpt)}
    iteration = int((root / "latest_checkpointed_iteration.txt").read_text().strip())
    ckpt = root / f"iter_{iteration:07d}"
    common = dist_checkpointing.load_common_state_dict(str(ckpt))
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(ckpt))
    model.load_state_dict(loaded["model"])
    return {"iteration": common["iteration"], "checkpoint_version": common["checkpoint_version"],
            "embedding_row_3": model.embedding.word_embeddings.weight[3, :4].tolist(),
            "output_sum": float(model.output_layer.weight.double().sum())}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2])))
