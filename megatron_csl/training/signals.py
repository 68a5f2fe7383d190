"""Preemption signals: SIGTERM / SIGUSR1 / SIGINT ask the run to checkpoint and exit with code 3.

SIGINT (Ctrl-C) is treated like SIGTERM rather than as a KeyboardInterrupt traceback in the middle
of a step: the run stops at the next step boundary with a checkpoint.

The handler only records the signal; the training loop polls ``received`` at every step
boundary, agrees with all other ranks (an all-reduce, since a scheduler may signal only some
ranks), saves a checkpoint and exits with ``REQUEUE_EXIT_CODE`` so the launcher requeues it.
"""
import signal
import sys
from typing import Optional, Sequence

REQUEUE_EXIT_CODE = 3
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionWatcher:
    """Records the first preemption signal; restores the previous handlers on ``close``."""

    def __init__(self, signals: Sequence[int] = PREEMPTION_SIGNALS, verbose: bool = True):
        self.received: Optional[int] = None
        self._verbose = verbose
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):  # noqa: ARG002 (signal handler signature)
        if self.received is None:
            self.received = signum
            if self._verbose:
                # Runs in the main thread between bytecodes, so printing is safe here.
                print(f"[pretrain] received {signal.Signals(signum).name}: will save a checkpoint "
                      f"at the next step boundary and exit with code {REQUEUE_EXIT_CODE}",
                      file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.received is not None

    def close(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
