"""Sharded (2 gloo ranks) results equal the slice of the unsharded ones, values and gradients."""
import json
import socket
import time

import torch.multiprocessing as mp

from .sharded_worker import ACTIVATION_SPECS, WEIGHT_SPECS, check_formats

TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_equals_slice_of_unsharded(tmp_path):
    world = 2
    ctx = mp.start_processes(check_formats,
                             args=(world, f"tcp://127.0.0.1:{_free_port()}", str(tmp_path)),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                raise AssertionError(f"2-rank compression check did not finish in {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    expected = 2 * 2 * len(WEIGHT_SPECS) + 2 * len(ACTIVATION_SPECS)
    for rank in range(world):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["checked"] == expected
        assert result["failures"] == [], "\n".join(result["failures"])
