"""torchrun that passes on its workers' exit code: `python -m megatron_csl.sweeps.torchrun ...`.

torchrun (torch.distributed.run) reports any failed worker as exit 1, so a multi-process run that
was preempted and saved a checkpoint (every rank exits 3, "requeue me") would look like an error
to the local executor. This runs torchrun's own launcher with the same arguments and, when the
workers fail, exits with their common exit code (1 if they disagree or died of a signal).
"""
from __future__ import annotations

import sys
from typing import Optional


def exit_code_of(failures: dict) -> int:
    """The code every failed worker exited with, else 1 (torchrun's own)."""
    codes = {failure.exitcode for failure in failures.values()}
    code = codes.pop() if len(codes) == 1 else 1
    return code if code > 0 else 1   # negative: killed by a signal


def main(argv: Optional[list] = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        print(e.format_msg(), file=sys.stderr, flush=True)
        return exit_code_of(e.failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
