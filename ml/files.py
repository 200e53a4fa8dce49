"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``target`` for the block to write (by path, so that
    writers that take a file name, such as ``torch.onnx.export``, work too). When the block ends,
    the file is flushed to disk and ``os.replace``d onto ``target``; if the block raises, the
    temporary file is removed and ``target`` is left as it was.

    The temporary file is in ``target``'s directory (created if missing), so the rename never
    crosses file systems, and it gets the mode a plain ``open(target, "w")`` would give."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A random name per write: two processes writing the same target never share a temporary file.
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable (Windows cannot open a directory)
        _fsync(target.parent)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically (see ``atomic_path``)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
