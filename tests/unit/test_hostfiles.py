"""Host files are replaced whole: a failed write leaves the old file as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from docker_xms.adapters import hostfiles
from docker_xms.errors import XmsError


def test_a_file_is_replaced_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "daemon.json"
    hostfiles.save_text(path, '{"a": 1}\n', mode=0o600)
    hostfiles.save_text(path, '{"a": 2}\n')
    assert path.read_text() == '{"a": 2}\n'
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["daemon.json"]


def test_a_write_that_fails_leaves_the_old_file_and_no_leftover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "daemon.json"
    hostfiles.save_text(path, "old\n")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(XmsError, match="No space left on device"):
        hostfiles.save_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.json"]


def test_only_files_no_one_else_may_write_count_as_ours(tmp_path: Path) -> None:
    mine = tmp_path / "probe"
    mine.write_bytes(b"x")
    mine.chmod(0o755)
    assert hostfiles.owned_by_us(mine, tmp_path / "missing")
    mine.chmod(0o775)
    assert not hostfiles.owned_by_us(mine)
    mine.chmod(0o755)
    os.chown(mine, 65534, 65534)
    assert not hostfiles.owned_by_us(mine)
