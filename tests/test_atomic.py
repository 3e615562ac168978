"""Atomic artifacts: nothing under the final name until complete; ordinary permissions."""

import os
import stat

import pytest

from recall.atomic import MARKER, atomic_dir, atomic_file, write_json
from recall.errors import RecallError


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
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [MARKER, "new"]


def test_a_folder_recall_did_not_write_is_not_replaced(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.safetensors").write_text("someone's model")
    with pytest.raises(RecallError, match="is a folder recall did not write.*--overwrite"), atomic_dir(theirs):
        pass
    assert (theirs / "model.safetensors").read_text() == "someone's model"
    with atomic_dir(theirs, overwrite=True) as tmp:
        (tmp / "ours").write_text("x")
    assert sorted(p.name for p in theirs.iterdir()) == [MARKER, "ours"]
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # nothing to lose
        (tmp / "ours").write_text("x")


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
