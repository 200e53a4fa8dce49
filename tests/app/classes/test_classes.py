"""The class set on real PostgreSQL: add, rename, retire, merge and its undo, with the audit rows."""

from __future__ import annotations

import re
import string

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.classes import service
from app.classes.schemas import HOTKEY_PATTERN, NAME_PATTERN
from app.db import session_scope
from app.errors import Conflict, InvalidInput
from app.labelling.service import add_label, class_names, current_labels
from app.main import create_app
from app.models import CellClass, ClassEvent, Label, ModelVersion
from app.training.service import promote
from tests.support.factories import get_user, make_cells, make_user
from tests.support.http import token_headers


def _events(session, class_id: int) -> list[str]:
    return list(
        session.scalars(select(ClassEvent.action).where(ClassEvent.class_id == class_id).order_by(ClassEvent.id))
    )


def test_add_rename_retire_keep_labels_append_only(pg_db_url: str) -> None:
    make_user("ada", role="admin")
    make_user("carla")
    cells = make_cells(3)
    with session_scope() as session:
        admin = get_user("ada")
        added = service.add_class(session=session, user=admin, name="Erythroblast", hotkey="E", is_wbc=False)
        assert (added.name, added.display_name, added.hotkey, added.is_wbc) == (
            "erythroblast",
            "Erythroblast",
            "e",
            False,
        )
        assert class_names(session=session)[-1] == "erythroblast"
        with pytest.raises(Conflict):  # hotkeys are unique
            service.add_class(session=session, user=admin, name="Platelet", hotkey="1")
        with pytest.raises(InvalidInput):  # z is undo in the key map
            service.add_class(session=session, user=admin, name="Platelet", hotkey="z")
    with session_scope() as session:
        label = add_label(session=session, user=get_user("carla"), cell_id=cells[0], value="erythroblast")
        label_id = label.id
    with session_scope() as session:
        renamed = service.rename_class(session=session, user=get_user("ada"), ref="erythroblast", new_name="NRBC")
        assert (renamed.name, renamed.display_name) == ("erythroblast", "NRBC")
        # the label row is untouched and still means this class
        assert session.get(Label, label_id).value == "erythroblast"
        assert current_labels(session=session)[cells[0]] == "erythroblast"
        assert service.get_class(session=session, ref="nrbc").id == renamed.id
    with session_scope() as session:
        service.retire_class(session=session, user=get_user("ada"), ref="NRBC")
    with session_scope() as session:
        assert "erythroblast" not in class_names(session=session)
        with pytest.raises(InvalidInput):  # hidden from labelling
            add_label(session=session, user=get_user("carla"), cell_id=cells[1], value="erythroblast")
        assert current_labels(session=session)[cells[0]] == "erythroblast"  # history kept
        cls = session.scalar(select(CellClass).where(CellClass.name == "erythroblast"))
        assert _events(session, cls.id) == ["add", "rename", "retire"]
        rename = session.scalar(select(ClassEvent).where(ClassEvent.action == "rename"))
        assert rename.detail == {"from": "Erythroblast", "to": "NRBC"}
        assert rename.user_id == get_user("ada").id


def test_merge_appends_a_row_per_cell_and_undo_restores(pg_db_url: str) -> None:
    make_user("ada", role="admin")
    make_user("carla")
    cells = make_cells(5)
    with session_scope() as session:
        carla = get_user("carla")
        for cell_id, value in zip(cells, ["basophil", "basophil", "eosinophil", "basophil", "unsure"], strict=True):
            add_label(session=session, user=carla, cell_id=cell_id, value=value)
    with session_scope() as session:
        event = service.merge_classes(session=session, user=get_user("ada"), source="basophil", target="eosinophil")
        merge_id = event.id
    with session_scope() as session:
        labels = current_labels(session=session)
        assert [labels[c] for c in cells] == ["eosinophil", "eosinophil", "eosinophil", "eosinophil", "unsure"]
        rows = session.scalars(select(Label).where(Label.class_event_id == merge_id).order_by(Label.cell_id)).all()
        assert [(r.cell_id, r.value, r.source, r.kind) for r in rows] == [
            (c, "eosinophil", "merge", "label") for c in (cells[0], cells[1], cells[3])
        ]
        assert session.get(ClassEvent, merge_id).detail["cells"] == 3
        assert "basophil" not in class_names(session=session)  # the merged class is retired
        with pytest.raises(Conflict):  # merging into a retired class is refused
            service.merge_classes(session=session, user=get_user("ada"), source="monocyte", target="basophil")
    with session_scope() as session:
        service.undo_merge(session=session, user=get_user("ada"), event_id=merge_id)
    with session_scope() as session:
        labels = current_labels(session=session)
        assert [labels[c] for c in cells] == ["basophil", "basophil", "eosinophil", "basophil", "unsure"]
        undo_rows = session.scalars(select(Label).where(Label.kind == "undo", Label.source == "merge")).all()
        assert sorted(r.undoes_id for r in undo_rows) == sorted(r.id for r in rows)
        assert "basophil" in class_names(session=session)
        assert [e.action for e in service.list_events(session=session)][:2] == ["unmerge", "merge"]
        with pytest.raises(Conflict):
            service.undo_merge(session=session, user=get_user("ada"), event_id=merge_id)


def test_api_lists_and_changes_classes_for_admins_only(pg_db_url: str) -> None:
    make_user("ada", role="admin")
    make_user("carla")
    with TestClient(create_app()) as client:
        admin, cyto = token_headers(client, "ada"), token_headers(client, "carla")
        new = {"name": "Immature granulocyte", "hotkey": "g", "colour": "#123456", "is_wbc": True}
        assert client.post("/api/v1/classes", json=new, headers=cyto).status_code == 403
        created = client.post("/api/v1/classes", json=new, headers=admin)
        assert created.status_code == 201, created.text
        assert created.json()["name"] == "immature-granulocyte"
        assert client.post("/api/v1/classes", json=new, headers=admin).status_code == 409
        class_id = created.json()["id"]
        moved = client.patch(f"/api/v1/classes/{class_id}", json={"position": 0, "display_name": "IG"}, headers=admin)
        assert moved.status_code == 200, moved.text
        listed = client.get("/api/v1/classes", headers=cyto).json()
        assert [c["display_name"] for c in listed][:2] == ["IG", "neutrophil"]
        assert client.post(f"/api/v1/classes/{class_id}/retire", headers=admin).json()["retired"] is True
        assert all(c["id"] != class_id for c in client.get("/api/v1/classes", headers=cyto).json())
        everything = client.get("/api/v1/classes?include_retired=true", headers=admin).json()
        assert any(c["id"] == class_id and c["retired"] for c in everything)
        events = client.get("/api/v1/class-events", headers=admin).json()
        assert [e["action"] for e in events] == ["retire", "reorder", "rename", "add"]
        page = client.get("/admin/classes", headers=admin)
        assert page.status_code == 200 and "IG" in page.text


def test_promoting_a_model_that_lacks_a_labelled_class_needs_confirmation(pg_db_url: str) -> None:
    make_user("ada", role="admin")
    cells = make_cells(2)
    with session_scope() as session:
        ada = get_user("ada")
        service.add_class(session=session, user=ada, name="Platelet", hotkey="p", is_wbc=False)
        add_label(session=session, user=ada, cell_id=cells[0], value="platelet")
        version = ModelVersion(artefact_path="/nowhere.pt", class_names=["neutrophil", "lymphocyte"], metrics={})
        session.add(version)
        session.flush()
        with pytest.raises(Conflict, match="Platelet"):
            promote(session=session, model_id=version.id)
        assert promote(session=session, model_id=version.id, confirm_missing=True).is_active


def test_the_schema_hotkey_pattern_is_the_rule_the_service_checks() -> None:
    for key in string.printable:
        lowered = key.strip().lower()
        service_takes = bool(service.HOTKEY.fullmatch(lowered)) and lowered not in service.reserved_hotkeys()
        assert bool(re.fullmatch(HOTKEY_PATTERN, key)) == service_takes, repr(key)
    components = create_app().openapi()["components"]["schemas"]
    assert components["ClassCreate"]["properties"]["hotkey"]["pattern"] == HOTKEY_PATTERN
    assert components["ClassUpdate"]["properties"]["hotkey"]["anyOf"][0]["pattern"] == HOTKEY_PATTERN


def test_the_schema_name_pattern_holds_for_every_name_the_service_can_take() -> None:
    for name in ["Erythroblast", "IG", "  b  ", "Ç2", "Ì", "!!!", "é-à", "-", "7"]:
        has_a_key = bool(service.slug(name))  # the service refuses an empty slug
        assert bool(re.search(NAME_PATTERN, name)) == has_a_key, name
    components = create_app().openapi()["components"]["schemas"]
    assert components["ClassCreate"]["properties"]["name"]["pattern"] == NAME_PATTERN
    assert components["ClassUpdate"]["properties"]["display_name"]["anyOf"][0]["pattern"] == NAME_PATTERN


def test_names_and_hotkeys_off_the_schema_patterns_get_the_service_messages(pg_db_url: str) -> None:
    make_user("ada", role="admin")
    with TestClient(create_app()) as client:
        admin = token_headers(client, "ada")
        reserved_key = client.post("/api/v1/classes", json={"name": "Platelet", "hotkey": "U"}, headers=admin)
        no_key = client.post("/api/v1/classes", json={"name": "Ì", "hotkey": "p"}, headers=admin)
    assert reserved_key.status_code == 422
    assert reserved_key.json()["detail"] == "hotkey 'u' is taken by the key map (undo, help): choose another"
    assert no_key.status_code == 422 and no_key.json()["detail"] == "'Ì' cannot name a class: choose another name"
