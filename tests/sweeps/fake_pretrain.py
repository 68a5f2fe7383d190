"""A stand-in for launch/pretrain.py that follows its run-directory and exit-code contract
(docs/interfaces.md) in milliseconds, for tests of the executors' own logic (parallelism,
requeue on exit 3, failures, skipping). The end-to-end tests run the real launch/pretrain.py.

Behaviour is set through the environment:
  FAKE_STEPS       iterations (default 6)
  FAKE_STEP_S      seconds per iteration (default 0.02)
  FAKE_FAIL        run names that exit 1 at step 2
  FAKE_PREEMPT     run names that, on their first attempt, save at step 2 and exit 3
SIGUSR1/SIGTERM: save a checkpoint at the next step boundary and exit 3.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

received = []
signal.signal(signal.SIGUSR1, lambda *_: received.append("USR1"))
signal.signal(signal.SIGTERM, lambda *_: received.append("TERM"))


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--load", nargs="?", const=True)   # launch/pretrain.py: --load DIR
    parser.add_argument("--seed", type=int, default=0)
    args, _ = parser.parse_known_args()
    run_dir = Path(args.run_dir)
    name = run_dir.name
    steps = int(os.environ.get("FAKE_STEPS", "6"))
    step_s = float(os.environ.get("FAKE_STEP_S", "0.02"))
    latest = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    start = int(latest.read_text()) if args.load and latest.exists() else 0
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run.json", {"name": name, "train_iters": steps, "argv": sys.argv[1:],
                                      "started_at": time.time()})

    def save(step: int) -> None:
        latest.parent.mkdir(exist_ok=True)
        latest.write_text(str(step))

    with open(run_dir / "metrics.jsonl", "a") as metrics:
        for step in range(start + 1, steps + 1):
            if received:
                save(step - 1)
                return 3
            if name in os.environ.get("FAKE_FAIL", "").split(",") and step == 2:
                return 1
            if name in os.environ.get("FAKE_PREEMPT", "").split(",") and step == 2 and start == 0:
                save(1)
                return 3
            time.sleep(step_s)
            loss = 10.0 / (step + 1) + args.seed * 1e-3
            metrics.write(json.dumps({"step": step, "tokens": step * 64, "loss": loss, "lr": 1e-3,
                                      "grad_norm": 1.0, "tokens_per_s": 1.0}) + "\n")
            metrics.flush()
    save(steps)
    write_json(run_dir / "result.json", {"val_loss": 10.0 / (steps + 1), "N": 1, "D": steps * 64,
                                         "compression": "dense", "status": "finished",
                                         "train_loss": 10.0 / (steps + 1) + args.seed * 1e-3,
                                         "steps": steps, "wall_s": 0.1, "ended_at": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
