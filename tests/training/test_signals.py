"""The preemption watcher records SIGTERM/SIGUSR1 and restores the previous handlers."""
import os
import signal

from megatron_csl.training.signals import REQUEUE_EXIT_CODE, PreemptionWatcher


def test_requeue_exit_code_is_three():
    assert REQUEUE_EXIT_CODE == 3


def test_signal_is_recorded_not_fatal_and_handlers_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionWatcher(verbose=False) as watcher:
        assert not watcher.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watcher.requested and watcher.received == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)          # a second signal keeps the first
        assert watcher.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before
