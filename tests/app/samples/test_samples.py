"""Samples (issue 11): smear fields imported through the CLI, the API and the page, with exact cell counts and
boxes stored; bad input refused all or nothing; tile imports into a sample; the differential count."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
import typer
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from app import db
from app.cells.sources import ImportRefused
from app.db import session_scope
from app.labelling.service import record_label
from app.main import create_app
from app.models import Cell, Field, ImportBatch, Label, ModelVersion, Prediction, Sample, User
from app.samples import service
from app.samples.fields import DISPLAY_MAX_SIDE, import_field_folder
from cli.importing import import_command
from tests.support.database import SHARED_DATA, sqlite_lock_probe
from tests.support.factories import make_cells, make_user
from tests.support.fields import make_field, png_bytes, save
from tests.support.http import browser_login, token_headers
from tests.support.images import huge_png, make_imagefolder, make_zip, zip_folder

cli = typer.Typer()
cli.command("import")(import_command)


@cli.callback()
def _root() -> None:
    """leukolab (the import command only)."""


# Three white cells, one cut by the left edge; and one field with red cells only.
FIELD_A1 = [(150, 140, 40), (420, 200, 50), (30, 300, 35)]
FIELD_B1 = [(200, 150, 45), (480, 250, 40)]


def counts() -> dict[str, int]:
    with session_scope() as session:
        return {
            table.__tablename__: session.scalar(select(func.count()).select_from(table))
            for table in (Sample, Field, Cell, ImportBatch)
        }


def stored_cells(field_name: str) -> list[Cell]:
    with session_scope() as session:
        field = session.scalar(select(Field).where(Field.source_name == field_name))
        return list(session.scalars(select(Cell).where(Cell.field_id == field.id).order_by(Cell.box_x0)))


def two_samples(root: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """slideA/ with a three-cell field and an empty one, slideB/ with a two-cell field; the expected boxes."""
    field, boxes_a = make_field(FIELD_A1)
    save(root / "slideA" / "a1.png", field)
    save(root / "slideA" / "empty.png", make_field([])[0])
    field, boxes_b = make_field(FIELD_B1)
    save(root / "slideB" / "b1.png", field)
    (root / "slideB" / "README.md").write_text("notes travel with the fields")
    return {"slideA/a1.png": boxes_a, "slideA/empty.png": [], "slideB/b1.png": boxes_b}


def test_cli_imports_fields_one_sample_per_folder_with_exact_boxes(any_db_url: str, tmp_path: Path) -> None:
    expected = two_samples(tmp_path / "fields")

    result = CliRunner().invoke(cli, ["import", str(tmp_path / "fields"), "--fields"])

    assert result.exit_code == 0, result.output
    assert "imported 3 fields with 5 white cells into 2 samples" in result.output
    assert "no white cell in 1 fields: slideA/empty.png" in result.output
    assert "skipped 1 non-image files: slideB/README.md" in result.output
    assert counts() == {"samples": 2, "fields": 3, "cells": 5, "imports": 1}
    with session_scope() as session:
        samples = {s.identifier: s for s in session.scalars(select(Sample))}
        assert set(samples) == {"slideA", "slideB"}
        assert samples["slideA"].um_per_px == service.DEFAULT_UM_PER_PX
        empty = session.scalar(select(Field).where(Field.source_name == "slideA/empty.png"))
        assert (empty.cell_count, empty.width, empty.height, empty.display_scale) == (0, 640, 480, 1.0)
    for name, boxes in expected.items():
        cells = stored_cells(name)
        assert sorted((c.box_x0, c.box_y0, c.box_x1, c.box_y1) for c in cells) == sorted(boxes)
        sample = name.split("/")[0]
        assert {c.sample_id for c in cells} <= {samples[sample].id}
        assert all(c.slide == sample and c.source_name.startswith(f"{name}#") for c in cells)
    a1 = stored_cells("slideA/a1.png")
    assert [c.touches_edge for c in a1] == [True, False, False]  # (30, 300) is cut by the left edge
    assert [(c.centre_x, c.centre_y) for c in a1] == [(33.0, 300.5), (150.5, 140.5), (420.5, 200.5)]
    assert not any(c.merged for c in a1)
    with session_scope() as session:  # each located cell is a 128 px crop, prepared like a tile
        cell = session.get(Cell, a1[1].id)
        assert cell.display_size == 128 and len(cell.model_input) == 64 * 64 * 3
        assert Image.open(io.BytesIO(cell.display_png)).size == (128, 128)

    again = CliRunner().invoke(cli, ["import", str(tmp_path / "fields"), "--fields"])
    assert again.exit_code == 0, again.output
    assert "imported 0 fields with 0 white cells into 2 samples; 3 fields already there skipped" in again.output
    assert counts()["cells"] == 5


def test_sample_option_puts_every_field_into_one_sample(any_db_url: str, tmp_path: Path) -> None:
    two_samples(tmp_path / "fields")
    result = CliRunner().invoke(
        cli, ["import", str(tmp_path / "fields"), "--fields", "--sample", "patient 7", "--um-per-px", "0.06"]
    )
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        (sample,) = session.scalars(select(Sample))
        assert sample.identifier == "patient 7"
        assert session.scalar(select(func.count(Cell.id)).where(Cell.sample_id == sample.id)) == 5

    contradicts = CliRunner().invoke(
        cli, ["import", str(tmp_path / "fields"), "--fields", "--sample", "patient 7", "--um-per-px", "0.1"]
    )
    assert contradicts.exit_code == 2 and "exists with 0.06 µm/px, not 0.1" in contradicts.output


def test_a_flat_folder_without_sample_is_refused(any_db_url: str, tmp_path: Path) -> None:
    save(tmp_path / "flat" / "f.png", make_field(FIELD_B1)[0])
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "flat"), "--fields"])
    assert result.exit_code == 2
    assert "refused: f.png: not inside a sample folder" in result.output
    assert counts() == {"samples": 0, "fields": 0, "cells": 0, "imports": 0}


def test_pixel_size_scales_the_search(any_db_url: str, tmp_path: Path) -> None:
    """The same field at half the pixel size (µm/px) holds cells twice as small: the r=40 disc is now too small."""
    save(tmp_path / "s" / "f.png", make_field([(200, 200, 10)], red_cells=0)[0])
    with session_scope() as session:
        coarse = import_field_folder(
            session=session, path=tmp_path / "s", sample="coarse", user_id=None, um_per_px=0.24
        )
        fine = import_field_folder(session=session, path=tmp_path / "s", sample="fine", user_id=None, um_per_px=0.06)
    assert (coarse.cells, fine.cells) == (1, 0)


def bad_fields(root: Path) -> set[str]:
    """A good field, fields that convert (CMYK, 16-bit, float 0-1) and the refused ones; their names."""
    field, _ = make_field(FIELD_B1)
    save(root / "good.png", field)
    Image.fromarray(field).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    tifffile.imwrite(root / "deep16.tif", field.astype(np.uint16) * 257)
    tifffile.imwrite(root / "float.tif", field.astype(np.float32) / 255.0)
    save(root / "tiny.png", field[:20, :20])
    Image.fromarray(field).save(root / "pages.tif", save_all=True, append_images=[Image.fromarray(field)])
    tifffile.imwrite(root / "float_range.tif", field.astype(np.float32))  # 0-255 floats: no known scale
    (root / "notes.png").write_bytes(b"not an image at all")
    (root / "huge.png").write_bytes(huge_png())  # declares 56 MP: a decompression bomb
    return {"tiny.png", "pages.tif", "float_range.tif", "notes.png", "huge.png"}


def test_bad_fields_are_refused_all_or_nothing_with_reasons(any_db_url: str, tmp_path: Path) -> None:
    refused_names = bad_fields(tmp_path / "in")
    with pytest.raises(ImportRefused) as caught, session_scope() as session:
        import_field_folder(session=session, path=tmp_path / "in", sample="S", user_id=None)
    reasons = {r.file: r.reason for r in caught.value.rejections}
    assert set(reasons) == refused_names
    assert "too small to hold a white cell" in reasons["tiny.png"]
    assert "has 2 pages" in reasons["pages.tif"]
    assert "only on the [0, 1] scale" in reasons["float_range.tif"]
    assert "not an image" in reasons["notes.png"]
    assert "8000x7000" in reasons["huge.png"]
    assert counts() == {"samples": 0, "fields": 0, "cells": 0, "imports": 0}

    for name in refused_names:
        (tmp_path / "in" / name).unlink()
    with session_scope() as session:
        summary = import_field_folder(session=session, path=tmp_path / "in", sample="S", user_id=None)
    # The 16-bit and float fields convert to the very pixels of the 8-bit one: it and the float one are
    # duplicates of the first of them (deep16.tif), which holds the exact boxes.
    assert (summary.fields, summary.duplicates) == (2, 2)
    boxes = sorted((c.box_x0, c.box_y0, c.box_x1, c.box_y1) for c in stored_cells("deep16.tif"))
    assert boxes == sorted(make_field(FIELD_B1)[1])
    assert len(stored_cells("cmyk.jpg")) == 2


def test_a_large_field_is_searched_in_tiles_and_stored_downscaled(any_db_url: str, tmp_path: Path) -> None:
    # 4300 px wide: three tile columns; the middle cell straddles the tile border at x = 2048.
    cells = [(300, 500, 45), (2048, 400, 45), (4000, 600, 40)]
    field, boxes = make_field(cells, width=4300, height=1000)
    save(tmp_path / "big" / "wide.png", field)
    calls: list[tuple[int, int]] = []
    with session_scope() as session:
        summary = import_field_folder(
            session=session, path=tmp_path / "big", sample="wide", user_id=None, progress=lambda *a: calls.append(a)
        )
    assert summary.cells == 3
    found = stored_cells("wide.png")
    assert sorted((c.box_x0, c.box_y0, c.box_x1, c.box_y1) for c in found) == sorted(boxes)
    assert calls[-1] == (4, 4)  # one check step, then one step per tile
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    with session_scope() as session:
        stored = session.scalar(select(Field))
        image = Image.open(io.BytesIO(stored.display_jpeg))
        assert image.format == "JPEG" and image.size == (DISPLAY_MAX_SIDE, round(1000 * DISPLAY_MAX_SIDE / 4300))
        assert stored.display_scale == pytest.approx(DISPLAY_MAX_SIDE / 4300)


def test_tile_import_into_a_sample(any_db_url: str, tmp_path: Path) -> None:
    make_user("ada", role="admin")
    make_imagefolder(tmp_path / "tiles", classes=("neutrophil",), per_class=3)
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "tiles"), "--labelled", "--sample", "tiles-1"])
    assert result.exit_code == 0, result.output
    assert "3 cells put into sample 'tiles-1'" in result.output
    with session_scope() as session:
        sample = session.scalar(select(Sample))
        cells = list(session.scalars(select(Cell)))
        assert [c.sample_id for c in cells] == [sample.id] * 3 and all(c.field_id is None for c in cells)
        report = service.differential(session=session, sample_id=sample.id)
    assert report.expert.wbc_total == 3 and report.to_review == 0


def test_api_and_page_import_fields_and_show_them(pg_db_url: str, tmp_path: Path) -> None:
    make_user("root", role="admin")
    make_user("cyto")
    expected = two_samples(tmp_path / "fields")
    archive = zip_folder(tmp_path / "fields", tmp_path / "fields.zip", prefix="export/")
    with TestClient(create_app()) as client:
        cyto = token_headers(client, "cyto")
        denied = client.post("/api/v1/samples/imports", files={"file": ("f.zip", archive.read_bytes())}, headers=cyto)
        assert denied.status_code == 403
        admin = token_headers(client, "root")
        created = client.post("/api/v1/samples/imports", files={"file": ("f.zip", archive.read_bytes())}, headers=admin)
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["fields"], body["cells"], body["empty_fields"]) == (3, 5, ["export/slideA/empty.png"])
        assert {s["identifier"]: s["cells"] for s in body["samples"]} == {"slideA": 3, "slideB": 2}

        listed = client.get("/api/v1/samples", headers=cyto).json()
        assert {(s["identifier"], s["fields"], s["cells"]) for s in listed} == {("slideA", 2, 3), ("slideB", 1, 2)}
        slide_a = next(s["id"] for s in listed if s["identifier"] == "slideA")
        detail = client.get(f"/api/v1/samples/{slide_a}", headers=cyto).json()
        by_name = {f["source_name"]: f for f in detail["field_list"]}
        assert sorted(tuple(c["box"]) for c in by_name["export/slideA/a1.png"]["cells"]) == sorted(
            expected["slideA/a1.png"]
        )
        assert by_name["export/slideA/empty.png"]["cells"] == []
        image = client.get(by_name["export/slideA/a1.png"]["image_url"], headers=cyto)
        assert image.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(image.content)).size == (
            640,
            480,
        )

        cell = by_name["export/slideA/a1.png"]["cells"][0]
        context = client.get(f"/api/v1/cells/{cell['cell_id']}/field", headers=cyto).json()
        assert context["sample"] == "slideA" and context["cell"]["box"] == cell["box"]
        assert client.get("/api/v1/samples/999", headers=cyto).status_code == 404

        page = client.get(f"/samples/{slide_a}", headers={**cyto, "Accept": "text/html"})
        assert page.status_code == 200 and page.text.count('<rect class="box') == 3
        assert "review?sample=slideA" in page.text  # the sample's cells in the review grid
        cell_page = client.get(f"/cells/{cell['cell_id']}", headers={**cyto, "Accept": "text/html"})
        assert 'id="cell-field"' in cell_page.text and f'href="/samples/{slide_a}"' in cell_page.text
        assert "export/slideA/a1.png" in cell_page.text

        # The page: a refusal found anywhere writes nothing, not even the new sample.
        csrf = browser_login(client, "root")
        before = counts()
        bad = make_zip(
            {
                "new-sample/good.png": png_bytes(make_field(FIELD_B1)[0]),
                "new-sample/tiny.png": png_bytes(make_field([])[0][:16, :16]),
            }
        )
        refused = client.post(
            "/admin/samples/import",
            data={"csrf_token": csrf},
            files={"file": ("bad.zip", bad, "application/zip")},
            headers={"HX-Request": "true"},
        )
        assert refused.status_code == 422
        assert "Nothing was imported" in refused.text and "new-sample/tiny.png" in refused.text
        assert counts() == before
        good = make_zip({"a.png": png_bytes(make_field(FIELD_B1)[0])})
        ok = client.post(
            "/admin/samples/import",
            data={"csrf_token": csrf, "sample": "from-page", "um_per_px": "0.06"},
            files={"file": ("good.zip", good, "application/zip")},
            headers={"HX-Request": "true"},
        )
        assert ok.status_code == 200, ok.text
        assert "<strong>1</strong> fields, <strong>2</strong> white cells" in ok.text
        assert counts()["samples"] == 3


def _predict(session, model_id: int, cell_id: int, name: str) -> None:
    session.add(
        Prediction(
            model_version_id=model_id,
            cell_id=cell_id,
            probs=[1.0],
            predicted=name,
            confidence=0.9,
            entropy=0.1,
            margin=0.8,
            filter_outcome="rejected",
        )
    )


def test_differential_counts_experts_and_predictions_apart(any_db_url: str, tmp_path: Path) -> None:
    ada = make_user("ada", role="admin")
    cells = [(100, 100, 30), (250, 100, 30), (400, 100, 30), (550, 100, 30), (100, 280, 30), (250, 280, 30)]
    save(tmp_path / "f" / "s1" / "f.png", make_field(cells + [(400, 280, 30)], red_cells=0)[0])
    save(tmp_path / "f" / "other" / "f.png", make_field([(300, 200, 40)], red_cells=0)[0])
    with session_scope() as session:
        import_field_folder(session=session, path=tmp_path / "f", sample=None, user_id=ada)
    with session_scope() as session:
        sample_id = session.scalar(select(Sample.id).where(Sample.identifier == "s1"))
        ids = list(session.scalars(select(Cell.id).where(Cell.sample_id == sample_id).order_by(Cell.id)))
        other = session.scalar(select(Cell.id).where(Cell.sample_id != sample_id))
        user = session.get(User, ada)
        assert len(ids) == 7
        for cell_id, value in zip(ids, ["neutrophil", "neutrophil", "lymphocyte", "artefact", "unsure"], strict=False):
            record_label(session=session, user=user, cell_id=cell_id, value=value)
        record_label(session=session, user=user, cell_id=other, value="basophil")  # another sample
        old = ModelVersion(artefact_path="x", class_names=[], is_active=False)
        active = ModelVersion(artefact_path="y", class_names=[], is_active=True)
        session.add_all([old, active])
        session.flush()
        _predict(session, active.id, ids[0], "monocyte")  # an expert label wins: not counted
        _predict(session, active.id, ids[4], "artefact")  # unsure: counted as a prediction
        _predict(session, active.id, ids[5], "monocyte")
        _predict(session, old.id, ids[6], "basophil")  # not the active model: ids[6] is not scored
        model_id = active.id
    with session_scope() as session:
        report = service.differential(session=session, sample_id=sample_id)
    expert = {c.name: (c.count, c.percent) for c in (*report.expert.wbc, *report.expert.non_wbc)}
    assert report.expert.wbc_total == 3
    assert expert["neutrophil"] == (2, 66.67) and expert["lymphocyte"] == (1, 33.33) and expert["basophil"] == (0, 0.0)
    assert [c.name for c in report.expert.non_wbc] == ["artefact"] and expert["artefact"] == (1, 33.33)
    predicted = {c.name: (c.count, c.percent) for c in (*report.predicted.wbc, *report.predicted.non_wbc)}
    assert report.predicted.wbc_total == 1 and predicted["monocyte"] == (1, 100.0)
    assert predicted["artefact"] == (1, 100.0)  # per 100 predicted WBC
    assert (report.cells, report.unsure, report.to_review, report.not_scored) == (7, 1, 3, 1)
    assert report.model_version_id == model_id

    text = service.differential_csv(report)
    assert "s1,expert,neutrophil,true,2,66.67,% of WBC" in text
    assert "s1,expert,artefact,false,1,33.33,per 100 WBC" in text
    assert f"s1,predicted by model v{model_id},monocyte,true,1,100.00,% of WBC" in text
    assert "s1,to review,,,3,," in text

    make_user("cyto")
    with TestClient(create_app()) as client:
        headers = token_headers(client, "cyto")
        api = client.get(f"/api/v1/samples/{sample_id}/differential", headers=headers)
        assert api.status_code == 200 and api.json() == report.model_dump(mode="json")
        csv = client.get(f"/samples/{sample_id}/differential.csv", headers=headers)
        assert csv.text == text and csv.headers["content-type"].startswith("text/csv")
        page = client.get(f"/samples/{sample_id}/differential", headers={**headers, "Accept": "text/html"})
        assert page.status_code == 200
        assert (
            '<tr data-class="neutrophil"><td>neutrophil</td><td class="num">2</td><td class="num">66.7</td>'
            in page.text
        )
        assert "Model predictions (v" in page.text and "<strong>3</strong> cells still to review" in page.text
        assert "@media print" in client.get("/static/samples.css").text


def test_migration_0006_goes_down_and_up_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    db.upgrade(url)
    db.downgrade(url, "0005")
    engine = db.make_engine(url)
    with engine.connect() as conn:
        columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(cells)")}
        index = conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'ix_cells_unlabelled_random'"
        ).scalar_one()
    engine.dispose()
    assert "sample_id" not in columns and "box_x0" not in columns
    assert "WHERE current_label_id IS NULL" in index
    db.upgrade(url)


@pytest.mark.shared_data
def test_bccd_fields_import_into_a_sample(any_db_url: str, tmp_path: Path) -> None:
    files = sorted((SHARED_DATA / "bccd" / "JPEGImages").glob("*.jpg"))[:4]
    if not files:
        pytest.skip("../shared/data/bccd is absent")
    for file in files:
        (tmp_path / "bccd").mkdir(exist_ok=True)
        (tmp_path / "bccd" / file.name).write_bytes(file.read_bytes())
    with session_scope() as session:
        summary = import_field_folder(session=session, path=tmp_path / "bccd", sample="bccd", user_id=None)
    assert summary.fields == 4 and 4 <= summary.cells <= 8  # about one white cell per BCCD field
    with session_scope() as session:
        for cell in session.scalars(select(Cell)):
            assert 0 <= cell.box_x0 < cell.box_x1 <= 640 and 0 <= cell.box_y0 < cell.box_y1 <= 480
            assert cell.box_x0 <= cell.centre_x <= cell.box_x1 and cell.box_y0 <= cell.centre_y <= cell.box_y1
        assert session.scalar(select(func.count(Label.id))) == 0


def test_a_tile_cell_page_has_no_field_line(pg_db_url: str) -> None:
    make_user("cyto")
    [cell_id] = make_cells(1)
    with TestClient(create_app()) as client:
        page = client.get(f"/cells/{cell_id}", headers={**token_headers(client, "cyto"), "Accept": "text/html"})
    assert page.status_code == 200 and f"Cell {cell_id}" in page.text and 'id="cell-field"' not in page.text


@pytest.mark.parametrize("any_db_url", ["sqlite"], indirect=True)
def test_sqlite_stays_writable_while_fields_are_located(any_db_url: str, tmp_path: Path) -> None:
    """Locating is most of a field import's time: it must not hold SQLite's write lock meanwhile."""
    two_samples(tmp_path / "in")
    free, try_to_write = sqlite_lock_probe(any_db_url)

    with session_scope() as session:
        summary = import_field_folder(
            session=session, path=tmp_path / "in", sample=None, user_id=None, progress=try_to_write
        )

    assert (summary.fields, summary.cells) == (3, 5)
    assert len(free) >= 4 and all(free)  # every field checked, then located, with the lock free
    assert counts() == {"samples": 2, "fields": 3, "cells": 5, "imports": 1}


def test_fields_another_import_added_while_locating_count_as_duplicates(any_db_url: str, tmp_path: Path) -> None:
    save(tmp_path / "first" / "f.png", make_field(FIELD_B1)[0])
    save(tmp_path / "both" / "f.png", make_field(FIELD_B1)[0])
    save(tmp_path / "both" / "g.png", make_field(FIELD_A1)[0])
    state = {"sent": False}

    def import_the_first_meanwhile(done: int, total: int) -> None:
        if done == 2 and not state["sent"]:  # both fields checked; none located yet
            state["sent"] = True
            with session_scope() as other:
                import_field_folder(session=other, path=tmp_path / "first", sample="S", user_id=None)

    with session_scope() as session:
        summary = import_field_folder(
            session=session, path=tmp_path / "both", sample="S", user_id=None, progress=import_the_first_meanwhile
        )

    assert state["sent"] and (summary.fields, summary.duplicates) == (1, 1)
    assert counts() == {"samples": 1, "fields": 2, "cells": 2 + 3, "imports": 2}
