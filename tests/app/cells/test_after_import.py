"""What an import of unlabelled cells sends once it has committed. A lab's first day, no model active:
the cold start (the first cells to label, chosen for their variety). Day 30, a model active (the lab's
or a reference): the scoring of the cells that model has not scored, so they get suggestions and join
the queue. A broker that is down leaves the import standing, with a warning."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from app.db import session_scope
from app.main import create_app
from app.models import Cell, ModelVersion
from app.statuses import ModelOrigin
from app.training import broker
from cli.importing import import_command
from tests.support.database import use_database
from tests.support.factories import make_user
from tests.support.fields import make_field, save
from tests.support.http import browser_login, token_headers
from tests.support.images import image_bytes, make_cell_image, make_flat_folder, make_imagefolder, make_zip, zip_folder

cli = typer.Typer()
cli.command("import")(import_command)
cli.callback()(lambda: None)


def cells_zip(count: int, seed: int) -> bytes:
    """``count`` unlabelled cells at the top of a zip (no class folders)."""
    return make_zip({f"c{seed}-{i}.png": image_bytes(make_cell_image(seed * 1000 + i)) for i in range(count)})


def stored() -> tuple[int, int | None]:
    """What another process (a worker) sees now: the number of cells and the newest cell id."""
    with session_scope() as session:
        return session.scalar(select(func.count(Cell.id))), session.scalar(select(func.max(Cell.id)))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple, tuple[int, int | None]]]:
    """Every task sent through the broker, with the cells a worker would have seen at that moment."""
    calls: list[tuple[str, tuple, tuple[int, int | None]]] = []
    monkeypatch.setattr(broker, "enqueue", lambda task, *args: calls.append((task, args, stored())))
    return calls


def test_unlabelled_imports_before_any_model_send_the_cold_start_after_their_commit(
    any_db_url: str, tmp_path: Path, sent: list
) -> None:
    make_user("root", role="admin")
    with TestClient(create_app()) as client:
        admin = token_headers(client, "root")
        created = client.post("/api/v1/imports", files={"file": ("a.zip", cells_zip(4, seed=1))}, headers=admin)
        assert created.status_code == 201, created.text
        newest = stored()[1]
        assert sent == [(broker.TASK_COLD_START, (newest,), (4, newest))]  # sent once the 4 cells were visible

        csrf = browser_login(client, "root")
        page = client.post(
            "/admin/import",
            data={"csrf_token": csrf, "labelled": "no"},
            files={"file": ("b.zip", cells_zip(3, seed=2), "application/zip")},
            headers={"HX-Request": "true"},
        )
        assert page.status_code == 200 and "<strong>3</strong> cells imported" in page.text
        assert sent[1] == (broker.TASK_COLD_START, (stored()[1],), (7, stored()[1]))

        # nothing new to label: duplicates only, expert labels only, a refused import
        again = client.post("/api/v1/imports", files={"file": ("a.zip", cells_zip(4, seed=1))}, headers=admin)
        assert again.status_code == 201 and again.json()["imported"] == 0
        make_imagefolder(tmp_path / "labelled", classes=["neutrophil", "monocyte"], per_class=2, seed=3)
        labelled = zip_folder(tmp_path / "labelled", tmp_path / "labelled.zip").read_bytes()
        experts = client.post("/api/v1/imports", files={"file": ("l.zip", labelled)}, headers=admin)
        assert experts.status_code == 201 and experts.json()["labelled"] == 4
        bad = make_zip({"good.png": image_bytes(make_cell_image(99)), "bad.png": b"not an image"})
        assert client.post("/api/v1/imports", files={"file": ("x.zip", bad)}, headers=admin).status_code == 422
        assert len(sent) == 2

        # smear fields: their located white cells are unlabelled too
        save(tmp_path / "fields" / "slideA" / "a1.png", make_field([(150, 140, 40), (420, 200, 50)])[0])
        fields = zip_folder(tmp_path / "fields", tmp_path / "fields.zip").read_bytes()
        located = client.post("/api/v1/samples/imports", files={"file": ("f.zip", fields)}, headers=admin)
        assert located.status_code == 201 and located.json()["cells"] == 2
        assert sent[2] == (broker.TASK_COLD_START, (stored()[1],), (7 + 4 + 2, stored()[1]))
    assert len(sent) == 3


def active_model(origin: ModelOrigin = ModelOrigin.LOCAL) -> int:
    """An active model version (the lab's, or a reference serving until the lab has one); its id."""
    with session_scope() as session:
        version = ModelVersion(artefact_path="/nonexistent/m.pt", class_names=["a", "b"], is_active=True, origin=origin)
        session.add(version)
        session.flush()
        return version.id


@pytest.mark.parametrize("origin", [ModelOrigin.LOCAL, ModelOrigin.REFERENCE])
def test_with_a_model_active_imports_send_the_scoring_of_their_cells_not_the_cold_start(
    any_db_url: str, tmp_path: Path, sent: list, origin: ModelOrigin
) -> None:
    make_user("root", role="admin")
    model_id = active_model(origin)
    with TestClient(create_app()) as client:
        admin = token_headers(client, "root")
        created = client.post("/api/v1/imports", files={"file": ("a.zip", cells_zip(4, seed=1))}, headers=admin)
        assert created.status_code == 201 and created.json()["imported"] == 4
        assert sent == [(broker.TASK_SCORE_NEW, (model_id,), (4, stored()[1]))]  # sent once the cells were visible

        again = client.post("/api/v1/imports", files={"file": ("a.zip", cells_zip(4, seed=1))}, headers=admin)
        assert again.status_code == 201 and again.json()["imported"] == 0 and len(sent) == 1  # nothing new

        save(tmp_path / "fields" / "slideA" / "a1.png", make_field([(150, 140, 40), (420, 200, 50)])[0])
        fields = zip_folder(tmp_path / "fields", tmp_path / "fields.zip").read_bytes()
        located = client.post("/api/v1/samples/imports", files={"file": ("f.zip", fields)}, headers=admin)
        assert located.status_code == 201 and located.json()["cells"] == 2
        assert sent[1] == (broker.TASK_SCORE_NEW, (model_id,), (6, stored()[1]))

    make_flat_folder(tmp_path / "more", count=2, seed=5)
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "more")])
    assert result.exit_code == 0, result.output
    assert "imported 2 cells" in result.output and "cold start" not in result.output
    assert "a model is active: the new cells were sent to the worker for scoring" in result.output
    assert sent[2] == (broker.TASK_SCORE_NEW, (model_id,), (8, stored()[1]))
    assert [task for task, *_ in sent] == [broker.TASK_SCORE_NEW] * 3


def test_the_cli_import_sends_the_cold_start_through_the_broker(any_db_url: str, tmp_path: Path) -> None:
    """The real client on the filesystem broker (the embedded demo's): one message, by name, for the worker."""
    make_flat_folder(tmp_path / "cells", count=3, seed=2)
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "cells")])
    assert result.exit_code == 0, result.output
    assert "imported 3 cells" in result.output and "no model yet: the cold start was sent" in result.output
    newest = stored()[1]
    make_user("root", role="admin")
    make_imagefolder(tmp_path / "labelled", classes=["neutrophil"], per_class=2, seed=4)
    labelled = CliRunner().invoke(cli, ["import", str(tmp_path / "labelled"), "--labelled"])
    assert labelled.exit_code == 0 and "cold start" not in labelled.output

    (message,) = (tmp_path / "broker").rglob("*.msg")
    envelope = json.loads(message.read_text())
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert envelope["headers"]["task"] == broker.TASK_COLD_START
    assert envelope["properties"]["delivery_info"]["routing_key"] == broker.TASK_QUEUES[broker.TASK_COLD_START]
    assert (args, kwargs) == ([newest], {}) and stored() == (5, newest + 2)


def test_with_a_model_active_the_cli_import_sends_the_scoring_through_the_broker(
    any_db_url: str, tmp_path: Path
) -> None:
    model_id = active_model(ModelOrigin.REFERENCE)
    make_flat_folder(tmp_path / "cells", count=3, seed=2)
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "cells")])
    assert result.exit_code == 0, result.output
    assert "imported 3 cells" in result.output and "sent to the worker for scoring" in result.output

    (message,) = (tmp_path / "broker").rglob("*.msg")
    envelope = json.loads(message.read_text())
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert envelope["headers"]["task"] == broker.TASK_SCORE_NEW
    assert envelope["properties"]["delivery_info"]["routing_key"] == broker.TASK_QUEUES[broker.TASK_SCORE_NEW]
    assert (args, kwargs) == ([model_id], {})


def test_the_import_stands_when_the_broker_is_down(
    pg_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use_database(pg_db_url, monkeypatch, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    make_user("root", role="admin")
    with TestClient(create_app()) as client, caplog.at_level(logging.WARNING, logger="leukolab.import"):
        created = client.post(
            "/api/v1/imports", files={"file": ("a.zip", cells_zip(4, seed=1))}, headers=token_headers(client, "root")
        )
        assert created.status_code == 201, created.text
        assert created.json()["imported"] == 4 and stored()[0] == 4
        csrf = browser_login(client, "root")
        page = client.post(
            "/admin/import",
            data={"csrf_token": csrf},
            files={"file": ("b.zip", cells_zip(2, seed=2), "application/zip")},
            headers={"HX-Request": "true"},
        )
        assert page.status_code == 200 and "<strong>2</strong> cells imported" in page.text
    warnings = [r.getMessage() for r in caplog.records if r.name == "leukolab.import"]
    assert len(warnings) == 2 and all("cold start was not sent" in w and "unreachable" in w for w in warnings)
    assert "`leukolab cold-start`" in warnings[0]

    make_flat_folder(tmp_path / "cells", count=3, seed=3)
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "cells")])
    assert result.exit_code == 0, result.output
    assert "imported 3 cells" in result.output
    assert "warning: the cold start was not sent" in result.output and "unreachable" in result.output
    assert "no model yet: the cold start was sent" not in result.output
    assert stored()[0] == 9


def test_with_a_model_active_the_import_stands_when_the_broker_is_down(
    pg_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use_database(pg_db_url, monkeypatch, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    make_user("root", role="admin")
    model_id = active_model()
    with TestClient(create_app()) as client, caplog.at_level(logging.WARNING, logger="leukolab.import"):
        created = client.post(
            "/api/v1/imports", files={"file": ("a.zip", cells_zip(4, seed=1))}, headers=token_headers(client, "root")
        )
        assert created.status_code == 201, created.text
        assert created.json()["imported"] == 4 and stored()[0] == 4
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "leukolab.import"]
    assert "the scoring of the new cells was not sent" in warning and "unreachable" in warning
    assert f"model v{model_id}" in warning

    make_flat_folder(tmp_path / "cells", count=3, seed=3)
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "cells")])
    assert result.exit_code == 0, result.output
    assert "imported 3 cells" in result.output
    assert "warning: the scoring of the new cells was not sent" in result.output and "unreachable" in result.output
    assert "sent to the worker" not in result.output
    assert stored()[0] == 7
