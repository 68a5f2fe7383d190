"""torchrun that passes on its workers' exit code: `python -m megatron_csl.sweeps.torchrun ...`.

torchrun (torch.distributed.run) reports any failed worker as exit 1, so a multi-process run that
was preempted and saved a checkpoint (every rank exits 3, "requeue me") would look like an error
to the local executor. This runs torchrun's own launcher with the same arguments and, when the
workers fail, exits with their common exit code (1 if they disagree or all died of a signal).
Workers killed by a signal do not count when others exited with a code: torchrun stops the
remaining workers (SIGTERM) as soon as one fails, so a bad flag that every rank rejects with
exit 2 would otherwise sometimes come back as 1, depending on which rank was faster.
"""
from __future__ import annotations

import sys
from typing import Optional


def exit_code_of(failures: dict) -> int:
    """The code every worker that exited by itself exited with, else 1 (torchrun's own).
    Negative codes (killed by a signal, usually by torchrun after the first failure) are left
    out."""
    codes = {failure.exitcode for failure in failures.values() if failure.exitcode > 0}
    return codes.pop() if len(codes) == 1 else 1


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
