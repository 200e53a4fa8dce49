"""Pages: one URL answers a full page or, with the HX-Request header, the partial it includes; links name
their routes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.factories import make_user
from tests.support.http import browser_login

HTMX = {"HX-Request": "true"}
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.mark.parametrize(
    ("url", "partial_starts"),
    [
        ("/admin/training", '<section id="runs"'),
        ("/admin/models", '<div class="models"'),
        ("/admin/users", None),
    ],
)
def test_a_page_and_its_partial_share_one_url(client: TestClient, url: str, partial_starts: str | None) -> None:
    make_user("root", role="admin")
    browser_login(client, "root")

    page = client.get(url)
    partial = client.get(url, headers=HTMX)

    assert page.status_code == partial.status_code == 200
    assert "<html" in page.text and "<html" not in partial.text
    body = partial.text.strip()
    if partial_starts:
        assert body.startswith(partial_starts), body[:200]
    assert body in page.text  # the partial is the very markup the page shows


def test_a_poll_of_the_runs_leaves_the_message_and_an_action_replaces_it(client: TestClient) -> None:
    make_user("root", role="admin")
    csrf = browser_login(client, "root")

    poll = client.get("/admin/training", headers=HTMX)
    refused = client.post("/admin/training/runs/999/cancel", data={"csrf_token": csrf}, headers=HTMX)

    assert 'id="run-message"' not in poll.text
    assert 'id="run-message" hx-swap-oob="true"' in refused.text and "999" in refused.text


def test_no_template_spells_a_path_of_ours() -> None:
    """Links, forms and htmx requests name their routes (url_for), so a moved route cannot leave a dead link."""
    spelled = [
        f"{template.name}: {match.group(0)}"
        for template in sorted(TEMPLATES.rglob("*.html"))
        for match in re.finditer(r'(?:href|action|src|hx-get|hx-post)="/[^"]*"', template.read_text())
    ]
    assert spelled == []


def test_links_and_redirects_follow_the_root_path(any_db_url: str) -> None:
    """Behind a proxy that serves leukolab under /leukolab, the pages' links and redirects stay under it."""
    make_user("root", role="admin")
    with TestClient(create_app(), root_path="/leukolab") as client:
        login = client.get("/login")
        assert 'action="/leukolab/login"' in login.text
        assert 'href="/leukolab/static/' in login.text
        signed_out = client.get("/label", headers={"accept": "text/html"}, follow_redirects=False)
        assert signed_out.headers["location"].startswith("/leukolab/login?next=")
        browser_login(client, "root")
        page = client.get("/admin/training").text
        assert 'href="/leukolab/admin/models"' in page and 'hx-post="/leukolab/admin/training"' in page
        assert client.get("/", follow_redirects=False).headers["location"] == "/leukolab/label"
        assert 'data-root="/leukolab"' in page  # what the pages' scripts put before the API's paths


def test_urls_the_api_hands_out_follow_the_root_path(any_db_url: str, tmp_path: Path) -> None:
    from app.db import session_scope
    from app.samples.fields import import_field_folder
    from tests.support.fields import make_field, save

    make_user("root", role="admin")
    save(tmp_path / "fields" / "S" / "f.png", make_field([(200, 150, 45)])[0])
    with session_scope() as session:
        import_field_folder(session=session, path=tmp_path / "fields", sample=None, user_id=None)
    with TestClient(create_app(), root_path="/leukolab") as client:
        browser_login(client, "root")
        headers = {"X-CSRF-Token": re.search(r'"X-CSRF-Token": "([^"]+)"', client.get("/label").text).group(1)}
        cell = client.get("/api/v1/queue/next", headers=headers).json()
        assert cell["image_url"].startswith(f"/leukolab/api/v1/cells/{cell['cell_id']}/image?v=")
        field = client.get(f"/api/v1/cells/{cell['cell_id']}/field", headers=headers).json()
        assert field["image_url"] == f"/leukolab/api/v1/fields/{field['field_id']}/image"
        sample = client.get(f"/samples/{field['sample_id']}").text
        assert f'href="/leukolab/api/v1/fields/{field["field_id"]}/image"' in sample
        client.post("/api/v1/cells/{}/labels".format(cell["cell_id"]), json={"label": "neutrophil"}, headers=headers)
        undone = client.post("/api/v1/labels/undo", headers=headers).json()
        assert undone["image_url"].startswith(f"/leukolab/api/v1/cells/{cell['cell_id']}/image")


def test_the_pages_scripts_call_the_api_under_the_root_path() -> None:
    for script in ("label.js", "review.js", "adjudication.js"):
        text = (TEMPLATES.parent / "static" / script).read_text()
        assert 'const root = document.body.dataset.root || "";' in text, script
        bare = re.findall(r'[`"\'](/(?:api|login|admin|samples|cells)\b[^`"\']*)', text)
        assert bare == [], f"{script} spells paths without the root path: {bare}"


def test_the_menu_offers_each_role_its_pages_and_marks_the_one_shown(client: TestClient) -> None:
    make_user("root", role="admin")
    make_user("cy")
    browser_login(client, "root")
    menu = {}
    for url in ("/admin/export", "/samples", "/admin/models"):
        nav = re.search(r"<nav>(.*?)</nav>", client.get(url).text, re.S).group(1)
        menu[url] = re.findall(r'<a href="([^"]+)"( aria-current="page")?>([^<]+)</a>', nav)
    links = [(href, text) for href, _, text in menu["/admin/export"]]
    assert ("/admin/export", "Export") in links and ("/admin/activity", "Activity") in links and len(links) == 13
    for url, entries in menu.items():
        assert [href for href, current, _ in entries if current] == [url]  # one page marked: the one shown
        assert [(href, text) for href, _, text in entries] == links  # the same menu on every page

    client.cookies.clear()
    browser_login(client, "cy")
    nav = re.search(r"<nav>(.*?)</nav>", client.get("/samples").text, re.S).group(1)
    assert re.findall(r'<a href="([^"]+)"', nav) == ["/label", "/samples", "/review"]
