"""Reading the files of an import from a folder or a .zip, with its safety checks: names, links, entries that
escape the archive, zip and decompression bombs. Nothing here writes to the database (app.cells.importer does).
"""

from __future__ import annotations

import os
import stat
import threading
import zipfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.cells.images import UnreadableImage, declared_size, open_image, pixel_sha256
from app.errors import InvalidInput
from app.settings import get_settings

# A zip may unpack to at most this many times the upload limit; more is a zip bomb.
ZIP_EXPANSION_LIMIT = 4
# Zip entries up to this size are read into memory; larger ones are decoded from the stream.
_IN_MEMORY_ENTRY_BYTES = 32 * 1024**2
_MESSAGE_REJECTIONS = 20
# Pixels any import may declare on top of its per-byte allowance, so a few small files never trip it.
_PIXEL_ALLOWANCE = 10_000_000

# Files that operating systems and archivers leave behind: ignored without a word.
_IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
# Notes that travel with a data set (README.md, MANIFEST.csv): skipped, and listed in the summary.
SIDECAR_SUFFIXES = {".csv", ".tsv", ".md", ".txt", ".rst", ".json", ".yaml", ".yml", ".xml", ".html", ".pdf"}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Rejection:
    file: str
    reason: str


class ImportRefused(InvalidInput):
    """Some files cannot be imported; nothing was written. ``rejections`` lists them all."""

    def __init__(self, rejections: Sequence[Rejection]) -> None:
        self.rejections = list(rejections)
        count = len(self.rejections)
        shown = "; ".join(f"{r.file}: {r.reason}" for r in self.rejections[:_MESSAGE_REJECTIONS])
        more = f"; and {count - _MESSAGE_REJECTIONS} more" if count > _MESSAGE_REJECTIONS else ""
        noun = "file" if count == 1 else "files"
        super().__init__(
            f"{count} {noun} refused; nothing was imported: {shown}{more}",
            rejections=[asdict(r) for r in self.rejections],
        )


@dataclass(frozen=True)
class Entry:
    """One file of a folder or zip, named by its path below the import root."""

    name: str  # "/"-separated, as shown to people and stored as ``Cell.source_name``
    parts: tuple[str, ...]  # path parts below the ImageFolder root (a zip's wrapper folder removed)
    size: int
    open: Callable[[], AbstractContextManager[BinaryIO]] = field(repr=False, compare=False)


# What a folder or zip holds: the files to import, the ones refused already, and the notes skipped.
Found = tuple[list[Entry], list[Rejection], list[str]]


@dataclass(frozen=True)
class Candidate:
    """A file that decoded cleanly and will become a cell unless its pixels are already known."""

    source_name: str
    class_name: str | None
    sha256: str
    width: int
    height: int
    open: Callable[[], AbstractContextManager[BinaryIO]] = field(repr=False, compare=False)


def printable_name(text: str) -> str:
    """``text`` as valid UTF-8 without NUL: undecodable bytes of a file name shown as ``\\xff``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # os.walk's names keep undecodable bytes this way
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


_NOT_UTF8 = "its name is not valid UTF-8 (the bytes are shown as \\xNN): rename it and import again"


def _is_ignored(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") or part.lower() in _IGNORED_NAMES for part in parts)


def _is_sidecar(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in SIDECAR_SUFFIXES


def strip_wrapper(entries: list[Entry], class_lookup: dict[str, str]) -> list[Entry]:
    """Drop folders that wrap everything (``pbc/neutrophil/x.jpg`` → ``neutrophil/x.jpg``)."""
    while entries:
        first = entries[0].parts[0]
        if first.lower() in class_lookup or any(len(entry.parts) < 2 or entry.parts[0] != first for entry in entries):
            break
        entries = [Entry(e.name, e.parts[1:], e.size, e.open) for e in entries]
    return entries


def looks_labelled(entries: Sequence[Entry], class_names: Sequence[str]) -> bool:
    """An ImageFolder: every image in a sub-folder, and at least one sub-folder named like a class."""
    lookup = {name.lower() for name in class_names}
    return (
        bool(entries) and all(len(e.parts) >= 2 for e in entries) and any(e.parts[0].lower() in lookup for e in entries)
    )


def scan_entries(
    entries: list[Entry],
    *,
    labelled: bool,
    class_names: Sequence[str],
    max_pixels: int,
    min_side: int = 1,
    progress: Progress | None = None,
    total_steps: int | None = None,
) -> tuple[list[Candidate], list[Rejection]]:
    class_lookup = {name.lower(): name for name in class_names}
    allowed = ", ".join(class_names)
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    unknown_folders: dict[str, str] = {}
    total = total_steps if total_steps is not None else len(entries)
    for done, entry in enumerate(entries, start=1):
        class_name: str | None = None
        if labelled:
            if len(entry.parts) < 2:
                rejections.append(
                    Rejection(entry.name, "not inside a class folder; a labelled import needs CLASS/IMAGE")
                )
            else:
                class_name = class_lookup.get(entry.parts[0].lower())
                if class_name is None:
                    folder = entry.name[: len(entry.name) - len("/".join(entry.parts[1:]))]
                    unknown_folders.setdefault(entry.parts[0], folder)
        try:
            if entry.size == 0:
                raise UnreadableImage("empty file (0 bytes)")
            with entry.open() as fp:
                image = open_image(fp, max_pixels=max_pixels, min_side=min_side)
                sha256 = pixel_sha256(image)
                width, height = image.size
                image.close()
        except UnreadableImage as exc:
            rejections.append(Rejection(entry.name, exc.reason))
        except OSError as exc:
            rejections.append(Rejection(entry.name, f"cannot read the file: {exc}"))
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            rejections.append(Rejection(entry.name, f"cannot read the zip entry: {exc}"))
        except Exception as exc:  # noqa: BLE001 - an odd image must be a rejection, never a crash
            rejections.append(Rejection(entry.name, f"cannot decode ({exc.__class__.__name__}: {exc})"))
        else:
            candidates.append(Candidate(entry.name, class_name, sha256, width, height, entry.open))
        if progress:
            progress(done, total)
    for class_folder, folder in unknown_folders.items():
        rejections.append(
            Rejection(
                folder,
                f"unknown class folder {class_folder!r}; allowed: {allowed} "
                "(import without --labelled to import these cells unlabelled)",
            )
        )
    return candidates, rejections


def folder_entries(path: Path) -> Found:
    """Every file below ``path``; links that leave the folder are rejections."""
    root = path.resolve()
    entries: list[Entry] = []
    rejections: list[Rejection] = []
    skipped: list[str] = []

    def opener(file: Path) -> Callable[[], AbstractContextManager[BinaryIO]]:
        return lambda: file.open("rb")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        relative_dir = here.relative_to(root).parts
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored([d]))
        for dirname in [d for d in dirnames if not _is_utf8(d)]:
            dirnames.remove(dirname)  # not descended into: one rejection for the folder
            rejections.append(Rejection(printable_name("/".join((*relative_dir, dirname)) + "/"), _NOT_UTF8))
        for dirname in dirnames:
            full = here / dirname
            # os.walk does not follow links; one out of the folder is refused, one inside is redundant.
            if full.is_symlink() and not full.resolve().is_relative_to(root):
                folder = "/".join((*relative_dir, dirname)) + "/"
                rejections.append(Rejection(folder, "symbolic link pointing outside the folder"))
        for filename in sorted(filenames):
            parts = (*relative_dir, filename)
            name = "/".join(parts)
            if _is_ignored(parts):
                continue
            if not _is_utf8(filename):
                rejections.append(Rejection(printable_name(name), _NOT_UTF8))
                continue
            full = here / filename
            if full.is_symlink() and not full.resolve().is_relative_to(root):
                rejections.append(Rejection(name, "symbolic link pointing outside the folder"))
                continue
            if not full.is_file():
                rejections.append(Rejection(name, "not a regular file"))
                continue
            if _is_sidecar(filename):
                skipped.append(name)
                continue
            entries.append(Entry(name, parts, full.stat().st_size, opener(full)))
    return entries, rejections, skipped


class _Locked(AbstractContextManager):
    """A large zip entry, decoded from the stream while holding the archive's lock."""

    def __init__(self, stream: BinaryIO, lock: threading.Lock) -> None:
        self.stream, self.lock = stream, lock

    def __enter__(self) -> BinaryIO:
        self.lock.acquire()
        return self.stream

    def __exit__(self, *exc_info: object) -> None:
        self.stream.close()
        self.lock.release()


def zip_entries(archive: zipfile.ZipFile) -> Found:
    """Every file in ``archive``; entries that escape it, links and encrypted entries are rejections."""
    entries: list[Entry] = []
    rejections: list[Rejection] = []
    skipped: list[str] = []

    lock = threading.Lock()  # entries are read from several threads; one reader at a time

    def read(info: zipfile.ZipInfo) -> BytesIO:
        with lock:
            return BytesIO(archive.read(info))

    def opener(info: zipfile.ZipInfo) -> Callable[[], AbstractContextManager[BinaryIO]]:
        if info.file_size <= _IN_MEMORY_ENTRY_BYTES:
            return lambda: read(info)
        return lambda: _Locked(archive.open(info), lock)

    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        if info.is_dir():
            continue
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts:
            rejections.append(Rejection(info.filename, "entry escapes its folder (absolute path or '..')"))
            continue
        if _is_ignored(parts):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            rejections.append(Rejection(info.filename, "symbolic link; zip entries must be plain files"))
            continue
        if info.flag_bits & 0x1:
            rejections.append(Rejection(info.filename, "encrypted entry"))
            continue
        if _is_sidecar(name):
            skipped.append(name)
            continue
        entries.append(Entry(name, parts, info.file_size, opener(info)))
    return entries, rejections, skipped


def check_pixel_budget(entries: Sequence[Entry], *, source: str, max_pixels: int) -> None:
    """Refuse, before decoding any pixel, an import whose headers declare more pixels than it may decode.

    One import may decode at most ``max_import_pixels`` in all, and at most
    ``max_import_pixels_per_byte`` per byte of its image files (plus a small allowance): a few
    bytes that unpack to many megapixels are a decompression bomb. Files over the per-image
    limit are left out: the scan refuses each of them by name.
    """
    settings = get_settings()
    declared: list[tuple[int, str, int, int]] = []
    for entry in entries:
        try:
            with entry.open() as fp:
                size = declared_size(fp)
        except Exception:  # noqa: BLE001 - the scan names unreadable files
            size = None
        if size is not None and 0 < size[0] * size[1] <= max_pixels:
            declared.append((size[0] * size[1], entry.name, *size))
    pixels = sum(item[0] for item in declared)
    file_bytes = sum(entry.size for entry in entries)
    budget = min(settings.max_import_pixels, settings.max_import_pixels_per_byte * file_bytes + _PIXEL_ALLOWANCE)
    if pixels <= budget:
        return
    largest = ", ".join(f"{name} ({width}×{height} px)" for _, name, width, height in sorted(declared)[::-1][:3])
    raise ImportRefused(
        [
            Rejection(
                source,
                f"decompression bomb: the images declare {pixels / 1e6:,.1f} MP in all from {file_bytes:,} bytes, "
                f"over this import's limit of {budget / 1e6:,.1f} MP (at most {settings.max_import_pixels / 1e6:,.0f} "
                f"MP, and {settings.max_import_pixels_per_byte} px per byte of image files); largest: {largest}",
            )
        ]
    )


def stream_size(file: BinaryIO) -> int:
    file.seek(0, os.SEEK_END)
    size = file.tell()
    file.seek(0)
    return size


def open_zip(file: BinaryIO | Path, *, max_bytes: int | None, name: str | None) -> tuple[zipfile.ZipFile, str]:
    """Open the .zip ``file`` and its display name; refuse one that is too big, unreadable or a zip bomb."""
    max_bytes = max_bytes if max_bytes is not None else get_settings().max_upload_bytes
    if isinstance(file, (str, Path)):
        path = Path(file)
        name = printable_name(name or path.name)
        if not path.is_file():
            raise InvalidInput(f"{printable_name(str(path))}: not a file")
        size = path.stat().st_size
    else:
        name = printable_name(name or Path(str(getattr(file, "name", "") or "upload.zip")).name)
        size = stream_size(file)
    if size > max_bytes:
        too_big = Rejection(name, f"the zip is {size:,} bytes, over the limit of {max_bytes:,} bytes")
        raise ImportRefused([too_big])
    try:
        archive = zipfile.ZipFile(file)
    except UnicodeDecodeError as exc:  # an entry flagged UTF-8 (bit 11) with a name that is not
        raw = exc.object if isinstance(exc.object, bytes) else b""
        shown = raw.decode("utf-8", "backslashreplace")
        raise ImportRefused(
            [
                Rejection(
                    f"{name}: {shown}",
                    "the zip marks this entry's name as UTF-8 but it is not valid UTF-8 (the bytes are shown "
                    "as \\xNN); rename the file and make the zip again",
                )
            ]
        ) from exc
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ImportRefused([Rejection(name, f"not a zip file ({exc})")]) from exc
    unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > ZIP_EXPANSION_LIMIT * max_bytes:
        archive.close()
        raise ImportRefused(
            [
                Rejection(
                    name,
                    f"zip bomb: it unpacks to {unpacked:,} bytes, over {ZIP_EXPANSION_LIMIT}× "
                    f"the upload limit of {max_bytes:,} bytes",
                )
            ]
        )
    return archive, name
