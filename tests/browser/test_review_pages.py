"""Grid review by keyboard, double reading by two users, and adjudication, in headless Chromium."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.consensus.rules import update_reading_settings
from app.db import session_scope
from app.labelling.service import add_label, current_labels
from app.models import Label, ReviewAction, User
from tests.browser.conftest import login
from tests.support.factories import PASSWORD, make_cells, make_model, make_user

pytestmark = pytest.mark.browser


def _status(page, text: str) -> None:
    page.wait_for_function(
        f"document.getElementById('review-status').textContent.includes({text!r})"
        " && document.getElementById('review-status').dataset.pending === '0'"
    )


def test_grid_review_by_keyboard(live_server: str, page) -> None:
    make_user("carla")
    ids = make_cells(6)
    make_model({cell_id: ("neutrophil", 0.4 + i / 20) for i, cell_id in enumerate(ids)})
    login(page, live_server, "carla", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.goto(f"{live_server}/review")
    page.wait_for_function("document.querySelectorAll('.review-cell').length === 6")
    order = [int(x) for x in page.locator(".review-cell").evaluate_all("els => els.map(e => e.dataset.cellId)")]
    assert order == ids  # least confident first
    assert page.locator(".review-cell img").first.bounding_box()["width"] >= 96

    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    page.wait_for_function("document.getElementById('review-grid').dataset.selected === '2'")
    page.keyboard.press("2")  # reclassify the selection as lymphocyte
    _status(page, "labelled 2 cells")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Space")  # select the first cell: Enter leaves it out, confirming the rest as predicted
    page.wait_for_function("document.getElementById('review-grid').dataset.selected === '1'")
    page.keyboard.press("Enter")
    _status(page, "labelled 3 cells")
    with session_scope() as session:
        assert current_labels(session=session) == {
            ids[1]: "lymphocyte",
            ids[2]: "lymphocyte",
            ids[3]: "neutrophil",
            ids[4]: "neutrophil",
            ids[5]: "neutrophil",
        }
        assert session.scalar(select(func.count(ReviewAction.id))) == 2

    page.keyboard.press("z")  # undoes the last bulk action as one
    _status(page, "undid action")
    with session_scope() as session:
        assert current_labels(session=session) == {ids[1]: "lymphocyte", ids[2]: "lymphocyte"}

    page.keyboard.press("ArrowRight")
    assert not page.locator("#enlarged").is_visible()  # shown only on demand
    page.keyboard.press("e")  # enlarge the cell under the cursor, with its history
    page.wait_for_function("document.querySelectorAll('#history-rows tr').length === 1")
    assert page.locator("#enlarged").is_visible()
    assert page.locator("#enlarged-image").bounding_box()["width"] > 200
    assert "bulk label" in page.locator("#history-rows").inner_text()
    page.keyboard.press("Escape")
    page.wait_for_function("document.getElementById('enlarged').offsetParent === null")


def test_before_any_model_the_grid_opens_on_the_expert_labels(live_server: str, page) -> None:
    make_user("carla")
    ids = make_cells(3)
    with session_scope() as session:
        carla = session.scalar(select(User).where(User.username == "carla"))
        for cell_id, value in zip(ids[:2], ("neutrophil", "lymphocyte"), strict=True):
            add_label(session=session, user=carla, cell_id=cell_id, value=value)
    login(page, live_server, "carla", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.goto(f"{live_server}/review")
    assert page.locator("#group").input_value() == "label"  # no model: nothing predicted to group by
    page.wait_for_function("document.querySelectorAll('.review-cell').length === 2")
    shown = {int(x) for x in page.locator(".review-cell").evaluate_all("els => els.map(e => e.dataset.cellId)")}
    assert shown == set(ids[:2])
    assert "no active model" not in page.locator("#review-status").inner_text()
    assert not page.locator("#enlarged").is_visible()

    page.select_option("#cls", "lymphocyte")
    page.click("#review-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('.review-cell').length === 1")
    page.reload()  # the filters are in the address, so a reload (or a shared link) keeps them
    assert page.locator("#cls").input_value() == "lymphocyte"
    page.wait_for_function("document.querySelectorAll('.review-cell').length === 1")


def test_double_reading_by_two_users_then_adjudication(live_server: str, browser) -> None:
    make_user("root", role="admin")
    make_user("ana")
    make_user("bob")
    [cell] = make_cells(1)
    make_model({cell: ("monocyte", 0.97)})
    with session_scope() as session:
        root = session.scalar(select(User).where(User.username == "root"))
        update_reading_settings(session=session, user=root, readers_per_cell=2, double_read_fraction=1.0)

    pages = {}
    for name in ("ana", "bob", "root"):
        context = browser.new_context(bypass_csp=True)
        pages[name] = context.new_page()
        login(pages[name], live_server, name, PASSWORD)
        pages[name].wait_for_url(f"{live_server}/label")

    ana, bob, root = pages["ana"], pages["bob"], pages["root"]
    ana.wait_for_function(f"document.getElementById('cell-image').dataset.cellId === '{cell}'")
    assert "monocyte" in ana.locator("#suggestion").inner_text()  # the first reader sees the model
    ana.keyboard.press("1")  # neutrophil
    ana.wait_for_function("document.getElementById('save-status').dataset.pending === '0'")
    with session_scope() as session:
        assert session.scalar(select(func.count(Label.id))) == 1
        assert current_labels(session=session) == {}

    bob.reload()
    bob.wait_for_function(f"document.getElementById('cell-image').dataset.cellId === '{cell}'")
    assert bob.locator("#suggestion").inner_text().strip() == ""  # blind: no suggestion, no first label
    assert bob.locator('button[title="the model\'s suggestion"]').count() == 0
    assert "ana" not in bob.locator("main").inner_text()  # nothing of the first read
    bob.keyboard.press("2")  # lymphocyte: the readers disagree
    bob.wait_for_function("document.getElementById('save-status').dataset.pending === '0'")
    with session_scope() as session:
        assert session.scalar(select(func.count(Label.id))) == 2
        assert current_labels(session=session) == {}

    root.goto(f"{live_server}/admin/adjudication")
    card = root.locator("#case")
    assert card.get_attribute("data-cell-id") == str(cell)
    reads = card.locator(".read").all_inner_texts()
    assert any("ana" in r and "neutrophil" in r for r in reads) and any("bob" in r and "lymphocyte" in r for r in reads)
    assert root.locator("#waiting").inner_text() == "1"
    root.keyboard.press("2")  # one key decides
    root.wait_for_selector("#no-case")
    assert root.locator("#adjudication-status").inner_text() == f"cell {cell} decided: lymphocyte"
    with session_scope() as session:
        assert current_labels(session=session) == {cell: "lymphocyte"}
        sources = session.scalars(select(Label.source).order_by(Label.id)).all()
        assert sources == ["manual", "manual", "adjudication"]
    for page in pages.values():
        page.context.close()
