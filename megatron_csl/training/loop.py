"""One pretraining run: set up, (resume,) train, evaluate, checkpoint, write the run directory.

``run_pretrain(argv)`` is what ``launch/pretrain.py`` calls on every rank; it returns the process
exit code (0 finished, 1 error, 2 bad arguments/inputs, 3 preempted with a checkpoint saved).

Each iteration: fetch this rank's micro-batches, agree with all ranks (one all-reduce) on whether
a preemption signal arrived and on the largest token id, then megatron's
``get_forward_backward_func`` schedule (so pipeline parallelism works), the optimizer step with
gradient clipping, and the LR scheduler step. The train loss is averaged over micro-batches and
data-parallel ranks; a NaN/inf loss stops the run (exit 1) before anything is saved.
"""
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from . import checkpointing as ckpt
from . import data as data_mod
from . import distributed as dist_utils
from . import preflight
from .child_processes import die_with_parent
from .config import parse_args
from .errors import ConfigError, DivergenceError, PretrainError
from .lock import RUN_LOCK, RunDirLock
from .model_setup import build_training_objects, check_schedule_matches, current_lr
from .plan import RunPlan, resolve_plan, run_json
from .megatron_args import megatron_args
from .resume_check import check_same_run
from .rundir import (METRICS_JSONL, RESULT_JSON, RUN_JSON, MetricsLog, atomic_write_json,
                     progress_line, read_json, read_metrics)
from .startup import quiet_startup
from .signals import REQUEUE_EXIT_CODE, PreemptionWatcher


def _print0(*parts, file=None):
    if dist_utils.is_rank0():
        print(*parts, file=file or sys.stdout, flush=True)


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Mean next-token loss of one micro-batch (megatron's legacy two-value loss contract:
    the schedule divides by the number of micro-batches)."""
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask) / mask.sum().clamp(min=1.0)
    # clone: the schedule divides the returned loss in place by the number of micro-batches,
    # and a plain detach() would share that storage.
    return loss, {"lm loss": loss.detach().clone()}


def _forward_step(data_iterator, model, device):
    batch = next(data_iterator)
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    loss_mask = batch["loss_mask"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    # attention_mask=None: the layers apply their causal mask (attn_mask_type=causal).
    output = model(tokens, position_ids, None, labels=labels)
    return output, functools.partial(_loss_func, loss_mask)


class Trainer:
    def __init__(self, plan: RunPlan, watcher: PreemptionWatcher):
        from megatron.core import parallel_state as ps

        self.plan = plan
        self.config = plan.config
        self.watcher = watcher
        self.device = dist_utils.device()
        self.dp_rank = ps.get_data_parallel_rank()
        self.is_last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        self.rank0 = dist_utils.is_rank0()
        self.metrics: Optional[MetricsLog] = None
        self.step = 0
        self.consumed_samples = 0
        self.log_loss_sum = 0.0
        self.log_loss_count = 0
        self.last_train_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.wall_s_before = 0.0
        self.last_saved_step: Optional[int] = None
        self.lock = RunDirLock(plan.run_dir, RUN_LOCK, "a training process")  # rank 0 takes it

    # ------------------------------------------------------------------ run directory
    def _prepare_run_dir(self):
        """Rank 0 decides (resume or fresh, or refuse) and tells every rank."""
        plan = self.plan
        decision = {"error": None, "resume": None, "finetune": None, "finished": False,
                    "restarts": 0, "note": None}
        if self.rank0:
            run_dir = plan.run_dir
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                decision["error"] = f"--run-dir {str(run_dir)!r}: cannot create it ({e})"
            else:
                try:
                    self.lock.acquire()      # held until run() returns (or the process dies)
                    decision.update(self._decide(run_dir))
                except ConfigError as e:
                    decision["error"] = str(e)
                except OSError as e:   # e.g. a read-only run directory
                    decision["error"] = (f"--run-dir {str(run_dir)!r} is not writable: "
                                         f"{e.strerror} ({e.filename})")
        decision = dist_utils.broadcast_object(decision)
        if decision["error"]:
            raise ConfigError(decision["error"])
        return decision

    def _decide(self, run_dir: Path) -> dict:
        """Fresh start, resume (``--load DIR``, or the run's own checkpoints), fine-tune
        (``--finetune --load DIR``), or refuse; Megatron-LM's rule: a --load directory without a
        checkpoint starts fresh, so ``--save DIR --load DIR`` serves both the first and every
        requeued job."""
        plan = self.plan
        warn = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        own = ckpt.find_latest(plan.save_dir, warn=warn)
        previous = read_json(run_dir / RUN_JSON)
        has_rows = bool(read_metrics(run_dir / METRICS_JSONL))
        if plan.load_dir is None:
            if own is not None or has_rows or (run_dir / RESULT_JSON).exists():
                return {"error": f"--run-dir {str(run_dir)!r} already holds a run (checkpoints or "
                                 f"metrics); pass --load {plan.save_dir} to resume it, or choose a "
                                 f"new --run-dir/--save"}
            check_same_run(run_dir, previous, run_json(plan), resuming=False)
            return {}
        result = read_json(run_dir / RESULT_JSON)
        if result is not None and result.get("status") == "finished":
            return {"finished": True}
        if self.config.checkpoint.finetune and not (own is not None and previous is not None):
            source = ckpt.find_latest(plan.load_dir, warn=warn)
            if source is None:
                return {"error": f"--finetune --load {str(plan.load_dir)!r}: no complete "
                                 f"checkpoint there to start from"}
            return {"finetune": str(source[1])}
        # --save DIR --load DIR (and sweeps): the load directory is the one read above; reading
        # (and integrity-checking) it again would only repeat its warnings.
        same_dir = Path(plan.load_dir).resolve() == Path(plan.save_dir).resolve()
        latest = (own if self.config.checkpoint.finetune or same_dir
                  else ckpt.find_latest(plan.load_dir, warn=warn))
        if latest is None:
            note = (f"[pretrain] --load {plan.load_dir}: no checkpoint there yet; starting "
                    f"fresh")
        else:
            note = None
        check_same_run(run_dir, previous, run_json(plan), resuming=latest is not None)
        restarts = previous.get("restarts", 0) + 1 if previous is not None else 0
        return {"resume": None if latest is None else (latest[0], str(latest[1])),
                "restarts": restarts, "note": note}

    # ------------------------------------------------------------------ setup
    def _check_data(self):
        d = self.plan.data
        if d.mock:
            return
        error = None
        if self.rank0:
            try:
                data_mod.check_token_range(d.prefixes, self.plan.vocab_size, "--data-path")
                data_mod.check_token_range(d.valid_prefixes, self.plan.vocab_size,
                                           "--valid-data-path")
            except ConfigError as e:
                error = str(e)
        error = dist_utils.broadcast_object(error)
        if error:
            raise ConfigError(error)

    def _build_data(self):
        train_n, valid_n = data_mod.samples_needed(self.plan)
        self.train_ds, self.valid_ds = data_mod.build_datasets(self.plan, train_n, valid_n)
        workers = self.config.data.num_workers
        self.num_workers = (2 if torch.cuda.is_available() else 0) if workers is None else workers

    def _train_iterator(self):
        plan = self.plan
        first = self.consumed_samples
        steps = plan.train_iters - self.step
        sampler = data_mod.BatchSampler(first, steps, plan.global_batch_size,
                                        plan.micro_batch_size, plan.dp, self.dp_rank)
        return iter(data_mod.make_loader(self.train_ds, sampler, self.num_workers,
                                         pin_memory=torch.cuda.is_available()))

    # ------------------------------------------------------------------ steps
    def _forward_backward(self, batches: List[dict], forward_only: bool):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        plan = self.plan
        return get_forward_backward_func()(
            forward_step_func=functools.partial(_forward_step, device=self.device),
            data_iterator=iter(batches), model=[self.objs.model],
            num_microbatches=len(batches), seq_length=plan.seq_length,
            micro_batch_size=plan.micro_batch_size, decoder_seq_length=plan.seq_length,
            forward_only=forward_only)

    def _mean_loss(self, losses_reduced) -> float:
        """Mean of the micro-batch losses over micro-batches and data-parallel ranks (the loss
        lives on the last pipeline stage; every rank gets the value)."""
        local = 0.0
        if self.is_last_stage and losses_reduced:
            local = float(torch.stack([x["lm loss"] for x in losses_reduced]).double().mean())
        total, count = dist_utils.all_reduce_sum([local, 1.0 if self.is_last_stage else 0.0])
        return total / count

    def _train_step(self, batches):
        objs = self.objs
        objs.model.zero_grad_buffer()
        objs.optimizer.zero_grad()
        losses = self._forward_backward(batches, forward_only=False)
        lr = current_lr(objs.optimizer)
        _, grad_norm, _ = objs.optimizer.step()
        objs.scheduler.step(increment=1)
        loss = self._mean_loss(losses)
        grad = None if grad_norm is None else float(grad_norm)
        return loss, lr, grad

    def evaluate(self) -> float:
        plan = self.plan
        model = self.objs.model
        model.eval()
        total = 0.0
        with torch.no_grad():
            for k in range(self.config.logging.eval_iters):
                sampler = data_mod.BatchSampler(k * plan.global_batch_size, 1,
                                                plan.global_batch_size, plan.micro_batch_size,
                                                plan.dp, self.dp_rank)
                batches = list(data_mod.make_loader(self.valid_ds, sampler, 0, pin_memory=False))
                total += self._mean_loss(self._forward_backward(batches, forward_only=True))
        model.train()
        return total / self.config.logging.eval_iters

    # ------------------------------------------------------------------ checkpoints
    def _training_state(self) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed_samples,
                "log_loss_sum": self.log_loss_sum, "log_loss_count": self.log_loss_count,
                "last_train_loss": self.last_train_loss, "last_val_loss": self.last_val_loss,
                # The same value on every rank (the checkpoint's common state must agree).
                "wall_s": dist_utils.all_reduce_max(
                    [self.wall_s_before + (time.time() - self.t_start)])[0]}

    def save(self):
        if self.last_saved_step == self.step:
            return
        t0 = time.time()
        try:
            path = ckpt.save_checkpoint(self.plan.save_dir, self.step, self.objs.model,
                                        self.objs.optimizer, self.objs.scheduler,
                                        self._training_state(),
                                        bool(self.config.parallel.use_distributed_optimizer),
                                        keep_last=self.config.checkpoint.keep_last_checkpoints,
                                        args=megatron_args(self.plan, self.consumed_samples,
                                                           self.step))
        except Exception as e:
            if not preflight.is_disk_full(e):
                raise
            raise preflight.DiskFullError(
                f"step {self.step}: the disk of {self.plan.save_dir} filled up while saving the "
                f"checkpoint ({e}); the previous checkpoint is intact. Free space and resume "
                f"with --load") from None
        self.last_saved_step = self.step
        _print0(f"[pretrain] saved checkpoint {path} ({time.time() - t0:.1f} s)")

    def _resume(self, step: int, path: str):
        from megatron.core import dist_checkpointing

        common = dist_checkpointing.load_common_state_dict(path)
        if "training" not in common:
            raise ConfigError(f"--load {path}: not a megatron-csl checkpoint (no training state; "
                              f"a Megatron-LM checkpoint loads with --finetune)")
        check_schedule_matches(self.objs.scheduler, common["scheduler"])
        c = self.config.checkpoint
        state = ckpt.load_checkpoint(Path(path), self.objs.model, self.objs.optimizer,
                                     self.objs.scheduler,
                                     bool(self.config.parallel.use_distributed_optimizer),
                                     load_optim=not c.no_load_optim, load_rng=not c.no_load_rng)
        self.step = state["step"]
        self.consumed_samples = state["consumed_samples"]
        self.log_loss_sum = state["log_loss_sum"]
        self.log_loss_count = state["log_loss_count"]
        self.last_train_loss = state["last_train_loss"]
        self.last_val_loss = state["last_val_loss"]
        self.wall_s_before = state["wall_s"]
        self.last_saved_step = self.step
        _print0(f"[pretrain] resumed from {path} at step {self.step}/{self.plan.train_iters}")

    # ------------------------------------------------------------------ main
    def _finetune_from(self, path: str):
        common = ckpt.load_model_weights(Path(path), self.objs.model)
        _print0(f"[pretrain] --finetune: model weights from {path} (iteration "
                f"{common.get('iteration', '?')}); optimizer, schedule and data start at 0")

    def run(self) -> int:
        self.t_start = time.time()
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> int:
        plan = self.plan
        decision = self._prepare_run_dir()
        if decision["finished"]:
            _print0(f"[pretrain] {plan.run_dir} already finished (result.json); nothing to do")
            return 0
        if decision.get("note"):
            _print0(decision["note"])
        self._check_data()
        if self.rank0:
            atomic_write_json(plan.run_dir / RUN_JSON, run_json(plan, decision["restarts"]))
        self.objs = build_training_objects(plan)
        self._build_data()
        if decision["resume"] is not None:
            self._resume(*decision["resume"])
        elif decision.get("finetune") is not None:
            self._finetune_from(decision["finetune"])
        if self.rank0:
            self.metrics = MetricsLog(plan.run_dir, resume_step=self.step,
                                      tensorboard=plan.tensorboard_dir)
        _print0(f"[pretrain] {plan.name}: N={plan.n_params:,} non-embedding parameters, "
                f"D={plan.train_tokens:,} tokens ({plan.tokens_per_param:.1f}/param), "
                f"{plan.train_iters} iterations of {plan.global_batch_size}x{plan.seq_length}, "
                f"compression {plan.compression}, TP={plan.tp} PP={plan.pp} DP={plan.dp}")
        where = (f"run records and checkpoints in {plan.run_dir}" if plan.save_dir == plan.run_dir
                 else f"run records in {plan.run_dir}, checkpoints in {plan.save_dir}")
        _print0(f"[pretrain] {where}; training in {plan.precision}")
        try:
            return self._loop()
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _loop(self) -> int:
        plan, c = self.plan, self.config.checkpoint
        log_interval, eval_interval = (self.config.logging.log_interval,
                                       self.config.logging.eval_interval)
        deadline = (None if c.exit_duration_in_mins is None
                    else self.t_start + 60.0 * c.exit_duration_in_mins)
        it = self._train_iterator()
        self.objs.model.train()
        train_time = 0.0          # seconds spent in training steps in this process
        steps_here = 0
        interval_time, interval_steps = 0.0, 0
        while self.step < plan.train_iters:
            batches = [next(it) for _ in range(plan.num_microbatches)]
            top_token = max(data_mod.check_batch_tokens(b) for b in batches)
            time_up = deadline is not None and time.time() >= deadline and self.step > 0
            preempt, top_token, time_up = dist_utils.all_reduce_max(
                [1.0 if self.watcher.requested else 0.0, top_token, 1.0 if time_up else 0.0])
            if time_up:
                self.save()
                _print0(f"[pretrain] --exit-duration-in-mins {c.exit_duration_in_mins:g}: "
                        f"stopping at step {self.step} with a checkpoint; exit code "
                        f"{REQUEUE_EXIT_CODE}")
                return REQUEUE_EXIT_CODE
            if preempt:
                if self.step == 0:   # nothing to keep: a requeue starts over
                    _print0(f"[pretrain] preempted before the first step: nothing trained, no "
                            f"checkpoint written; exiting with code {REQUEUE_EXIT_CODE} (requeue)")
                    return REQUEUE_EXIT_CODE
                self.save()
                _print0(f"[pretrain] preempted at step {self.step}: checkpoint saved, exiting "
                        f"with code {REQUEUE_EXIT_CODE} (requeue)")
                return REQUEUE_EXIT_CODE
            if top_token >= plan.vocab_size:
                raise ConfigError(
                    f"step {self.step + 1}: the data holds token id {int(top_token)}, outside the "
                    f"vocabulary of {plan.vocab_size}; the dataset was tokenized with a different "
                    f"tokenizer (pass the matching --tokenizer-model/--vocab-size)")

            t0 = time.time()
            loss, lr, grad_norm = self._train_step(batches)
            dt = time.time() - t0
            self.step += 1
            self.consumed_samples += plan.global_batch_size
            train_time += dt
            steps_here += 1
            interval_time += dt
            interval_steps += 1
            if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
                raise DivergenceError(
                    f"step {self.step}: training diverged (loss {loss}, grad norm {grad_norm}); "
                    f"stopping without saving. The newest checkpoint is left intact; lower --lr, "
                    f"raise --lr-warmup-fraction or check the data")
            self.log_loss_sum += loss
            self.log_loss_count += 1

            done = self.step >= plan.train_iters
            if self.step % log_interval == 0 or done:
                self._log(lr, grad_norm, interval_time, interval_steps, train_time, steps_here)
                interval_time, interval_steps = 0.0, 0
            if self.step % eval_interval == 0 or done:
                self._eval_and_log()
            exit_now = (c.exit_interval is not None and self.step % c.exit_interval == 0
                        and not done)
            if done or exit_now or (c.save_interval and self.step % c.save_interval == 0):
                self.save()
            if exit_now:
                _print0(f"[pretrain] --exit-interval {c.exit_interval}: stopping at step "
                        f"{self.step} with a checkpoint; exit code {REQUEUE_EXIT_CODE}")
                return REQUEUE_EXIT_CODE
        self._write_result()
        return 0

    def _log(self, lr, grad_norm, interval_time, interval_steps, train_time, steps_here):
        plan = self.plan
        loss = self.log_loss_sum / max(self.log_loss_count, 1)
        self.last_train_loss = loss
        self.log_loss_sum, self.log_loss_count = 0.0, 0
        tokens_per_s = (interval_steps * plan.tokens_per_iter / interval_time
                        if interval_time > 0 else 0.0)
        eta = (plan.train_iters - self.step) * (train_time / max(steps_here, 1))
        if self.metrics is not None:
            self.metrics.log_train(self.step, self.consumed_samples * plan.seq_length, loss, lr,
                                   grad_norm, tokens_per_s)
        _print0(progress_line(self.step, plan.train_iters, loss, lr, grad_norm, tokens_per_s, eta))

    def _eval_and_log(self):
        val_loss = self.evaluate()
        self.last_val_loss = val_loss
        if not math.isfinite(val_loss):
            raise DivergenceError(f"step {self.step}: validation loss is {val_loss}; stopping "
                                  f"without saving (the newest checkpoint is left intact)")
        if self.metrics is not None:
            self.metrics.log_eval(self.step, self.consumed_samples * self.plan.seq_length,
                                  val_loss)
        _print0(f"[pretrain] step {self.step}: validation loss {val_loss:.4f}")

    def _write_result(self):
        plan = self.plan
        if not self.rank0:
            return
        self.metrics.flush()
        atomic_write_json(plan.run_dir / RESULT_JSON, {
            "val_loss": self.last_val_loss,
            "N": plan.n_params,
            # The tokens actually trained (equal to the plan's D: resume_check refuses a resume
            # that would change the batch).
            "D": self.consumed_samples * plan.seq_length,
            "compression": plan.compression,
            "status": "finished",
            "train_loss": self.last_train_loss,
            "steps": self.step,
            "wall_s": self.wall_s_before + (time.time() - self.t_start),
        })
        _print0(f"[pretrain] finished: validation loss {self.last_val_loss:.4f}; wrote "
                f"{plan.run_dir / RESULT_JSON}")


def run_pretrain(argv=None) -> int:
    """Run one pretraining job on this rank; returns the exit code (see module docstring)."""
    watcher = None
    initialised = False
    try:
        config = parse_args(argv)
        info = dist_utils.rank_info()
        quiet_startup(verbose=config.logging.verbose)
        plan = resolve_plan(config, info.world_size)
        if info.rank == 0:
            for notice in plan.notices:
                print(f"[pretrain] note: {notice}", file=sys.stderr, flush=True)
        data_mod.check_prefixes_exist(plan.data.prefixes, "--data-path")
        data_mod.check_prefixes_exist(plan.data.valid_prefixes, "--valid-data-path")
        preflight.check_data_files(plan)     # .idx whole, .bin as long as the index says
        preflight.check_run_outputs(plan)    # writable folders, room for two checkpoints
        die_with_parent()    # forked checkpoint writers and data workers die with this process
        # Install the handlers before the (slow) setup so an early signal is not lost.
        watcher = PreemptionWatcher(verbose=info.rank == 0)
        from megatron_csl.compat import apply_cpu_compat

        apply_cpu_compat()
        dist_utils.init_process_group(info)
        initialised = True
        dist_utils.init_model_parallel(plan.tp, plan.pp)
        dist_utils.set_seeds(config.optimizer.seed)
        return Trainer(plan, watcher).run()
    except PretrainError as e:
        # Every check is agreed between ranks, so rank 0 speaks for all of them.
        if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0":
            print(f"[pretrain] error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    finally:
        if watcher is not None:
            watcher.close()
        if initialised:
            dist_utils.shutdown()

