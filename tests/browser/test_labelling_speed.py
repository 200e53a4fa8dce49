"""The labelling page measures key press to next cell painted (read by `leukolab bench labelling --browser-labels`),
and never fetches a cell image twice: its URL carries the content hash and is cached for good."""

from __future__ import annotations

import pytest

from tests.browser.conftest import login
from tests.support.factories import PASSWORD, make_cells, make_user

pytestmark = pytest.mark.browser


def test_each_label_key_gives_a_key_to_paint_measure(live_server: str, page) -> None:
    make_user("dora")
    make_cells(8)
    image_requests: list[str] = []
    page.on("request", lambda request: image_requests.append(request.url) if "/image" in request.url else None)
    login(page, live_server, "dora", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.wait_for_selector("#cell-image[data-cell-id]")
    shown = []
    for key in ["1", "2", "3"]:
        cell_id = page.locator("#cell-image").get_attribute("data-cell-id")
        shown.append(cell_id)
        page.keyboard.press(key)
        # the next cell on screen, not the "loading" state between two cells (a key there does nothing)
        page.wait_for_function(
            f"(id => id !== undefined && id !== '{cell_id}')(document.getElementById('cell-image').dataset.cellId)"
        )
    page.wait_for_function("performance.getEntriesByName('leukolab:key-to-paint').length === 3")
    durations = page.evaluate("performance.getEntriesByName('leukolab:key-to-paint').map((e) => e.duration)")
    assert all(duration >= 0 for duration in durations)
    page.wait_for_function("document.getElementById('save-status').dataset.pending === '0'")
    page.wait_for_load_state("networkidle")  # the prefetch and the stats refresh have settled
    page.keyboard.press("z")  # undo: the last labelled cell comes back, from the browser's cache
    page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId === '{shown[-1]}'")
    page.wait_for_timeout(300)
    assert all("?v=" in url for url in image_requests), image_requests
    assert len(image_requests) == len(set(image_requests)), "an image was fetched twice"
