"""Atomic outputs: nothing half-written survives a failure; files get ordinary permissions."""

import os

import pytest

from pipeline_lib import artifacts


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    artifacts.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), artifacts.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert artifacts.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_outputs_get_the_mode_open_would_give(tmp_path):
    umask = os.umask(0o022)
    try:
        artifacts.write_json(tmp_path / "m.json", {"x": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
