"""``ml.files.atomic_path``: the target holds the old content or the new, never half, and no
temporary file outlives the write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ml import files
from ml.files import atomic_path, atomic_write_text


class WriteFailed(Exception):
    pass


def test_the_content_lands_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "card.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent  # same directory: the rename never crosses file systems
        assert tmp.exists() and not target.exists()
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert os.listdir(target.parent) == ["card.json"]


def test_a_failing_write_leaves_the_target_untouched_and_removes_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(WriteFailed), atomic_path(target) as tmp:
        tmp.write_text("half of the n")
        raise WriteFailed
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize("error", [WriteFailed, KeyboardInterrupt])
def test_a_failing_first_write_creates_nothing(tmp_path: Path, error: type[BaseException]) -> None:
    with pytest.raises(error), atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_text("half")
        raise error
    assert os.listdir(tmp_path) == []


def test_a_failing_replace_removes_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # a file cannot replace a directory
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert os.listdir(tmp_path) == ["taken"] and target.is_dir()


def test_the_file_is_on_disk_before_it_replaces_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + ("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(source, destination) -> None:
        events.append("replace")
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    atomic_write_text(tmp_path / "card.json", "{}")
    assert events[:2] == ["fsync file", "replace"]


def test_the_file_gets_the_mode_of_a_plain_write(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic", "x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode
