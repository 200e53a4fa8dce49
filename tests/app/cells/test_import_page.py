"""The admin's .zip upload page and API answer with a summary, or refuse with reasons and change nothing."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import session_scope
from app.main import create_app
from app.models import Cell, Label
from tests.support.factories import make_user
from tests.support.http import browser_login, token_headers
from tests.support.images import image_bytes, make_cell_image, make_imagefolder, make_zip, zip_folder


def counts() -> tuple[int, int]:
    with session_scope() as session:
        return session.scalar(select(func.count(Cell.id))), session.scalar(select(func.count(Label.id)))


def test_upload_page_imports_labelled_zip_and_refuses_bad_one(any_db_url: str, tmp_path: Path) -> None:
    make_user("root", role="admin")
    make_imagefolder(tmp_path / "folder", classes=["neutrophil", "basophil"], per_class=3)
    archive = zip_folder(tmp_path / "folder", tmp_path / "cells.zip")
    with TestClient(create_app()) as client:
        csrf = browser_login(client, "root")
        ok = client.post(
            "/admin/import",
            data={"csrf_token": csrf, "labelled": "auto"},
            files={"file": ("cells.zip", archive.read_bytes(), "application/zip")},
            headers={"HX-Request": "true"},
        )
        assert ok.status_code == 200, ok.text
        assert "<strong>6</strong> cells imported, 6 with expert labels" in ok.text
        assert counts() == (6, 6)

        again = client.post(
            "/admin/import",
            data={"csrf_token": csrf},
            files={"file": ("cells.zip", archive.read_bytes(), "application/zip")},
            headers={"HX-Request": "true"},
        )
        assert "<strong>6</strong> duplicates skipped" in again.text

        bad = make_zip({"good.png": image_bytes(make_cell_image(99)), "notes/readme.png": b"hello, not an image"})
        refused = client.post(
            "/admin/import",
            data={"csrf_token": csrf, "labelled": "no"},
            files={"file": ("bad.zip", bad, "application/zip")},
            headers={"HX-Request": "true"},
        )
        assert refused.status_code == 422
        assert "Nothing was imported" in refused.text and "notes/readme.png" in refused.text
        assert counts() == (6, 6)

        no_csrf = client.post("/admin/import", files={"file": ("bad.zip", bad, "application/zip")})
        assert no_csrf.status_code == 403


def test_import_api_is_admin_only_and_all_or_nothing(pg_db_url: str) -> None:
    make_user("root", role="admin")
    make_user("cyto")
    good = make_zip({f"c{i}.png": image_bytes(make_cell_image(i)) for i in range(4)})
    bad = make_zip({"a.png": image_bytes(make_cell_image(7)), "../escape.png": image_bytes(make_cell_image(8))})
    with TestClient(create_app()) as client:
        cyto = token_headers(client, "cyto")
        assert client.post("/api/v1/imports", files={"file": ("g.zip", good)}, headers=cyto).status_code == 403
        admin = token_headers(client, "root")
        refused = client.post("/api/v1/imports", files={"file": ("b.zip", bad)}, headers=admin)
        assert refused.status_code == 422
        assert any("escape.png" in r["file"] for r in refused.json()["rejections"])
        assert counts() == (0, 0)
        created = client.post("/api/v1/imports", files={"file": ("g.zip", good)}, headers=admin)
        assert created.status_code == 201 and created.json()["imported"] == 4
        assert counts() == (4, 0)
