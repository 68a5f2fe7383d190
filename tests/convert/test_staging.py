"""The converter's output directory: missing parents created, normal permissions, all or nothing."""
import os
import stat

import pytest

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.staging import check_output_dir, staged_output_dir


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_missing_parents_are_created(tmp_path):
    output = tmp_path / "hf" / "nested" / "dense"
    with staged_output_dir(output) as staging:
        (staging / "config.json").write_text("{}")
    assert (output / "config.json").read_text() == "{}"


def test_outputs_get_umask_permissions_not_owner_only(tmp_path, umask_022):
    output = tmp_path / "hf" / "dense"
    with staged_output_dir(output) as staging:
        (staging / "sub").mkdir()
        fd = os.open(staging / "sub" / "weights.bin", os.O_CREAT | os.O_WRONLY, 0o600)  # as mkstemp does
        os.close(fd)
        (staging / "config.json").write_text("{}")
    assert _mode(output) == 0o755
    assert _mode(output / "sub") == 0o755
    assert _mode(output / "config.json") == 0o644
    assert _mode(output / "sub" / "weights.bin") == 0o644


def test_failure_leaves_nothing_and_parent_file_is_refused(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output_dir(output) as staging:
            (staging / "half").write_text("x")
            raise RuntimeError("boom")
    assert not output.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "file" / "sub" / "out")
