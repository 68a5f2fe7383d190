"""Work-arounds for megatron-core 0.16.1: the DistributedOptimizer with torch's AdamW, and the
synchronous checkpoint save's results queue.

Without Transformer Engine or apex (CPU machines, GPU machines without TE) megatron-core falls
back to ``torch.optim.AdamW``, which keeps a per-parameter ``step`` tensor. Two code paths of the
DistributedOptimizer do not expect that when loading a ``fully_reshardable`` checkpoint:

1. ``sharded_state_dict(is_loading=True)`` calls ``state_dict()``, which asserts exactly one
   ``step`` value over the optimizer state -- a freshly built optimizer has no state at all.
   ``materialize_optimizer_state`` runs one AdamW step on zero gradients at learning rate 0,
   which creates the state without changing any parameter (the load overwrites it anyway).
2. ``load_parameter_state_from_fully_reshardable`` skips ``step`` in the loaded tensors but
   ``_set_main_param_and_optimizer_states`` then copies every key of the live state, ``step``
   included (KeyError: 'step'). ``tolerate_missing_step`` wraps that method on the instance so a
   missing ``step`` keeps the value ``load_state_dict`` already set from the checkpoint.

Both act on optimizer instances only (no module-level patching) and do nothing for the
TE/apex FusedAdam, which keeps ``step`` in the parameter groups.

3. ``FileSystemWriterAsync`` (the ``torch_dist`` save strategy) passes its write results through a
   queue from ``multiprocessing.get_context("spawn").Manager()``, even for a synchronous save that
   runs in the training process. Starting that Manager spawns a fresh Python that imports torch
   (about 4 s on a 2-core machine, during the first save), and shutting it down at exit takes as
   long again; a signal arriving while it starts can kill the run. Our saves are always
   synchronous, so ``in_process_save_results`` gives megatron a plain thread-safe queue instead.
"""
import queue

import torch


def distributed_optimizers(optimizer):
    from megatron.core.optimizer import DistributedOptimizer

    chained = getattr(optimizer, "chained_optimizers", None)
    return [o for o in (chained if chained else [optimizer]) if isinstance(o, DistributedOptimizer)]


def _uses_torch_adam(opt) -> bool:
    return isinstance(getattr(opt, "optimizer", None), (torch.optim.Adam, torch.optim.AdamW))


def materialize_optimizer_state(optimizer) -> None:
    for opt in distributed_optimizers(optimizer):
        inner = opt.optimizer
        if not _uses_torch_adam(opt) or len(inner.state) > 0:
            continue
        saved_lr = [group["lr"] for group in inner.param_groups]
        for group in inner.param_groups:
            group["lr"] = 0.0   # AdamW's update and decoupled weight decay both scale with lr
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        inner.step()
        for group, lr in zip(inner.param_groups, saved_lr):
            group["lr"] = lr
            for param in group["params"]:
                param.grad = None


def tolerate_missing_step(optimizer) -> None:
    for opt in distributed_optimizers(optimizer):
        if not _uses_torch_adam(opt) or getattr(opt, "_megatron_csl_step_fix", False):
            continue
        original = opt._set_main_param_and_optimizer_states

        def set_states(model_param, tensors, _opt=opt, _original=original):
            if "step" not in tensors:
                group_index, group_order = _opt.model_param_group_index_map[model_param]
                main_param = _opt.optimizer.param_groups[group_index]["params"][group_order]
                step = _opt.optimizer.state.get(main_param, {}).get("step")
                if step is not None:
                    tensors = {**tensors, "step": step.clone()}
            return _original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states
        opt._megatron_csl_step_fix = True


def in_process_save_results() -> None:
    """Let synchronous dist_checkpointing saves collect write results in this process.

    Only for synchronous saves (``dist_checkpointing.save`` without ``async_sharded_save``): an
    asynchronous save would run the writers in a persistent worker that needs the Manager queue.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()
