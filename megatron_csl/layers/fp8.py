"""Real FP8 training through Transformer Engine's FP8 GEMMs, the way Megatron does it.

Megatron-LM's `--fp8-format hybrid|e4m3` and `--fp8-recipe delayed|tensorwise|mxfp8|blockwise`
set TransformerConfig.fp8 / fp8_recipe; megatron-core's TransformerBlock then runs every TE layer
under TE's fp8_autocast with the matching recipe (megatron.core.fp8_utils). This module is the one
place that checks those two values and turns them into config fields (`fp8_config_overrides`),
or into a TE recipe / autocast context for code outside megatron's blocks (`te_fp8_recipe`,
`fp8_autocast`). It needs `impl="te"` (the local spec has no FP8 GEMMs). Transformer Engine is
imported only when a recipe is built.

The project's fake-quant `fp8` formats (megatron_csl.compression) stay the reference; TE's FP8
differs from them in its scales (per tensor, delayed or current, not per row), so the two are
different formats and a run says which it used.
"""
from __future__ import annotations

import contextlib
from typing import Optional

FP8_FORMATS = ("hybrid", "e4m3")
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")


def check_fp8(fp8_format: Optional[str], fp8_recipe: Optional[str] = "delayed",
              impl: str = "te") -> None:
    """ValueError naming the bad value and what is valid."""
    if fp8_format is None:
        return
    if fp8_format not in FP8_FORMATS:
        raise ValueError(f"fp8 format must be one of {', '.join(FP8_FORMATS)}, "
                         f"got {fp8_format!r}")
    if fp8_recipe not in FP8_RECIPES:
        raise ValueError(f"fp8 recipe must be one of {', '.join(FP8_RECIPES)}, "
                         f"got {fp8_recipe!r}")
    if impl != "te":
        raise ValueError(f"fp8 format {fp8_format!r} needs the Transformer Engine layers "
                         f"(impl 'te', --transformer-impl te), got impl {impl!r}")


def fp8_config_overrides(fp8_format: Optional[str], fp8_recipe: Optional[str] = "delayed",
                         impl: str = "te") -> dict:
    """TransformerConfig fields for FP8 training ({} without fp8_format), e.g.
    llama_transformer_config(shape, bf16=True, **fp8_config_overrides("hybrid", "delayed"))."""
    check_fp8(fp8_format, fp8_recipe, impl)
    if fp8_format is None:
        return {}
    return {"fp8": fp8_format, "fp8_recipe": fp8_recipe}


def te_fp8_recipe(fp8_format: str, fp8_recipe: str = "delayed"):
    """Transformer Engine's recipe object for (format, recipe), as megatron builds it."""
    check_fp8(fp8_format, fp8_recipe)
    from megatron_csl.layers.te import require_transformer_engine

    require_transformer_engine()
    from transformer_engine.common import recipe

    fmt = recipe.Format.HYBRID if fp8_format == "hybrid" else recipe.Format.E4M3
    if fp8_recipe == "delayed":
        return recipe.DelayedScaling(fp8_format=fmt, amax_history_len=1024,
                                     amax_compute_algo="max")
    if fp8_recipe == "tensorwise":
        return recipe.Float8CurrentScaling(fp8_format=fmt)
    if fp8_recipe == "mxfp8":
        return recipe.MXFP8BlockScaling(fp8_format=fmt)
    return recipe.Float8BlockScaling(fp8_format=fmt)


def fp8_autocast(fp8_format: Optional[str], fp8_recipe: str = "delayed"):
    """TE's fp8_autocast for (format, recipe); a null context without fp8_format."""
    if fp8_format is None:
        return contextlib.nullcontext()
    recipe = te_fp8_recipe(fp8_format, fp8_recipe)
    import transformer_engine.pytorch as te

    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)
