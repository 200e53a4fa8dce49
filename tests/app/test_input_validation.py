"""Input validation (issue 13): out-of-range ids, NaN, odd file names, pixel bombs, deep pixels, body size.

Each answer is a 4xx with a message, never a 500, and a refused import writes nothing.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

import app.cells.importer as importer
from app.cells.images import UnreadableImage, open_image
from app.cells.importer import import_folder, import_zip
from app.cells.sources import ImportRefused
from app.db import session_scope
from app.main import create_app
from app.models import Cell
from cli.importing import import_command
from tests.app.cells.test_import import counts
from tests.support.database import use_database
from tests.support.factories import make_cells, make_user
from tests.support.http import browser_login, token_headers
from tests.support.images import huge_png, image_bytes, make_cell_image, make_flat_folder, make_zip

TOO_BIG_ID = 2**31  # one past PostgreSQL's integer: every id route gave 500


@pytest.fixture
def client(pg_db_url: str):
    with TestClient(create_app()) as client:
        yield client


# --- 7. ids ---------------------------------------------------------------------------------------


def test_ids_over_32_bits_are_refused_on_every_id_route(client: TestClient) -> None:
    make_user("root", role="admin")
    make_cells(1)
    auth = token_headers(client, "root")
    api = [
        ("GET", "/api/v1/cells/{id}/image", None),
        ("POST", "/api/v1/cells/{id}/lease", None),
        ("POST", "/api/v1/cells/{id}/labels", {"label": "basophil"}),
        ("GET", "/api/v1/training-runs/{id}", None),
        ("POST", "/api/v1/training-runs/{id}/cancel", None),
        ("POST", "/api/v1/models/{id}/promote", None),
        ("POST", "/api/v1/users/{id}/deactivate", None),
    ]
    for method, path, body in api:
        too_big = client.request(method, path.format(id=TOO_BIG_ID), json=body, headers=auth)
        assert too_big.status_code == 422, (path, too_big.text)
        assert isinstance(too_big.json()["detail"], str) and "2147483647" in too_big.json()["detail"]
        largest = client.request(method, path.format(id=2**31 - 1), json=body, headers=auth)
        assert largest.status_code == 404, (path, largest.text)  # in range: looked up, not found
    excluded = client.get("/api/v1/queue/next", params={"exclude": [1, TOO_BIG_ID]}, headers=auth)
    assert excluded.status_code == 422 and "exclude" in excluded.json()["detail"]

    csrf = browser_login(client, "root")
    pages = [
        ("POST", "/admin/training/runs/{id}/cancel", {"csrf_token": csrf}),
        ("POST", "/admin/models/{id}/promote", {"csrf_token": csrf}),
        ("POST", "/admin/users/{id}/active", {"csrf_token": csrf, "active": "false"}),
        ("GET", "/admin/models/{id}/confusion.png", None),
    ]
    for method, path, form in pages:
        page = client.request(method, path.format(id=TOO_BIG_ID), data=form, headers={"accept": "text/html"})
        assert page.status_code == 422, (path, page.text[:300])
        assert "2147483647" in page.text


# --- 8. NaN ---------------------------------------------------------------------------------------


def test_nan_in_json_is_a_422_with_a_string_detail(client: TestClient) -> None:
    make_user("root", role="admin")
    (cell_id,) = make_cells(1)
    auth = {**token_headers(client, "root"), "content-type": "application/json"}
    for path, raw in [
        (f"/api/v1/cells/{cell_id}/labels", '{"label": NaN}'),
        ("/api/v1/training-runs", '{"entropy_threshold": NaN}'),
        ("/api/v1/training-runs", '{"entropy_threshold": Infinity, "epochs": -Infinity}'),
    ]:
        response = client.post(path, content=raw, headers=auth)
        assert response.status_code == 422, response.text
        body = response.json()
        assert isinstance(body["detail"], str) and body["detail"].startswith("invalid request: body.")
        assert body["errors"] and all(isinstance(error["msg"], str) for error in body["errors"])
    assert {error["input"] for error in body["errors"]} == {"inf", "-inf"}  # the input, made JSON-safe


def test_openapi_422_and_error_schemas_match_the_replies(client: TestClient) -> None:
    schema = create_app().openapi()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert components["ValidationErrorOut"]["properties"]["detail"]["type"] == "string"
    labels = schema["paths"]["/api/v1/cells/{cell_id}/labels"]["post"]["responses"]
    assert labels["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationErrorOut")
    assert {"401", "404", "413", "422"} <= set(labels)
    promote = schema["paths"]["/api/v1/models/{model_id}/promote"]["post"]["responses"]
    assert {"401", "403", "404", "503"} <= set(promote)
    cell_id = schema["paths"]["/api/v1/cells/{cell_id}/image"]["get"]["parameters"][0]["schema"]
    assert (cell_id["minimum"], cell_id["maximum"]) == (1, 2**31 - 1)


def test_promote_with_the_broker_down_says_so(pg_db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_database(pg_db_url, monkeypatch, redis_url="redis://127.0.0.1:1/0")
    make_user("root", role="admin")
    with TestClient(create_app()) as client:
        response = client.post("/api/v1/models/1/promote", headers=token_headers(client, "root"))
    assert response.status_code == 503
    assert "the model cannot be promoted" in response.json()["detail"]
    assert "training" not in response.json()["detail"]


# --- 12. body size ----------------------------------------------------------------------------------


def test_large_bodies_get_413_before_authentication(client: TestClient) -> None:
    make_user("root", role="admin")
    big = b'{"label": "' + b"x" * (2 * 1024**2) + b'"}'
    anonymous = client.post("/api/v1/cells/1/labels", content=big, headers={"content-type": "application/json"})
    assert anonymous.status_code == 413  # not 401: refused before the body is parsed or the login checked
    assert "over the limit of 1,048,576 bytes" in anonymous.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(40):
            yield b"x" * 65536

    streamed = client.post("/api/v1/users", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text

    # the upload route allows a logged-in admin more, and an anonymous caller no more than anywhere else
    upload = make_zip({f"c{i}.png": os.urandom(300_000) for i in range(5)})
    assert len(upload) > 1024**2
    files = {"file": ("cells.zip", upload, "application/zip")}
    assert client.post("/api/v1/imports", files=files).status_code == 413
    admin = client.post("/api/v1/imports", files=files, headers=token_headers(client, "root"))
    assert admin.status_code == 422 and "nothing was imported" in admin.json()["detail"]  # read, then refused


# --- 10. file names ---------------------------------------------------------------------------------


def _zip_with_invalid_utf8_name() -> bytes:
    """A zip whose entry is flagged UTF-8 (bit 11) but named with the bytes ``\\xff\\xfe``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("good.png", image_bytes(make_cell_image(1)))
        archive.writestr("cell-é.png", image_bytes(make_cell_image(2)))  # non-ASCII: zipfile sets bit 11
    data = buffer.getvalue().replace("cell-é.png".encode(), b"cell-\xff\xfe.png")
    with pytest.raises(UnicodeDecodeError):
        zipfile.ZipFile(io.BytesIO(data))
    return data


def test_zip_entry_with_an_invalid_utf8_name_is_refused(client: TestClient) -> None:
    make_user("root", role="admin")
    data = _zip_with_invalid_utf8_name()
    files = {"file": ("names.zip", data, "application/zip")}
    response = client.post("/api/v1/imports", files=files, headers=token_headers(client, "root"))
    assert response.status_code == 422, response.text
    assert "cell-\\xff\\xfe.png" in response.json()["detail"] and "not valid UTF-8" in response.json()["detail"]

    csrf = browser_login(client, "root")
    page = client.post("/admin/import", data={"csrf_token": csrf}, files=files, headers={"HX-Request": "true"})
    assert page.status_code == 422 and "not valid UTF-8" in page.text
    assert counts() == {"cells": 0, "labels": 0, "imports": 0}


def test_cli_refuses_a_folder_file_named_with_invalid_bytes(pg_db_url: str, tmp_path: Path) -> None:
    make_flat_folder(tmp_path / "in", count=2)
    (tmp_path / "in" / os.fsdecode(b"\xff\xfe.png")).write_bytes(image_bytes(make_cell_image(7)))
    cli = typer.Typer()
    cli.command("import")(import_command)
    cli.callback()(lambda: None)

    result = CliRunner().invoke(cli, ["import", str(tmp_path / "in")])

    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "refused: \\xff\\xfe.png: its name is not valid UTF-8" in result.output
    assert counts() == {"cells": 0, "labels": 0, "imports": 0}


# --- 11. pixels -------------------------------------------------------------------------------------


def test_a_pixel_bomb_zip_is_refused_before_any_decoding(pg_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = make_zip({f"black{i}.png": huge_png(7000, 7000) for i in range(3)})  # 3 × 49 MP, each under 50 MP
    assert len(bomb) < 10_000

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded pixels of a refused import")

    monkeypatch.setattr(importer, "open_image", no_decoding)
    with (
        pytest.raises(ImportRefused, match="decompression bomb: the images declare 147.0 MP") as refused,
        session_scope() as session,
    ):
        import_zip(session=session, file=io.BytesIO(bomb), labelled=False, user_id=None)
    assert "black2.png (7000×7000 px)" in refused.value.message
    assert counts() == {"cells": 0, "labels": 0, "imports": 0}


def test_the_import_pixel_total_comes_from_settings(
    pg_db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_database(pg_db_url, monkeypatch, max_import_pixels="5000")
    make_flat_folder(tmp_path / "in", count=3, size=48)  # 3 × 2,304 px
    with pytest.raises(ImportRefused, match="over this import's limit"), session_scope() as session:
        import_folder(session=session, path=tmp_path / "in", labelled=False, user_id=None)
    assert counts()["cells"] == 0


def _imported_grey(tmp_path: Path, name: str, data: bytes) -> float:
    """Import one file and return the mean of its stored display pixels."""
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / name).write_bytes(data)
    with session_scope() as session:
        import_folder(session=session, path=tmp_path / "one", labelled=False, user_id=None)
    with session_scope() as session:
        png = session.scalar(select(Cell.display_png))
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L")).mean())


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_16_bit_png_keeps_its_grey_levels(pg_db_url: str, tmp_path: Path) -> None:
    pixels = np.full((40, 40), 100 * 257, dtype=np.uint16)  # grey 100 of 255 in 16 bits
    pixels[10:30, 10:30] = 200 * 257
    data = _encoded(pixels, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    mean = _imported_grey(tmp_path, "deep.png", data)
    assert mean == pytest.approx((1200 * 100 + 400 * 200) / 1600, abs=2)  # not 255: Pillow's clip saturated it


def test_a_float_tiff_of_0_to_1_converts_and_others_are_refused(pg_db_url: str, tmp_path: Path) -> None:
    pixels = np.full((40, 40), 0.25, dtype=np.float32)
    assert _imported_grey(tmp_path, "float.tif", _encoded(pixels, "TIFF")) == pytest.approx(64, abs=1)  # not black

    with pytest.raises(UnreadableImage, match="values from 0 to 255: only 0–1 can be converted"):
        open_image(
            io.BytesIO(_encoded(np.linspace(0, 255, 1600, dtype=np.float32).reshape(40, 40), "TIFF")), max_pixels=10**6
        )
    nan = np.full((40, 40), np.nan, dtype=np.float32)
    with pytest.raises(UnreadableImage, match="NaN"):
        open_image(io.BytesIO(_encoded(nan, "TIFF")), max_pixels=10**6)


def test_an_image_too_small_to_hold_a_cell_is_refused(pg_db_url: str, tmp_path: Path) -> None:
    make_flat_folder(tmp_path / "in", count=1)
    (tmp_path / "in" / "dot.png").write_bytes(image_bytes(Image.new("RGB", (1, 1), (200, 100, 100))))
    with (
        pytest.raises(ImportRefused, match=r"dot.png: too small to hold a cell: 1×1 px") as refused,
        session_scope() as session,
    ):
        import_folder(session=session, path=tmp_path / "in", labelled=False, user_id=None)
    assert len(refused.value.rejections) == 1
    assert counts()["cells"] == 0


def test_queue_limit_out_of_range_is_refused_not_clamped(client: TestClient) -> None:
    make_user("cyto")
    headers = token_headers(client, "cyto")
    for limit in (0, -1, 1001):
        response = client.get("/api/v1/queue", params={"limit": limit}, headers=headers)
        assert response.status_code == 422, (limit, response.text)
        assert "limit" in response.json()["detail"]
    assert client.get("/api/v1/queue", params={"limit": 1000}, headers=headers).status_code == 200


# --- schema-violating input that scripts/fuzz found accepted (AcceptedNegativeData) -----------------


def test_activity_times_must_be_rfc3339_date_times_with_a_zone(client: TestClient) -> None:
    make_user("root", role="admin")
    make_user("cyto")
    (cell_id,) = make_cells(1)
    auth, cyto = token_headers(client, "root"), token_headers(client, "cyto")
    assert client.post(f"/api/v1/cells/{cell_id}/labels", json={"label": "basophil"}, headers=cyto).status_code == 201
    # a number was read as seconds since 1970, a date or a time without a zone in the database's zone
    for bad in ("0.5", "1700000000", "2026-01-31", "2026-01-31T08:00:00", "2026-01-31 08:00:00Z", "yesterday"):
        for name in ("since", "until"):
            response = client.get("/api/v1/activity", params={name: bad}, headers=auth)
            assert response.status_code == 422, (name, bad, response.text)
            assert response.json()["detail"].startswith(f"invalid request: query.{name}:")
            assert "RFC 3339" in response.json()["detail"]

    def events(**times: str) -> list[int]:
        response = client.get("/api/v1/activity", params=times, headers=auth)
        assert response.status_code == 200, response.text
        return [event["cell_id"] for event in response.json()["events"]]

    assert events(since="2000-01-01T00:00:00Z", until="2999-01-01T00:00:00.5+02:00") == [cell_id]
    assert events(until="2000-01-01T00:00:00z") == []
    assert events(since="2999-01-01T00:00:00-05:00") == []


def test_training_run_fields_of_another_json_type_are_refused_and_start_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.training import broker
    from ml.config import METHODS, PROFILES

    sent: list[tuple] = []
    monkeypatch.setattr(broker, "enqueue", lambda task, *args: sent.append(args))
    make_user("root", role="admin")
    auth = token_headers(client, "root")
    tiny = {"method": "supervised", "profile": "tiny"}
    wrong_types = [
        {"auto_promote": 0},  # was taken as false
        {"warm_start": "yes"},
        {"warm_start_from_reference": 1},
        {"epochs": "5"},
        {"epochs": True},
        {"epochs": 2.5},
        {"entropy_threshold": "0.5"},
        {"method": ["supervised"]},
    ]
    for wrong in wrong_types:
        response = client.post("/api/v1/training-runs", json={**tiny, **wrong}, headers=auth)
        assert response.status_code == 422, (wrong, response.text)
        assert response.json()["detail"].startswith(f"invalid request: body.{next(iter(wrong))}")
    assert client.get("/api/v1/training-runs", headers=auth).json() == [] and sent == []

    # The schema lists the methods and profiles; an unknown one still gets the service's answer.
    run_create = create_app().openapi()["components"]["schemas"]["RunCreate"]["properties"]
    assert (run_create["method"]["enum"], run_create["profile"]["enum"]) == (list(METHODS), list(PROFILES))
    unknown = client.post("/api/v1/training-runs", json={**tiny, "method": "magic"}, headers=auth)
    assert unknown.status_code == 422 and unknown.json()["allowed"] == list(METHODS)

    body = {**tiny, "epochs": 3.0, "entropy_threshold": 1, "auto_promote": True, "warm_start_from_reference": False}
    accepted = client.post("/api/v1/training-runs", json=body, headers=auth)
    assert accepted.status_code == 202, accepted.text
    assert sent == [(accepted.json()["id"],)]
    (run,) = client.get("/api/v1/training-runs", headers=auth).json()
    assert run["params"]["entropy_threshold"] == 1.0 and run["params"]["auto_promote"] is True
    assert run["params"]["epochs"] == 3 and isinstance(run["params"]["epochs"], int)  # 3.0 is a JSON integer


def test_a_body_field_the_schema_does_not_name_is_refused_and_writes_nothing(client: TestClient) -> None:
    from app.models import Label

    make_user("root", role="admin")
    (cell_id,) = make_cells(1)
    auth = token_headers(client, "root")
    misspelt = [
        (f"/api/v1/cells/{cell_id}/labels", {"label": "basophil", "idempotency_kye": "k1"}, "idempotency_kye"),
        ("/api/v1/training-runs", {"method": "supervised", "profile": "tiny", "epoch": 3}, "epoch"),
        ("/api/v1/users", {"username": "reader", "password": "a long password", "rol": "admin"}, "rol"),
        ("/api/v1/classes", {"name": "blast", "hotkey": "b", "is_wbc": True, "colour": "#aa0000", "wbc": 1}, "wbc"),
    ]
    for path, body, field in misspelt:
        response = client.post(path, json=body, headers=auth)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["detail"] == f"invalid request: body.{field}: Extra inputs are not permitted"
    with session_scope() as session:
        assert session.scalars(select(Label)).all() == []
    assert client.get("/api/v1/training-runs", headers=auth).json() == []
    assert [u["username"] for u in client.get("/api/v1/users", headers=auth).json()] == ["root"]
    assert "blast" not in [c["name"] for c in client.get("/api/v1/classes", headers=auth).json()]
    # the schema says so, so generated clients and fuzzers know it too
    schemas = create_app().openapi()["components"]["schemas"]
    assert all(schemas[name]["additionalProperties"] is False for name in ("LabelIn", "RunCreate", "UserCreate"))
