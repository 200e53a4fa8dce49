"""A cytologist labels ten cells with the keyboard and undoes one, in headless Chromium."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Cell, Label
from tests.browser.conftest import login
from tests.support.factories import PASSWORD, get_user, make_cells, make_user

pytestmark = pytest.mark.browser


def test_label_ten_with_keyboard_and_undo_one(live_server: str, page) -> None:
    make_user("carla")
    make_cells(15)
    login(page, live_server, "carla", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    image = page.locator("#cell-image")

    keys = ["1", "2", "3", "4", "5", "0", "x", "1", "2", "3"]
    shown = []
    for key in keys:
        page.wait_for_function("document.getElementById('cell-image').dataset.cellId !== undefined")
        cell_id = image.get_attribute("data-cell-id")
        assert cell_id not in shown  # every key moves to a new cell
        shown.append(cell_id)
        page.keyboard.press(key)
        page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId !== '{cell_id}'")

    page.keyboard.press("z")
    # the undone cell is shown again
    page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId === '{shown[-1]}'")
    page.wait_for_function("document.getElementById('save-status').dataset.pending === '0'")
    page.wait_for_function("document.getElementById('my-today').textContent.trim() === '9'")

    page.keyboard.press("?")
    assert page.locator("#keymap").is_visible()
    assert "undo my last label" in page.locator("#keymap").inner_text()
    page.keyboard.press("Escape")

    user = get_user("carla")
    with session_scope() as session:
        current = (
            session.execute(
                select(Label.value).join(Cell, Cell.current_label_id == Label.id).where(Label.user_id == user.id)
            )
            .scalars()
            .all()
        )
        assert len(current) == 9
        assert sorted(current) == sorted(
            [
                "neutrophil",
                "lymphocyte",
                "monocyte",
                "eosinophil",
                "basophil",
                "artefact",
                "artefact",
                "neutrophil",
                "lymphocyte",
            ]
        )
        assert session.scalar(select(func.count(Label.id)).where(Label.kind == "undo")) == 1
