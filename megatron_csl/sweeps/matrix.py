"""The run matrix: a sweep expanded into runs, each with a stable name, a checked layout, its
parameter count N, its token budget D, and the launch/pretrain.py arguments that train it."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from .config import SweepConfig
from .errors import SweepError
from .profile import parse_time_limit
from megatron_csl.runfiles import CHECKPOINTS_DIR as CHECKPOINTS_SUBDIR  # noqa: F401
from megatron_csl.training import budget as budget_rules


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Resources and parallelism of one run."""

    nodes: int
    tasks_per_node: int     # ranks per node (= GPUs per node on a GPU cluster)
    gpus_per_node: int      # GPUs requested per node (0 on CPU)
    tp: int
    pp: int
    time_limit: str

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    model: object            # config.ModelEntry
    compression: str         # canonical spec
    tokens_per_param: float
    seed: int
    training: tuple          # ((key, value), ...) pretrain flags shared with the sweep, after overrides
    layout: RunLayout
    N: int                   # non-embedding parameters (the N of the scaling laws)
    train_iters: int
    tokens: int              # D: tokens the run trains on (train_iters * global batch * sequence)

    @property
    def flops(self) -> float:
        """Training compute by the 6·N·D rule."""
        return 6.0 * self.N * self.tokens

    @property
    def array_group(self) -> tuple:
        """Runs with equal keys share resources and can go in one Slurm job array."""
        return (self.model.name, self.layout)

    def training_dict(self) -> dict:
        return dict(self.training)


def format_ratio(ratio: float) -> str:
    """20.0 -> "20", 0.5 -> "0.5" (as in run names and flags)."""
    return f"{ratio:g}" if float(ratio).is_integer() or abs(ratio) >= 1e-4 else repr(ratio)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def sanitize(text: str) -> str:
    """A file- and job-name-safe form of a spec: every character outside [A-Za-z0-9._+-] -> '-'."""
    return _UNSAFE.sub("-", text)


def run_name(model_name: str, compression: str, tokens_per_param: float, seed: int) -> str:
    """`{size}_{canonical spec sanitized}_tpp{r}_s{seed}`, e.g. `100m_s50-nm2-4+w4_tpp20_s1234`."""
    return f"{sanitize(model_name)}_{sanitize(compression)}_tpp{format_ratio(tokens_per_param)}_s{seed}"


token_budget = budget_rules.token_budget   # the training planner's own rule


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepError(f"{where} must be a positive integer, got {value!r}")
    return value


def resolve_layout(sweep: SweepConfig, model, compression: str, layout: dict, training: dict,
                   where: str) -> RunLayout:
    """Fill in profile defaults and check that the layout can hold the model."""
    from megatron_csl.model import validate_parallel_layout

    profile = sweep.cluster
    nodes = _positive_int(layout.get("nodes", 1), f"{where}: nodes")
    tasks = _positive_int(layout.get("tasks_per_node", profile.default_tasks_per_node),
                          f"{where}: tasks_per_node")
    if profile.gpus_per_node and tasks > profile.gpus_per_node:
        raise SweepError(f"{where}: tasks_per_node {tasks} exceeds the {profile.gpus_per_node} GPUs per "
                         f"node of cluster profile {profile.name!r} (one task per GPU); use at most "
                         f"{profile.gpus_per_node} or more nodes")
    tp = _positive_int(layout.get("tensor_model_parallel_size", 1), f"{where}: tensor_model_parallel_size")
    pp = _positive_int(layout.get("pipeline_model_parallel_size", 1),
                       f"{where}: pipeline_model_parallel_size")
    time_limit = str(layout.get("time_limit", profile.time_limit))
    limit_s = parse_time_limit(time_limit, f"{where}: time_limit")
    if profile.signal_grace_s >= limit_s:
        raise SweepError(f"{where}: time_limit {time_limit!r} ({limit_s} s) leaves no time before the "
                         f"checkpoint signal (signal_grace_s {profile.signal_grace_s} of profile "
                         f"{profile.name!r}); use a longer time limit")
    world = nodes * tasks
    try:
        validate_parallel_layout(model.shape, tp, pp, world, compression=compression)
    except ValueError as err:
        raise SweepError(f"{where}: impossible layout (nodes {nodes} x tasks_per_node {tasks} = world "
                         f"size {world}, TP {tp}, PP {pp}): {err}") from None
    dp = world // (tp * pp)
    mbs = _positive_int(training.get("micro_batch_size", 1), f"{where}: micro_batch_size")
    gbs = _positive_int(training["global_batch_size"], f"{where}: global_batch_size")
    try:
        budget_rules.global_batch_size(gbs, mbs, dp)
    except budget_rules.BudgetError as err:
        raise SweepError(f"{where}: {err}, or change the layout") from None
    return RunLayout(nodes=nodes, tasks_per_node=tasks,
                     gpus_per_node=tasks if profile.gpus_per_node else 0,
                     tp=tp, pp=pp, time_limit=time_limit)


def expand_runs(sweep: SweepConfig) -> list[RunSpec]:
    """All runs of the sweep: models x formats x tokens-per-parameter x seeds, in that order."""
    from megatron_csl.model import count_parameters

    runs, names = [], {}
    for model in sweep.models:
        training, layout = sweep.settings_for(model.name)
        # N does not depend on the vocabulary (non-embedding count); any vocabulary size will do.
        n_params = count_parameters(model.shape, vocab_size=1).non_embedding
        seq = _positive_int(training["seq_length"], f"{model.name}: seq_length")
        for compression in sweep.formats:
            where = f"{sweep.source.name}: model {model.name!r}, format {compression!r}"
            run_layout = resolve_layout(sweep, model, compression, layout, training, where)
            for ratio in sweep.tokens_per_param:
                iters, tokens = token_budget(n_params, ratio, training["global_batch_size"], seq)
                for seed in sweep.seeds:
                    name = run_name(model.name, compression, ratio, seed)
                    if name in names:
                        raise SweepError(f"{sweep.source.name}: two runs get the same directory name "
                                         f"{name!r} ({names[name]} and {compression!r}); rename a model")
                    names[name] = compression
                    run = RunSpec(
                        name=name, model=model, compression=compression, tokens_per_param=ratio,
                        seed=seed, training=tuple(training.items()), layout=run_layout,
                        N=n_params, train_iters=iters, tokens=tokens)
                    _check_with_pretrain(run, sweep, where)
                    runs.append(run)
    return runs


def run_config(run: RunSpec, run_dir: Path, sweep: SweepConfig):
    """The run's training configuration (megatron_csl.training.config.PretrainConfig), filled
    directly from the sweep: the same object launch/pretrain.py builds from the job's flags."""
    from megatron_csl.training.config import PretrainConfig, coerce_values, read_yaml_config

    values = {}
    training = run.training_dict()
    if training.get("config"):
        values.update(read_yaml_config(training.pop("config")))
    values.update(coerce_values(training, f"sweep training of run {run.name}"))
    values.update(run_dir=str(run_dir), resume=True, compression=run.compression,
                  tensor_model_parallel_size=run.layout.tp,
                  pipeline_model_parallel_size=run.layout.pp,
                  tokens_per_param=run.tokens_per_param, seed=run.seed,
                  mock_data=sweep.data.mock, data_path=None if sweep.data.mock else list(sweep.data.paths),
                  tokenizer_model=sweep.data.tokenizer_model)
    shape = run.model.shape
    if run.model.from_ladder:
        values["model_size"] = run.model.name
    else:
        values.update(num_layers=shape.num_layers, hidden_size=shape.hidden_size,
                      num_attention_heads=shape.num_attention_heads,
                      ffn_hidden_size=shape.ffn_hidden_size)
    return PretrainConfig.from_flat(values)


def _check_with_pretrain(run: RunSpec, sweep: SweepConfig, where: str) -> None:
    """Check the run's configuration with launch/pretrain.py's own checks, so a bad value fails
    here rather than in a job on the cluster (extra_args, free-form flags, are parsed too)."""
    from megatron_csl.training import ConfigError
    from megatron_csl.training.config import check_config, parse_args

    try:
        config = run_config(run, sweep.output_dir / run.name, sweep)
        check_config(config)
        if sweep.extra_args:
            parse_args(pretrain_args(run, sweep.output_dir / run.name, sweep))
    except ConfigError as err:
        raise SweepError(f"{where}: launch/pretrain.py rejects the arguments of run {run.name}: "
                         f"{err}") from None


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _value(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _flag_args(key: str, value) -> list[str]:
    if isinstance(value, bool):
        # pretrain.py's booleans are --flag/--no-flag pairs; say either explicitly.
        return [_flag(key) if value else _flag("no_" + key)]
    if isinstance(value, list):
        return [_flag(key)] + [_value(v) for v in value]
    return [_flag(key), _value(value)]


def pretrain_args(run: RunSpec, run_dir: Path, sweep: SweepConfig) -> list[str]:
    """Arguments of launch/pretrain.py for `run` writing into `run_dir`.

    `--load RUN_DIR/checkpoints` (Megatron-LM's form; the checkpoints are saved there by default)
    is always given, so a requeued or resubmitted job resumes where the last one saved; with no
    checkpoint yet the run starts from scratch.
    """
    run_dir = Path(run_dir)
    args = ["--run-dir", str(run_dir), "--load", str(run_dir / CHECKPOINTS_SUBDIR)]
    shape = run.model.shape
    if run.model.from_ladder:
        args += ["--model-size", run.model.name]
    else:
        args += ["--num-layers", str(shape.num_layers), "--hidden-size", str(shape.hidden_size),
                 "--num-attention-heads", str(shape.num_attention_heads),
                 "--ffn-hidden-size", str(shape.ffn_hidden_size)]
    args += ["--compression", run.compression,
             "--tensor-model-parallel-size", str(run.layout.tp),
             "--pipeline-model-parallel-size", str(run.layout.pp),
             "--tokens-per-param", format_ratio(run.tokens_per_param),
             "--seed", str(run.seed)]
    if sweep.data.mock:
        args.append("--mock-data")
    else:
        args += ["--data-path", *sweep.data.paths]
    if sweep.data.tokenizer_model:
        args += ["--tokenizer-model", sweep.data.tokenizer_model]
    for key, value in run.training:
        args += _flag_args(key, value)
    return args + list(sweep.extra_args)
