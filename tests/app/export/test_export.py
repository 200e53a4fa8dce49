"""Label export: CSV, ImageFolder and COCO from the CLI, the API and the admin zip; who may; the round trip."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import undefer
from typer.testing import CliRunner

from app.cells.importer import import_folder
from app.db import session_scope
from app.export.service import CSV_COLUMNS, stream_zip
from app.labelling.service import add_label, current_labels, undo_last
from app.main import create_app
from app.models import Cell, ModelVersion, Prediction, User
from cli.main import app as leukolab_cli
from tests.support.database import empty_tables
from tests.support.factories import make_cells, make_user
from tests.support.http import token_headers
from tests.support.images import make_imagefolder

CLASSES = ("neutrophil", "lymphocyte", "eosinophil")


def _user(session, name: str) -> User:
    return session.scalar(select(User).where(User.username == name))


def _label(name: str, cell_id: int, value: str) -> None:
    with session_scope() as session:
        add_label(session=session, user=_user(session, name), cell_id=cell_id, value=value)


def _cells_by_source() -> dict[str, int]:
    with session_scope() as session:
        return {source: cell_id for cell_id, source in session.execute(select(Cell.id, Cell.source_name))}


def make_world(tmp_path: Path) -> dict:
    """Six imported, labelled cells (two readers on some), four generated ones, a scored model.

    ada (admin) imported neutrophil/lymphocyte/eosinophil x2; ana relabelled one neutrophil as a
    lymphocyte (readers 2, disagree); bob confirmed a lymphocyte (readers 2, agree); ana labelled
    an eosinophil and undid it (readers 1). Of the generated cells, one is ``unsure`` (bob), one
    has a formula-like name and a slide and is a neutrophil (ana), two are left to the model:
    one with a pseudo-label, one with a prediction only.
    """
    make_user("ada", role="admin")
    make_user("ana")
    make_user("bob")
    make_imagefolder(tmp_path / "set", classes=CLASSES, per_class=2)
    with session_scope() as session:
        import_folder(session=session, path=tmp_path / "set", labelled=True, user_id=_user(session, "ada").id)
    by_source = _cells_by_source()
    disputed, confirmed, undone = (
        by_source["neutrophil/neutrophil_000.png"],
        by_source["lymphocyte/lymphocyte_001.png"],
        by_source["eosinophil/eosinophil_000.png"],
    )
    _label("ana", disputed, "lymphocyte")
    _label("bob", confirmed, "lymphocyte")
    _label("ana", undone, "neutrophil")
    with session_scope() as session:
        undo_last(session=session, user=_user(session, "ana"))
    unsure, formula, pseudo, predicted = make_cells(4, seed=7)
    with session_scope() as session:
        session.execute(
            update(Cell).where(Cell.id == formula).values(source_name="=HYPERLINK(evil).png", slide="+slide-1")
        )
    _label("bob", unsure, "unsure")
    _label("ana", formula, "neutrophil")
    with session_scope() as session:
        version = ModelVersion(artefact_path=str(tmp_path / "m.pt"), class_names=list(CLASSES), is_active=True)
        session.add(version)
        session.flush()
        for cell_id, label, pseudo_label in (
            (pseudo, "eosinophil", "eosinophil"),
            (predicted, "lymphocyte", None),
            (disputed, "neutrophil", "neutrophil"),  # an expert label wins over the model's
        ):
            session.add(
                Prediction(
                    model_version_id=version.id,
                    cell_id=cell_id,
                    probs=[0.1, 0.2, 0.7],
                    predicted=label,
                    confidence=0.7,
                    entropy=0.8,
                    margin=0.5,
                    pseudo_label=pseudo_label,
                    filter_outcome="passed_entropy" if pseudo_label else "rejected",
                )
            )
        model_id = version.id
    return {
        "disputed": disputed,
        "confirmed": confirmed,
        "undone": undone,
        "unsure": unsure,
        "formula": formula,
        "pseudo": pseudo,
        "predicted": predicted,
        "model": model_id,
    }


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _expert_truth() -> dict[int, str]:
    with session_scope() as session:
        return current_labels(session=session)


def _check_expert_csv(rows: list[dict[str, str]], world: dict) -> None:
    by_cell = {int(row["cell_id"]): row for row in rows}
    assert by_cell.keys() == _expert_truth().keys()  # every expert-labelled cell, nothing else
    assert {cell: row["label"] for cell, row in by_cell.items()} == _expert_truth()
    disputed = by_cell[world["disputed"]]
    assert (disputed["label"], disputed["labelled_by"], disputed["readers"], disputed["agreement"]) == (
        "lymphocyte",
        "ana",
        "2",
        "false",
    )
    confirmed = by_cell[world["confirmed"]]
    assert (confirmed["labelled_by"], confirmed["readers"], confirmed["agreement"]) == ("bob", "2", "true")
    undone = by_cell[world["undone"]]  # ana's undone label no longer counts as a reader
    assert (undone["label"], undone["labelled_by"], undone["readers"], undone["agreement"]) == (
        "eosinophil",
        "ada",
        "1",
        "",
    )
    assert by_cell[world["unsure"]]["label"] == "unsure"
    with session_scope() as session:
        cell = session.get(Cell, world["confirmed"])
        assert confirmed["sha256"] == cell.sha256 and confirmed["source_name"] == cell.source_name
    assert confirmed["labelled_at"].endswith("+00:00")


def test_cli_exports_labels_as_csv_imagefolder_and_coco(any_db_url: str, tmp_path: Path) -> None:
    world = make_world(tmp_path)
    runner = CliRunner()

    result = runner.invoke(leukolab_cli, ["export", "labels", str(tmp_path / "labels.csv")])
    assert result.exit_code == 0, result.output
    assert "exported 8 labelled cells (8 expert) as csv" in result.output
    text = (tmp_path / "labels.csv").read_text()
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    _check_expert_csv(_csv(text), world)

    result = runner.invoke(leukolab_cli, ["export", "labels", str(tmp_path / "folder"), "--format", "imagefolder"])
    assert result.exit_code == 0, result.output
    files = {p.relative_to(tmp_path / "folder").as_posix() for p in (tmp_path / "folder").rglob("*") if p.is_file()}
    truth = {cell: label for cell, label in _expert_truth().items() if label != "unsure"}  # unsure: CSV only
    assert len(files) == len(truth) + 1 and "labels.csv" in files
    assert {int(name.split("/")[1].split("-")[0]): name.split("/")[0] for name in files - {"labels.csv"}} == truth
    with session_scope() as session:
        png = session.scalar(select(Cell.display_png).where(Cell.id == world["confirmed"]))
    (confirmed_file,) = [name for name in files if name.startswith(f"lymphocyte/{world['confirmed']}-")]
    assert (tmp_path / "folder" / confirmed_file).read_bytes() == png

    result = runner.invoke(leukolab_cli, ["export", "labels", str(tmp_path / "coco"), "--format", "coco"])
    assert result.exit_code == 0, result.output
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    assert [c["name"] for c in coco["categories"]][:5] == [
        "neutrophil",
        "lymphocyte",
        "monocyte",
        "eosinophil",
        "basophil",
    ]
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == len(coco["annotations"]) == len(truth)
    for annotation in coco["annotations"]:
        image = images[annotation["image_id"]]
        cell_id = image["leukolab"]["cell_id"]
        assert categories[annotation["category_id"]] == truth[cell_id]
        assert annotation["bbox"] == [0, 0, image["width"], image["height"]]  # the whole cell image
        assert annotation["leukolab"]["cell_id"] == cell_id and annotation["iscrowd"] == 0
        with Image.open(tmp_path / "coco" / image["file_name"]) as stored:
            assert stored.size == (image["width"], image["height"])

    # a folder export refuses to mix into a folder that holds something
    result = runner.invoke(leukolab_cli, ["export", "labels", str(tmp_path / "coco"), "--format", "imagefolder"])
    assert result.exit_code == 2 and "not an empty folder" in result.output


def test_cli_marks_model_labels_in_their_own_folders(pg_db_url: str, tmp_path: Path) -> None:
    world = make_world(tmp_path)

    result = CliRunner().invoke(
        leukolab_cli,
        ["export", "labels", str(tmp_path / "out"), "--format", "imagefolder", "--pseudo-labels", "--predictions"],
    )

    assert result.exit_code == 0, result.output
    assert "8 expert, 1 pseudo-label, 1 prediction" in result.output
    names = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")}
    assert {name.split("/")[0] for name in names} == {"expert", "pseudo-labels", "predictions"}
    assert any(name.startswith(f"pseudo-labels/eosinophil/{world['pseudo']}-") for name in names)
    assert any(name.startswith(f"predictions/lymphocyte/{world['predicted']}-") for name in names)


def test_api_csv_is_expert_only_unless_asked_and_marks_model_rows(any_db_url: str, tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with TestClient(create_app()) as client:
        headers = token_headers(client, "ada")

        plain = client.get("/api/v1/export/labels", params={"format": "csv"}, headers=headers)
        assert plain.status_code == 200, plain.text
        assert plain.headers["content-type"].startswith("text/csv")
        assert "attachment" in plain.headers["content-disposition"]
        assert plain.text.splitlines()[0] == ",".join(CSV_COLUMNS)
        _check_expert_csv(_csv(plain.text), world)

        pseudo = client.get("/api/v1/export/labels", params={"pseudo_labels": True}, headers=headers)
        rows = {int(row["cell_id"]): row for row in _csv(pseudo.text)}
        assert list(_csv(pseudo.text)[0]) == [*CSV_COLUMNS, "origin", "model_version"]
        assert world["predicted"] not in rows  # a prediction without a pseudo-label is not asked for
        assert (rows[world["pseudo"]]["label"], rows[world["pseudo"]]["origin"]) == ("eosinophil", "pseudo-label")
        assert rows[world["pseudo"]]["labelled_by"] == f"model v{world['model']}"
        assert rows[world["pseudo"]]["model_version"] == str(world["model"])

        both = client.get("/api/v1/export/labels", params={"pseudo_labels": True, "predictions": True}, headers=headers)
        rows = {int(row["cell_id"]): row for row in _csv(both.text)}
        assert (rows[world["predicted"]]["label"], rows[world["predicted"]]["origin"]) == ("lymphocyte", "prediction")
        # the expert's label stands where the model also has one, and stays marked expert
        assert (rows[world["disputed"]]["label"], rows[world["disputed"]]["origin"]) == ("lymphocyte", "expert")
        expert = {cell: row["label"] for cell, row in rows.items() if row["origin"] == "expert"}
        assert expert == _expert_truth()


def test_csv_cells_cannot_run_as_formulas(pg_db_url: str, tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with TestClient(create_app()) as client:
        text = client.get("/api/v1/export/labels", headers=token_headers(client, "ada")).text

    row = next(row for row in _csv(text) if int(row["cell_id"]) == world["formula"])
    assert row["source_name"] == "'=HYPERLINK(evil).png"
    assert row["sample"] == "'+slide-1"
    assert all(not value.startswith(("=", "+", "-", "@")) for r in _csv(text) for value in r.values())


def test_model_labels_need_a_model_version(pg_db_url: str, tmp_path: Path) -> None:
    make_user("ada", role="admin")
    make_cells(2)
    with TestClient(create_app()) as client:
        headers = token_headers(client, "ada")
        response = client.get("/api/v1/export/labels", params={"predictions": True}, headers=headers)
        assert response.status_code == 422 and "promote one" in response.json()["detail"]
        missing = client.get(
            "/api/v1/export/labels", params={"predictions": True, "model_version": 99}, headers=headers
        )
        assert missing.status_code == 404


def test_admin_zip_download_streams_the_export(pg_db_url: str, tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with TestClient(create_app()) as client:
        headers = token_headers(client, "ada")
        page = client.get("/admin/export", headers=headers)
        assert page.status_code == 200 and 'action="/admin/export/labels.zip"' in page.text

        with client.stream(
            "GET", "/admin/export/labels.zip", params={"format": "coco", "predictions": "true"}, headers=headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/zip"
            assert "content-length" not in response.headers  # streamed, not built then sent
            body = b"".join(response.iter_bytes())

    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = archive.namelist()
        coco = json.loads(archive.read("annotations.json"))
        assert len(names) == 1 + len(coco["images"])
        origins = {a["leukolab"]["cell_id"]: a["leukolab"]["origin"] for a in coco["annotations"]}
        assert origins[world["predicted"]] == "prediction" and origins[world["confirmed"]] == "expert"
        with session_scope() as session:
            cells = session.scalars(select(Cell).options(undefer(Cell.display_png))).all()
            pngs = {cell.id: cell.display_png for cell in cells}
        for image in coco["images"]:
            assert archive.read(image["file_name"]) == pngs[image["leukolab"]["cell_id"]]


def test_zip_of_a_file_is_read_and_sent_piece_by_piece(tmp_path: Path) -> None:
    big = tmp_path / "model.onnx"
    big.write_bytes(np.random.default_rng(0).bytes(2 * 1024**2))  # like weights: barely compressible

    chunks = list(stream_zip([("model.onnx", big), ("card.json", b"{}")], piece=64 * 1024))

    assert len(chunks) >= 8 and max(len(chunk) for chunk in chunks) <= 256 * 1024  # never the whole file at once
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.read("model.onnx") == big.read_bytes() and archive.read("card.json") == b"{}"
        assert archive.testzip() is None


def test_zip_is_written_while_it_is_read() -> None:
    pulled: list[str] = []

    def files():
        for index in range(3):
            pulled.append(f"f{index}")
            yield f"f{index}.png", bytes([index]) * 10_000

    chunks = stream_zip(files())
    first = next(chunks)
    assert pulled == ["f0"] and len(first) >= 10_000  # one file read, one file sent
    rest = b"".join(chunks)
    with zipfile.ZipFile(io.BytesIO(first + rest)) as archive:
        assert archive.namelist() == ["f0.png", "f1.png", "f2.png"]
        assert archive.read("f2.png") == b"\x02" * 10_000
        assert archive.testzip() is None


def test_export_is_for_admins_only(pg_db_url: str) -> None:
    make_user("ana")
    with TestClient(create_app()) as client:
        assert client.get("/api/v1/export/labels").status_code == 401
        headers = token_headers(client, "ana")
        for url in ("/api/v1/export/labels", "/api/v1/export/model", "/admin/export", "/admin/export/labels.zip"):
            response = client.get(url, headers=headers)
            assert response.status_code == 403, url
        responses = client.app.openapi()["paths"]["/api/v1/export/labels"]["get"]["responses"]
        assert {"200", "401", "403"} <= responses.keys()


def _labels_by_pixels() -> dict[bytes, str]:
    """Each cell's current expert label, keyed by the decoded pixels of its stored image."""
    with session_scope() as session:
        labels = current_labels(session=session)
        cells = session.scalars(select(Cell).options(undefer(Cell.display_png))).all()
        result = {}
        for cell in cells:
            if cell.id in labels:
                with Image.open(io.BytesIO(cell.display_png)) as image:
                    result[image.convert("RGB").tobytes()] = labels[cell.id]
        return result


def test_imagefolder_export_reimports_as_the_same_labels(pg_db_url: str, tmp_path: Path) -> None:
    make_world(tmp_path)
    before = {pixels: label for pixels, label in _labels_by_pixels().items() if label != "unsure"}
    assert len(before) == 7 and len(set(before.values())) == 3
    result = CliRunner().invoke(leukolab_cli, ["export", "labels", str(tmp_path / "out"), "--format", "imagefolder"])
    assert result.exit_code == 0, result.output

    empty_tables(pg_db_url)  # a fresh database: nothing is a duplicate
    make_user("ida", role="admin")
    result = CliRunner().invoke(leukolab_cli, ["import", str(tmp_path / "out"), "--labelled"])

    assert result.exit_code == 0, result.output
    assert "imported 7 cells, 7 labelled" in result.output
    assert _labels_by_pixels() == before
