"""Is the run this command describes the one already recorded in the run directory's run.json?

A resume continues the same optimizer trajectory over the same token budget, so everything that
changes what is trained, on how many tokens or by which update rule must agree with run.json:
the model and compression (identity), the seed, the batch (global batch size and sequence length:
a different batch silently changes D = tokens trained), the number of iterations, the learning-rate
schedule, the AdamW hyperparameters, gradient clipping and the data. What may legitimately change
is how the run is executed: parallel layout, micro-batch size, distributed optimizer, intervals,
workers, TensorBoard.

The check compares two run.json documents (the recorded one and ``plan.run_json`` of this
command), so it runs before anything in the run directory is written: a refused resume leaves
run.json untouched.
"""
from typing import Callable, List, Optional, Tuple

from .errors import ConfigError


class ResumeMismatchError(ConfigError):
    """The run directory holds a run with different settings. Exit code 2 (ConfigError)."""


def _top(key: str) -> Callable[[dict], object]:
    return lambda doc: doc.get(key)


def _model(doc: dict):
    # Everything in "model" but the ladder name and the padded vocabulary (it follows TP).
    model = doc.get("model")
    if not isinstance(model, dict):
        return model
    return {k: v for k, v in model.items() if k not in ("model_size", "padded_vocab_size")}


def _arg(dest: str) -> Callable[[dict], object]:
    def get(doc: dict):
        config = doc.get("config")      # config_version 2: grouped
        if isinstance(config, dict):
            for group in config.values():
                if isinstance(group, dict) and dest in group:
                    return group[dest]
            return None
        args = doc.get("args")          # config_version 1: flat argparse dict
        return args.get(dest) if isinstance(args, dict) else None
    return get


def _data(doc: dict):
    data = doc.get("data")
    if not isinstance(data, dict):
        return data
    # The tokenizer file may move; the token data and its split may not.
    return {k: v for k, v in data.items() if k != "tokenizer_model"}


# (what the message calls it, how to read it from a run.json document)
CHECKED: List[Tuple[str, Callable[[dict], object]]] = [
    ("model", _model),
    ("N", _top("N")),
    ("compression", _top("compression")),
    ("seed", _top("seed")),
    ("global_batch_size", _top("global_batch_size")),
    ("train_iters", _top("train_iters")),
    ("D (tokens)", _top("D")),
    ("lr", _top("lr")),
    ("min_lr", _top("min_lr")),
    ("lr_warmup_iters", _top("lr_warmup_iters")),
    ("lr_decay_style", _arg("lr_decay_style")),
    ("weight_decay", _arg("weight_decay")),
    ("adam_beta1", _arg("adam_beta1")),
    ("adam_beta2", _arg("adam_beta2")),
    ("adam_eps", _arg("adam_eps")),
    ("clip_grad", _arg("clip_grad")),
    ("init_method_std", _arg("init_method_std")),
    ("precision", _top("precision")),
    ("data", _data),
]


def differences(recorded: dict, current: dict) -> List[str]:
    """``"name: was X, now Y"`` for every checked setting that differs (a setting the recorded
    run.json does not have, e.g. from an older version, is not compared)."""
    diffs = []
    for name, get in CHECKED:
        was, now = get(recorded), get(current)
        if was is None and now is not None and name not in ("model", "data"):
            continue
        if was != now:
            diffs.append(f"{name}: was {was!r}, now {now!r}")
    return diffs


def check_same_run(run_dir, recorded: Optional[dict], current: dict, resuming: bool) -> None:
    """ResumeMismatchError unless ``current`` continues (or restarts) the recorded run."""
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise ResumeMismatchError(f"{str(run_dir)!r}: run.json is not a JSON object; this is not a "
                                  f"run directory of this project, choose another --run-dir")
    diffs = differences(recorded, current)
    if not diffs:
        return
    what = ("holds a different run: resuming would change the model, the token budget or the "
            "optimizer trajectory" if resuming else "holds another run's run.json")
    raise ResumeMismatchError(
        f"--run-dir {str(run_dir)!r} {what} (" + "; ".join(diffs) + "). Use the original "
        f"flags, or choose a new --run-dir; run.json was left unchanged")
