"""docs/convert.md's generation example runs as written on an exported model of the demo's kind: a
tiny Llama trained by launch/pretrain.py with a SentencePiece tokenizer (trained on the shipped
corpus), exported with the documented command, then the documented Python block, verbatim."""
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_csl.convert import cli

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "convert.md"


def _example_blocks():
    """The shell command and the Python block that follow 'Generation from a model of the demo'."""
    text = DOC.read_text()
    section = text[text.index("Generation from a model of the demo"):]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)
    (shell_lang, shell), (py_lang, python) = blocks[:2]
    assert shell_lang == "" and py_lang == "python"
    return shell.strip(), python


def test_generation_example_runs_as_written(tmp_path, monkeypatch, capsys):
    import sentencepiece as spm

    from megatron_csl.data.reference_files import WIKI_CORPUS
    from megatron_csl.data.tokenizer import train_tokenizer

    shell, python = _example_blocks()
    argv = shell.split()
    assert argv[:2] == ["python", "tools/convert_checkpoint.py"]
    run_dir = Path(argv[argv.index("--load") + 1])
    assert run_dir.parts[:2] == ("demo_out", "runs")

    # The demo's layout under a scratch folder: demo_out/tokenizer, demo_out/runs/<run>.
    monkeypatch.chdir(tmp_path)
    tokenizer = train_tokenizer([str(WIKI_CORPUS)], "demo_out/tokenizer/demo_spm", vocab_size=512,
                                sample_docs=2000, threads=1, progress=False).model_path
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "pretrain.py"), "--num-layers", "2", "--hidden-size", "80",
         "--num-attention-heads", "4", "--ffn-hidden-size", "224", "--seq-length", "64",
         "--tokenizer-model", tokenizer, "--mock-data", "--train-iters", "3", "--lr", "1e-3",
         "--micro-batch-size", "2", "--eval-iters", "1", "--no-tensorboard", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The documented command (its parent folder demo_out/hf does not exist yet).
    assert cli.main(argv[2:] + ["--quiet"]) == 0, capsys.readouterr().err
    export = Path(argv[argv.index("--output") + 1])
    assert (export / "tokenizer.json").is_file()

    # The documented Python block, verbatim.
    script = tmp_path / "example.py"
    script.write_text(python)
    capsys.readouterr()
    namespace = runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    prompt_ids = namespace["prompt"]["input_ids"][0].tolist()
    assert prompt_ids == sp.encode("The history of the")  # no BOS, SentencePiece's ids
    out = namespace["out"][0].tolist()
    assert out[:len(prompt_ids)] == prompt_ids and len(out) == len(prompt_ids) + 40
    assert printed.startswith("The history of the") and len(printed.strip()) > len("The history of the")
