"""A class added by an admin, with a letter hotkey, is on the labelling page and its key labels."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.classes import service
from app.db import session_scope
from app.labelling.service import add_label, current_labels
from app.models import Cell, Label, User
from tests.browser.conftest import login
from tests.support.factories import PASSWORD, get_user, make_cells, make_user

pytestmark = pytest.mark.browser


def test_label_with_a_letter_hotkey(live_server: str, page) -> None:
    make_user("ada", role="admin")
    make_user("carla")
    make_cells(3)
    with session_scope() as session:
        service.add_class(session=session, user=get_user("ada"), name="Erythroblast", hotkey="k", is_wbc=False)
        service.retire_class(session=session, user=get_user("ada"), ref="basophil")
    login(page, live_server, "carla", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    buttons = page.locator("#buttons").inner_text()
    assert "Erythroblast" in buttons and "basophil" not in buttons  # the page follows the current set
    page.keyboard.press("?")
    assert "label as Erythroblast" in page.locator("#keymap").inner_text()
    page.keyboard.press("Escape")

    page.wait_for_function("document.getElementById('cell-image').dataset.cellId !== undefined")
    cell_id = page.locator("#cell-image").get_attribute("data-cell-id")
    page.keyboard.press("k")
    page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId !== '{cell_id}'")
    page.wait_for_function("document.getElementById('save-status').dataset.pending === '0'")
    with session_scope() as session:
        value = session.scalar(
            select(Label.value).join(Cell, Cell.current_label_id == Label.id).where(Cell.id == int(cell_id))
        )
    assert value == "erythroblast"


def test_a_merge_asks_first_and_the_history_says_who(live_server: str, page) -> None:
    make_user("ada", role="admin")
    [cell] = make_cells(1)
    with session_scope() as session:
        add_label(session=session, user=session.get(User, get_user("ada").id), cell_id=cell, value="basophil")
    login(page, live_server, "ada", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.goto(f"{live_server}/admin/classes")
    assert page.locator("#no-class-events").is_visible() and not page.locator("#class-events").is_visible()
    row = page.locator("tr", has=page.locator("code", has_text="basophil"))
    row.locator("select[name=into]").select_option(label="neutrophil")
    questions: list[str] = []

    def answer(dialog, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    row.locator("form.merge button").click()
    assert "1 labelled cells are relabelled" in questions[0]
    with session_scope() as session:  # declined: nothing sent
        assert current_labels(session=session) == {cell: "basophil"}

    page.once("dialog", lambda dialog: answer(dialog, accept=True))
    row.locator("form.merge button").click()
    page.wait_for_selector("#class-events tr")
    with session_scope() as session:
        assert current_labels(session=session) == {cell: "neutrophil"}
    history = page.locator("#class-events").inner_text()
    assert "ada" in history and "merge" in history
