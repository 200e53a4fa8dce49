"""Smear fields in the browser: an admin imports a zip of fields on the Samples page, a cytologist presses
``f`` on the labelling page to see the cell boxed in its field, and reads the sample's differential count."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Cell, Sample
from tests.browser.conftest import login
from tests.support.factories import PASSWORD, make_model, make_user
from tests.support.fields import make_field, png_bytes
from tests.support.images import make_zip

pytestmark = pytest.mark.browser
SHOWN = "document.getElementById('cell-image').dataset.cellId !== undefined"


def test_field_view_and_differential_page(live_server: str, page, tmp_path) -> None:
    make_user("root", role="admin")
    make_user("carla")
    field, _ = make_field([(150, 140, 40), (420, 200, 50)])
    archive = tmp_path / "fields.zip"
    archive.write_bytes(
        make_zip({"slide-9/a.png": png_bytes(field), "slide-9/empty.png": png_bytes(make_field([])[0])})
    )

    login(page, live_server, "root", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.goto(f"{live_server}/samples")
    page.set_input_files("#import-fields input[name=file]", str(archive))
    page.click("#import-fields button[type=submit]")
    page.locator("#fields-imported").wait_for(timeout=20_000)
    summary = page.locator("#fields-imported").inner_text()
    assert "2 fields, 2 white cells" in summary and "empty.png" in summary

    with session_scope() as session:
        sample_id = session.scalar(select(Sample.id).where(Sample.identifier == "slide-9"))
        boxes = {c.id: (c.box_x0, c.box_y0, c.box_x1, c.box_y1) for c in session.scalars(select(Cell))}
    page.goto(f"{live_server}/samples/{sample_id}")
    assert page.locator("svg.field-view rect.box").count() == 2
    page.click("form.logout button[type=submit]")

    login(page, live_server, "carla", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.wait_for_function(SHOWN)
    cell_id = int(page.locator("#cell-image").get_attribute("data-cell-id"))
    page.keyboard.press("f")
    dialog = page.locator("#field-view")
    dialog.wait_for(state="visible", timeout=10_000)
    rect = page.locator("#field-svg rect")
    x0, y0, x1, y1 = boxes[cell_id]
    assert [rect.get_attribute(name) for name in ("x", "y", "width", "height")] == [
        str(x0),
        str(y0),
        str(x1 - x0),
        str(y1 - y0),
    ]
    assert "sample slide-9" in page.locator("#field-caption").inner_text()
    assert page.evaluate("document.querySelector('#field-svg image').getAttribute('href')").endswith("/image")
    page.keyboard.press("f")
    dialog.wait_for(state="hidden", timeout=5_000)

    page.keyboard.press("1")  # neutrophil
    page.wait_for_function("document.getElementById('save-status').dataset.pending === '0'")
    page.goto(f"{live_server}/samples/{sample_id}/differential")
    assert page.locator("#expert tr[data-class=neutrophil] td.num").first.inner_text() == "1"
    assert page.locator("#expert [data-total]").inner_text() == "1"
    assert "1 cells still to review" in page.locator("#to-review").inner_text()
    page.emulate_media(media="print")
    assert page.locator("header.topbar").is_hidden()  # the print stylesheet drops the navigation
    assert page.locator("#expert").is_visible()
    assert page.locator("#review-link").count() == 0  # no model: nothing predicted to verify

    make_model({cell: ("monocyte", 0.9) for cell in boxes})
    page.emulate_media(media="screen")
    page.reload()
    page.click("#review-link")  # the sample's cells, grouped by the model's call
    page.wait_for_function("document.querySelectorAll('.review-cell').length === 2")
    assert page.locator("#sample").input_value() == "slide-9"
    assert page.locator("#group").input_value() == "predicted"
    shown = {int(x) for x in page.locator(".review-cell").evaluate_all("els => els.map(e => e.dataset.cellId)")}
    assert shown == set(boxes)
