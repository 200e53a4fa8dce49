"""The labelling page's keys come from one list: its buttons, its help overlay and label.js's config agree."""

from __future__ import annotations

import html
import json
import re

from fastapi.testclient import TestClient

from app.db import session_scope
from app.labelling.service import list_classes
from app.models import UNSURE
from tests.support.factories import make_user
from tests.support.http import browser_login


def test_buttons_help_and_script_config_are_one_keymap(client: TestClient) -> None:
    make_user("ana")
    browser_login(client, "ana")
    page = client.get("/label").text
    config = json.loads(html.unescape(re.search(r'id="label-config"[^>]*>(.*?)</script>', page, re.S).group(1)))
    keymap = config["keymap"]
    with session_scope() as session:
        classes = [(c.name, c.hotkey) for c in list_classes(session=session)]

    by_label = {entry["label"]: entry for entry in keymap if entry["action"] == "label"}
    assert list(by_label) == [name for name, _ in classes] + [UNSURE]
    for name, hotkey in classes:
        assert by_label[name]["keys"][0] == hotkey
    assert by_label["artefact"]["keys"] == [dict(classes)["artefact"], "x"]

    buttons = re.findall(
        r'<button type="button" data-(label|action)="([^"]+)"[^>]*><kbd>([^<]+)</kbd> ([^<]+)</button>', page
    )
    assert [(kind, value, key, text.strip()) for kind, value, key, text in buttons] == [
        ("label" if e["action"] == "label" else "action", e.get("label", e["action"]), e["keys"][0], e["button"])
        for e in keymap
        if e.get("button")
    ]
    overlay = page[page.index('<dialog id="keymap">') :]
    assert all(html.escape(entry["help"]) in overlay for entry in keymap)
    all_keys = [key for entry in keymap for key in entry["keys"]]
    assert len(all_keys) == len(set(all_keys)), "one key, one action"


def test_the_counters_list_every_class_in_use_with_its_labelled_cells(client: TestClient, tmp_path) -> None:
    from app.cells.importer import import_folder
    from app.classes.service import retire_class
    from tests.support.images import make_imagefolder

    admin = make_user("ada", role="admin")
    make_imagefolder(tmp_path / "set", classes=["neutrophil", "monocyte", "basophil"], per_class=2)
    make_imagefolder(tmp_path / "more", classes=["neutrophil"], per_class=1, seed=3)
    with session_scope() as session:
        import_folder(session=session, path=tmp_path / "set", labelled=True, user_id=admin)
        import_folder(session=session, path=tmp_path / "more", labelled=True, user_id=admin)
        retire_class(session=session, user=None, ref="basophil")
        shown = [c.display_name for c in list_classes(session=session)]
    make_user("ana")
    browser_login(client, "ana")
    page = client.get("/label").text
    table = re.search(r'<table id="per-class">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r'<tr><td>([^<]+)</td><td data-class="([^"]+)">(\d+)</td></tr>', table)

    assert [name for name, _, _ in rows] == [*shown, "unsure"]  # the retired basophil is not a counter
    counts = {key: int(count) for _, key, count in rows}
    assert (counts["neutrophil"], counts["monocyte"], counts["lymphocyte"], counts["unsure"]) == (3, 2, 0, 0)
