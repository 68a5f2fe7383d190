"""Fixtures for the sweep tests: sweep files in a temporary folder, a stand-in repository whose
launch/pretrain.py is the fast fake, and a real one-node Slurm cluster (slurm/local-cluster.sh)."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
SWEEP_PY = REPO / "launch" / "sweep.py"
CLUSTER_SH = REPO / "slurm" / "local-cluster.sh"

TINY_SHAPE = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "ffn_hidden_size": 64}


def base_sweep(**overrides) -> dict:
    """A small valid sweep (mock data, explicit tiny shape, local profile) to vary in tests."""
    sweep = {
        "name": "t",
        "cluster": "local",
        "models": [{"name": "tiny", **TINY_SHAPE}],
        "formats": ["dense"],
        "tokens_per_param": [0.1],
        "seeds": [1],
        "data": {"mock": True},
        "training": {"seq_length": 32, "vocab_size": 128, "micro_batch_size": 2,
                     "global_batch_size": 4, "lr": 1e-3, "tensorboard": False},
    }
    sweep.update(overrides)
    return sweep


@pytest.fixture
def write_sweep(tmp_path):
    """write_sweep(dict or **overrides) -> path of a sweep YAML in tmp_path."""
    counter = [0]

    def write(sweep=None, **overrides):
        counter[0] += 1
        path = tmp_path / f"sweep{counter[0]}.yaml"
        path.write_text(yaml.safe_dump(sweep if sweep is not None else base_sweep(**overrides)))
        return path

    return write


@pytest.fixture
def fake_repo(tmp_path):
    """A folder laid out like the repository, whose launch/pretrain.py is the fast stand-in."""
    repo = tmp_path / "fake_repo"
    (repo / "launch").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "fake_pretrain.py", repo / "launch" / "pretrain.py")
    return repo


def run_sweep_cli(*args, env=None, timeout=240, cwd=REPO):
    """Run launch/sweep.py as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(SWEEP_PY), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real slurmctld + slurmd on loopback in a private folder; yields the environment
    (SLURM_CONF set) for Slurm commands and sweep.py. Skips, with the reason, where impossible."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (slurmd launches jobs; apt-get installs it)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    folder = tmp_path_factory.mktemp("slurm")
    os.chmod(folder, 0o755)
    env = dict(os.environ, SLURM_LOCAL_DIR=str(folder),
               SLURM_LOCAL_CTLD_PORT=str(_free_port()), SLURM_LOCAL_SLURMD_PORT=str(_free_port()))
    started = subprocess.run(["bash", str(CLUSTER_SH), "start"], env=env, capture_output=True,
                             text=True, timeout=600)
    if started.returncode != 0:
        message = started.stderr.strip()[-2000:]
        if "apt-get" in message:
            pytest.skip(f"could not install Slurm: {message}")
        pytest.fail(f"slurm/local-cluster.sh start failed:\n{message}")
    env["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "stop"], env=env, capture_output=True, timeout=120)


E2E_SWEEP = DATA / "e2e.yaml"
E2E_REFERENCE_RUNS = ("a_dense_tpp0.75_s7", "b_dense_tpp0.75_s7")


def read_result(run_dir: Path) -> dict:
    import json

    return json.loads((Path(run_dir) / "result.json").read_text())


@pytest.fixture(scope="session")
def e2e_reference(tmp_path_factory):
    """Uninterrupted results of the e2e sweep's a_dense (1 process) and b_dense (torchrun, 2
    processes, gloo) from the local executor and the real launch/pretrain.py: {run: result.json}."""
    out = tmp_path_factory.mktemp("e2e_reference")
    done = run_sweep_cli("submit", E2E_SWEEP, "--executor", "local", "--output-dir", out,
                         "--parallel", "2", "--no-progress",
                         *(a for run in E2E_REFERENCE_RUNS for a in ("--only", run)), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return {run: read_result(out / run) for run in E2E_REFERENCE_RUNS}
