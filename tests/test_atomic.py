"""Atomic artifacts: nothing under the final name until complete; ordinary permissions."""

import os
import stat

import pytest

from recall.atomic import atomic_dir, atomic_file, write_json


def test_failed_write_leaves_nothing_and_keeps_the_old(tmp_path):
    write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "a.json") as fh:
        fh.write('{"v": 2')
        raise RuntimeError("killed")
    assert (tmp_path / "a.json").read_text().strip().endswith("}") and '"v": 1' in (tmp_path / "a.json").read_text()
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_dir_is_replaced_whole(tmp_path):
    for content in ("old", "new"):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / content).write_text(content)
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new"]


def test_outputs_have_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
