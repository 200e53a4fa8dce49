"""Import of folders and zips, on PostgreSQL and SQLite: labels, duplicates, every refusal, the CLI."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import undefer
from typer.testing import CliRunner

from app.cells.images import UnreadableImage, open_image
from app.cells.importer import BATCH_SIZE, import_folder, import_zip
from app.cells.sources import ImportRefused, folder_entries, scan_entries
from app.db import session_scope
from app.errors import Conflict
from app.models import Cell, ImportBatch, Label
from cli.importing import import_command
from tests.support.database import sqlite_lock_probe
from tests.support.factories import make_user
from tests.support.images import (
    DEFAULT_CLASSES,
    huge_png,
    image_bytes,
    make_cell_image,
    make_flat_folder,
    make_imagefolder,
    make_zip,
    truncated,
    write_image,
    zip_folder,
)


def counts() -> dict[str, int]:
    with session_scope() as session:
        return {
            "cells": session.scalar(select(func.count()).select_from(Cell)),
            "labels": session.scalar(select(func.count()).select_from(Label)),
            "imports": session.scalar(select(func.count()).select_from(ImportBatch)),
        }


def test_imagefolder_imports_as_expert_labels(any_db_url: str, tmp_path: Path) -> None:
    admin = make_user("ada", role="admin")
    files = make_imagefolder(tmp_path / "set", classes=DEFAULT_CLASSES, per_class=2)
    (tmp_path / "set" / "neutrophil").rename(tmp_path / "set" / "Neutrophil")  # matched case-insensitively
    (tmp_path / "set" / ".DS_Store").write_bytes(b"\0junk")
    calls: list[tuple[int, int]] = []

    with session_scope() as session:
        summary = import_folder(
            session=session,
            path=tmp_path / "set",
            labelled=True,
            user_id=admin,
            progress=lambda done, total: calls.append((done, total)),
        )

    assert (summary.imported, summary.duplicates, summary.labelled, summary.skipped) == (10, 0, 10, [])
    assert calls[-1] == (20, 20) and [done for done, _ in calls] == sorted(done for done, _ in calls)
    with session_scope() as session:
        cells = session.scalars(select(Cell).order_by(Cell.id)).all()
        labels = {label.cell_id: label for label in session.scalars(select(Label))}
        batch = session.get(ImportBatch, summary.import_id)
        assert (batch.user_id, batch.labelled, batch.imported, batch.duplicates) == (admin, True, 10, 0)
        assert batch.source.endswith("set")
        for cell in cells:
            label = labels[cell.id]
            assert (label.kind, label.source, label.user_id, label.undoes_id) == (
                "label",
                "import",
                admin,
                None,
            )
            assert cell.current_label_id == label.id
            assert cell.source_name.lower().startswith(f"{label.value}/")  # canonical class name stored
            assert cell.import_id == batch.id
            assert 0 <= cell.random_key < 1
            assert len(cell.model_input) == 64 * 64 * 3
        assert sorted(label.value for label in labels.values()) == sorted(name for name in files for _ in range(2))


def test_flat_folder_imports_unlabelled_and_skips_notes(any_db_url: str, tmp_path: Path) -> None:
    make_flat_folder(tmp_path / "flat", count=4)
    make_flat_folder(tmp_path / "flat" / "slide-2" / "deeper", count=2, seed=9)  # walked recursively
    (tmp_path / "flat" / "README.md").write_text("cells from slide 1")

    with session_scope() as session:
        summary = import_folder(session=session, path=tmp_path / "flat", labelled=False, user_id=None)

    assert (summary.imported, summary.duplicates, summary.labelled) == (6, 0, 0)
    assert summary.skipped == ["README.md"]
    assert counts() == {"cells": 6, "labels": 0, "imports": 1}
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(Cell.current_label_id.is_not(None))) == 0
        names = set(session.scalars(select(Cell.source_name)))
    assert "slide-2/deeper/cell_0001.png" in names


def _three_bands(width: int, height: int) -> Image.Image:
    """Red left quarter, green middle, blue right quarter: a centre crop keeps only green."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 4] = (255, 0, 0)
    pixels[:, width // 4 : width - width // 4] = (0, 255, 0)
    pixels[:, width - width // 4 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_non_square_and_large_images_are_cropped_and_downscaled(any_db_url: str, tmp_path: Path) -> None:
    write_image(tmp_path / "in" / "wide.png", _three_bands(300, 150))
    write_image(tmp_path / "in" / "large.png", make_cell_image(1, (600, 400)))
    write_image(tmp_path / "in" / "small.png", make_cell_image(2, 40))

    with session_scope() as session:
        import_folder(session=session, path=tmp_path / "in", labelled=False, user_id=None)
        cells = {
            cell.source_name: cell
            for cell in session.scalars(select(Cell).options(undefer(Cell.display_png), undefer(Cell.model_input)))
        }

    assert {name: cell.display_size for name, cell in cells.items()} == {
        "wide.png": 150,
        "large.png": 256,
        "small.png": 40,
    }
    for cell in cells.values():
        display = Image.open(io.BytesIO(cell.display_png))
        assert display.format == "PNG" and display.size == (cell.display_size, cell.display_size)
        assert len(cell.model_input) == 12288
    wide = np.asarray(Image.open(io.BytesIO(cells["wide.png"].display_png)).convert("RGB"))
    assert (wide == (0, 255, 0)).all()
    model = np.frombuffer(cells["wide.png"].model_input, dtype=np.uint8).reshape(64, 64, 3)
    assert model[..., 1].min() > 200 and model[..., 0].max() < 50


def test_png_jpeg_tiff_and_bmp_are_accepted(any_db_url: str, tmp_path: Path) -> None:
    for index, fmt in enumerate(("PNG", "JPEG", "TIFF", "BMP")):
        write_image(tmp_path / "in" / f"cell.{fmt.lower()}", make_cell_image(index, (48, 40)), fmt)

    with session_scope() as session:
        summary = import_folder(session=session, path=tmp_path / "in", labelled=False, user_id=None)

    assert summary.imported == 4


def test_duplicates_are_skipped_and_counted(any_db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    make_flat_folder(folder, count=3)
    same = make_cell_image(0, 32)  # the pixels of cell_0000.png
    write_image(folder / "again.bmp", same, "BMP")
    write_image(folder / "again.tif", same, "TIFF")

    with session_scope() as session:
        first = import_folder(session=session, path=folder, labelled=False, user_id=None)
    with session_scope() as session:
        second = import_folder(session=session, path=folder, labelled=False, user_id=None)

    assert (first.imported, first.duplicates) == (3, 2)
    assert (second.imported, second.duplicates) == (0, 5)
    assert counts() == {"cells": 3, "labels": 0, "imports": 2}
    with session_scope() as session:
        assert session.get(ImportBatch, second.import_id).duplicates == 5


def test_zip_with_class_folders_is_detected_as_labelled(any_db_url: str, tmp_path: Path) -> None:
    admin = make_user("ada", role="admin")
    make_imagefolder(tmp_path / "set", classes=("lymphocyte", "basophil"), per_class=2)
    archive = zip_folder(tmp_path / "set", tmp_path / "set.zip", prefix="export/")
    with zipfile.ZipFile(archive, "a") as extra:
        extra.writestr("__MACOSX/export/._lymphocyte_000.png", b"\0resource fork")
        extra.writestr("export/Thumbs.db", b"\0")

    with session_scope() as session, archive.open("rb") as upload:
        summary = import_zip(session=session, file=upload, labelled=None, user_id=admin)

    assert (summary.imported, summary.labelled) == (4, 4)
    with session_scope() as session:
        assert sorted(session.scalars(select(Label.value))) == ["basophil"] * 2 + ["lymphocyte"] * 2
        assert "export/basophil/basophil_000.png" in set(session.scalars(select(Cell.source_name)))


def test_flat_zip_imports_unlabelled(any_db_url: str, tmp_path: Path) -> None:
    data = make_zip({f"cell{index}.png": image_bytes(make_cell_image(index)) for index in range(3)})

    with session_scope() as session:
        summary = import_zip(session=session, file=io.BytesIO(data), labelled=None, user_id=None)

    assert (summary.imported, summary.labelled) == (3, 0)


# --- refusals: each names the file and the reason, and leaves the database as it was -------------

Case = Callable[[Path], tuple[Callable[..., object], str, str]]


def _folder_with(bad_name: str, bad_bytes: bytes) -> Case:
    def build(tmp: Path):
        make_flat_folder(tmp / "in", count=2, seed=5)
        (tmp / "in" / bad_name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "in" / bad_name).write_bytes(bad_bytes)
        return lambda session: import_folder(session=session, path=tmp / "in", labelled=False, user_id=None)

    return build


def _zip_with(bad_name: str, bad_bytes: bytes, **import_args: object) -> Case:
    def build(tmp: Path):
        entries = [(f"ok{index}.png", image_bytes(make_cell_image(50 + index))) for index in range(2)]
        data = make_zip([*entries, (bad_name, bad_bytes)])
        return lambda session: import_zip(
            session=session, file=io.BytesIO(data), labelled=False, user_id=None, **import_args
        )

    return build


def _unknown_class(tmp: Path):
    make_imagefolder(tmp / "set", classes=("neutrophil", "erythroblast"), per_class=1)
    admin = make_user("ada", role="admin")
    return lambda session: import_folder(session=session, path=tmp / "set", labelled=True, user_id=admin)


def _image_outside_class_folders(tmp: Path):
    make_imagefolder(tmp / "set", classes=("neutrophil",), per_class=1)
    write_image(tmp / "set" / "loose.png", make_cell_image(12))
    admin = make_user("ada", role="admin")
    return lambda session: import_folder(session=session, path=tmp / "set", labelled=True, user_id=admin)


def _not_a_zip(tmp: Path):
    (tmp / "cells.zip").write_bytes(b"PK but not really a zip file")
    return lambda session: import_zip(session=session, file=tmp / "cells.zip", labelled=None, user_id=None)


def _symlink_out(tmp: Path):
    make_flat_folder(tmp / "in", count=1)
    write_image(tmp / "elsewhere" / "secret.png", make_cell_image(77))
    os.symlink(tmp / "elsewhere" / "secret.png", tmp / "in" / "link.png")
    return lambda session: import_folder(session=session, path=tmp / "in", labelled=False, user_id=None)


def _zip_symlink(tmp: Path):
    link = zipfile.ZipInfo("link.png")
    link.external_attr = 0o120777 << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok.png", image_bytes(make_cell_image(3)))
        archive.writestr(link, "../../etc/passwd")
    return lambda session: import_zip(session=session, file=buffer, labelled=False, user_id=None)


JPEG = image_bytes(make_cell_image(1, 96), "JPEG")
BAD_INPUTS: dict[str, tuple[Case, str, str]] = {
    "not an image": (_folder_with("notes.png", b"these are not pixels\n" * 20), "notes.png", "not an image"),
    "unknown binary": (_folder_with("data.bin", os.urandom(256)), "data.bin", "not an image"),
    "zero bytes": (_folder_with("empty.png", b""), "empty.png", "0 bytes"),
    "truncated jpeg": (_folder_with("cut.jpg", truncated(JPEG)), "cut.jpg", "truncated"),
    "over 50 MP": (_folder_with("huge.png", huge_png(8000, 7000)), "huge.png", "decompression bomb"),
    "unsupported format": (
        _folder_with("anim.gif", image_bytes(make_cell_image(4), "GIF")),
        "anim.gif",
        "unsupported image format GIF",
    ),
    "unknown class folder": (_unknown_class, "erythroblast/", "unknown class folder 'erythroblast'"),
    "symlink out of the folder": (_symlink_out, "link.png", "symbolic link"),
    "image outside class folders": (_image_outside_class_folders, "loose.png", "not inside a class folder"),
    "not a zip": (_not_a_zip, "cells.zip", "not a zip file"),
    "zip slip": (_zip_with("../evil.png", image_bytes(make_cell_image(8))), "../evil.png", "escapes"),
    "absolute zip entry": (
        _zip_with("/tmp/evil.png", image_bytes(make_cell_image(9))),
        "/tmp/evil.png",
        "escapes",
    ),
    "zip symlink": (_zip_symlink, "link.png", "symbolic link"),
    "truncated jpeg in zip": (_zip_with("cut.jpg", truncated(JPEG)), "cut.jpg", "truncated"),
    "oversized zip": (
        _zip_with("x.png", image_bytes(make_cell_image(10)), max_bytes=1000),
        "upload.zip",
        "over the limit",
    ),
    "zip bomb": (_zip_with("zeros.png", bytes(200_000), max_bytes=20_000), "upload.zip", "zip bomb"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_changes(any_db_url: str, tmp_path: Path, case: str) -> None:
    make_flat_folder(tmp_path / "earlier", count=2, seed=99)
    with session_scope() as session:
        import_folder(session=session, path=tmp_path / "earlier", labelled=False, user_id=None)
    build, bad_file, reason = BAD_INPUTS[case]
    run = build(tmp_path)
    before = counts()

    with pytest.raises(ImportRefused) as refused, session_scope() as session:
        run(session)

    assert [r.file for r in refused.value.rejections] == [bad_file]
    assert reason in refused.value.rejections[0].reason
    assert f"{bad_file}: " in refused.value.message and "nothing was imported" in refused.value.message
    assert refused.value.status_code == 422
    assert counts() == before


def test_refusal_lists_every_bad_file(any_db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    make_flat_folder(folder, count=2)
    (folder / "a.png").write_bytes(b"")
    (folder / "b.png").write_bytes(b"plain text")
    (folder / "c.jpg").write_bytes(truncated(JPEG))

    with pytest.raises(ImportRefused) as refused, session_scope() as session:
        import_folder(session=session, path=folder, labelled=False, user_id=None)

    assert refused.value.message.startswith("3 files refused; nothing was imported: a.png: empty file")
    assert [r.file for r in refused.value.rejections] == ["a.png", "b.png", "c.jpg"]
    assert refused.value.detail["rejections"][1] == {
        "file": "b.png",
        "reason": refused.value.rejections[1].reason,
    }
    assert counts() == {"cells": 0, "labels": 0, "imports": 0}


def test_a_file_changed_between_the_passes_is_refused_and_rolled_back(any_db_url: str, tmp_path: Path) -> None:
    files = make_flat_folder(tmp_path / "in", count=BATCH_SIZE + 5)  # the change shows in the second batch

    def change_after_checking(done: int, total: int) -> None:
        if done == total // 2:
            write_image(files[-1], make_cell_image(12345))

    with pytest.raises(ImportRefused, match="cell_0504.png: changed during the import"), session_scope() as session:
        import_folder(
            session=session, path=tmp_path / "in", labelled=False, user_id=None, progress=change_after_checking
        )

    assert counts() == {"cells": 0, "labels": 0, "imports": 0}


def test_max_pixels_comes_from_settings(any_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.database import use_database

    use_database(any_db_url, monkeypatch, max_image_pixels="1000")
    write_image(tmp_path / "in" / "big.png", make_cell_image(1, 40))  # 1,600 px

    with pytest.raises(ImportRefused, match="big.png: decompression bomb"), session_scope() as session:
        import_folder(session=session, path=tmp_path / "in", labelled=False, user_id=None)


def test_pillows_own_bomb_error_is_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        open_image(io.BytesIO(image_bytes(make_cell_image(1, 32))), max_pixels=50_000_000)


def test_sources_check_a_folder_without_a_database(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "set", classes=("monocyte",), per_class=2)
    (tmp_path / "set" / "monocyte" / "bad.png").write_bytes(b"nope")
    (tmp_path / "set" / "README.md").write_text("notes")

    entries, rejections, skipped = folder_entries(tmp_path / "set")
    candidates, problems = scan_entries(
        entries, labelled=True, class_names=["neutrophil", "monocyte"], max_pixels=10_000
    )

    assert rejections == [] and skipped == ["README.md"]

    assert [(c.source_name, c.class_name) for c in candidates] == [
        ("monocyte/monocyte_000.png", "monocyte"),
        ("monocyte/monocyte_001.png", "monocyte"),
    ]
    assert [r.file for r in problems] == ["monocyte/bad.png"]


# --- the CLI -------------------------------------------------------------------------------------

cli = typer.Typer()
cli.command("import")(import_command)


@cli.callback()
def _root() -> None:
    """leukolab (the import command only)."""


def test_cli_imports_a_labelled_folder(any_db_url: str, tmp_path: Path) -> None:
    admin = make_user("ada", role="admin")
    make_imagefolder(tmp_path / "set", classes=("eosinophil", "monocyte"), per_class=2)

    result = CliRunner().invoke(cli, ["import", str(tmp_path / "set"), "--labelled"])

    assert result.exit_code == 0, result.output
    assert "imported 4 cells, 4 labelled; 0 duplicates skipped" in result.output
    with session_scope() as session:
        assert set(session.scalars(select(Label.user_id))) == {admin}


def test_cli_imports_a_zip_unlabelled(any_db_url: str, tmp_path: Path) -> None:
    make_zip({f"c{index}.png": image_bytes(make_cell_image(index)) for index in range(3)}, tmp_path / "u.zip")

    result = CliRunner().invoke(cli, ["import", str(tmp_path / "u.zip")])

    assert result.exit_code == 0, result.output
    assert "imported 3 cells; 0 duplicates skipped" in result.output


def test_cli_refusal_exits_non_zero_and_names_each_file(any_db_url: str, tmp_path: Path) -> None:
    make_flat_folder(tmp_path / "in", count=2)
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    (tmp_path / "in" / "text.jpg").write_bytes(b"hello")

    result = CliRunner().invoke(cli, ["import", str(tmp_path / "in")])

    assert result.exit_code == 2
    assert "refused: empty.png: empty file (0 bytes)" in result.output
    assert "refused: text.jpg: not an image" in result.output
    assert "2 files refused; nothing was imported" in result.output
    assert counts() == {"cells": 0, "labels": 0, "imports": 0}


def test_cli_labelled_import_needs_an_admin(any_db_url: str, tmp_path: Path) -> None:
    make_user("cy", role="cytologist")
    make_imagefolder(tmp_path / "set", classes=("basophil",), per_class=1)

    result = CliRunner().invoke(cli, ["import", str(tmp_path / "set"), "--labelled"])
    assert result.exit_code == 2
    assert "create an admin first: leukolab users create NAME --role admin --password-stdin" in result.output

    result = CliRunner().invoke(cli, ["import", str(tmp_path / "set"), "--labelled", "--as-user", "cy"])
    assert result.exit_code == 2
    assert "'cy' is not an active admin" in result.output
    assert counts() == {"cells": 0, "labels": 0, "imports": 0}


@pytest.mark.parametrize("any_db_url", ["sqlite"], indirect=True)
def test_sqlite_stays_writable_while_an_import_decodes(any_db_url: str, tmp_path: Path) -> None:
    """Every SQLite transaction here takes the write lock at its start; an import must not hold one
    through its decoding, or every labeller waits (and fails after the busy timeout)."""
    make_flat_folder(tmp_path / "in", count=6)
    free, try_to_write = sqlite_lock_probe(any_db_url)

    with session_scope() as session:
        summary = import_folder(
            session=session, path=tmp_path / "in", labelled=False, user_id=None, progress=try_to_write
        )

    assert summary.imported == 6
    assert len(free) >= 2 and all(free)  # checked in both passes, never locked out
    assert counts() == {"cells": 6, "labels": 0, "imports": 1}


def test_a_class_retired_while_files_are_prepared_refuses_the_import(any_db_url: str, tmp_path: Path) -> None:
    from app.classes.service import retire_class

    admin = make_user("ada", role="admin")
    make_imagefolder(tmp_path / "set", classes=DEFAULT_CLASSES, per_class=2)

    def retire_basophils(done: int, total: int) -> None:
        if done == total // 2:  # every file checked; none prepared yet
            with session_scope() as other:
                retire_class(session=other, user=None, ref="basophil")

    with (
        pytest.raises(Conflict, match="class basophil was retired or merged during the import"),
        session_scope() as session,
    ):
        import_folder(session=session, path=tmp_path / "set", labelled=True, user_id=admin, progress=retire_basophils)

    assert counts() == {"cells": 0, "labels": 0, "imports": 0}


def test_cells_another_import_added_meanwhile_count_as_duplicates(any_db_url: str, tmp_path: Path) -> None:
    make_flat_folder(tmp_path / "in", count=4)
    make_flat_folder(tmp_path / "first", count=2)  # the same pixels as two of the four

    def import_the_first_meanwhile(done: int, total: int) -> None:
        if done == total // 2:
            with session_scope() as other:
                import_folder(session=other, path=tmp_path / "first", labelled=False, user_id=None)

    with session_scope() as session:
        summary = import_folder(
            session=session, path=tmp_path / "in", labelled=False, user_id=None, progress=import_the_first_meanwhile
        )

    assert (summary.imported, summary.duplicates) == (2, 2)
    assert counts() == {"cells": 4, "labels": 0, "imports": 2}
