"""Checkpoint conversion: other TP/PP layouts, Hugging Face Llama, packed low-bit export.

    from megatron_csl.convert import locate_checkpoint, load_model, export_hf, export_packed
    loaded = load_model(locate_checkpoint("runs/demo"))   # GPTModel at TP=1/PP=1, weights loaded
    loaded.state_dict()                                   # full megatron state dict (master weights)

See docs/convert.md; tools/convert_checkpoint.py is the command line.
"""
from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.hf_export import export_hf
from megatron_csl.convert.loading import LoadedModel, build_model, load_model
from megatron_csl.convert.megatron_export import export_megatron, plan_for_layout
from megatron_csl.convert.packed_export import export_packed, read_packed
from megatron_csl.convert.run_info import CheckpointLocation, RunInfo, locate_checkpoint, read_run_info
from megatron_csl.convert.staging import staged_output_dir

__all__ = ["ConversionError", "locate_checkpoint", "read_run_info", "RunInfo", "CheckpointLocation",
           "load_model", "build_model", "LoadedModel", "export_hf", "export_packed", "read_packed",
           "export_megatron", "plan_for_layout", "staged_output_dir"]
