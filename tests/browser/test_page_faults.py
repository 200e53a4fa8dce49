"""The faults a new user hit in the browser (issue 13: 20-23) and the labelling page's feedback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Cell, Label, ModelVersion, Prediction, QueueEntry, TrainingRun, utcnow
from tests.browser.conftest import login, serving
from tests.support.factories import PASSWORD, get_user, make_cells, make_user
from tests.support.images import image_bytes, make_cell_image, make_zip

pytestmark = pytest.mark.browser
SHOWN = "document.getElementById('cell-image').dataset.cellId !== undefined"


@pytest.fixture
def fast_poll_server(pg_db_url: str) -> Iterator[str]:
    """The app with an empty queue polled every second (10 s in production)."""
    with serving(pg_db_url, empty_queue_poll_s="1") as base:
        yield base


def _live_leases(user_id: int) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count(QueueEntry.id)).where(QueueEntry.leased_to == user_id, QueueEntry.lease_until > utcnow())
        )


def open_import_page(page, live_server: str) -> None:
    """An admin logged in on the Import page."""
    make_user("root", role="admin")
    login(page, live_server, "root", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.goto(f"{live_server}/admin/import")


def test_import_errors_are_shown(live_server: str, page, tmp_path) -> None:
    open_import_page(page, live_server)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(make_zip({"good.png": image_bytes(make_cell_image(1)), "notes/readme.png": b"not an image"}))
    page.set_input_files("input[name=file]", str(bad))
    page.click("main form button[type=submit]")
    result = page.locator("#import-result .card.error")
    result.wait_for(timeout=10_000)
    assert "Nothing was imported" in result.inner_text()
    assert "readme.png" in page.locator("#import-result table").inner_text()


def test_an_upload_shows_how_much_is_sent_then_that_the_server_is_importing(live_server: str, page, tmp_path) -> None:
    open_import_page(page, live_server)
    upload = tmp_path / "cells.zip"
    upload.write_bytes(make_zip({f"c{i}.png": image_bytes(make_cell_image(i, 96)) for i in range(60)}))
    page.evaluate(
        """() => {
          window.seen = [];
          document.addEventListener("htmx:xhr:progress", () => {  // after the page's own listener
            const bar = document.getElementById("import-progress");
            window.seen.push({ max: bar.max, hasValue: bar.hasAttribute("value"),
                               status: document.querySelector("[data-upload-status]").textContent,
                               shown: getComputedStyle(document.querySelector("[data-upload-status]")).display });
          });
        }"""
    )
    page.set_input_files("input[name=file]", str(upload))
    page.click("main form button[type=submit]")
    page.locator("#import-result .card").wait_for(timeout=20_000)

    seen = page.evaluate("window.seen")
    assert seen, "no upload progress reported"
    (sent,) = {entry["max"] for entry in seen}  # the bar counts the form's bytes: the zip and a few fields
    assert upload.stat().st_size < sent < upload.stat().st_size + 2_000
    last = seen[-1]
    assert last["status"] == "uploaded; checking and importing every image…" and last["shown"] == "inline"
    assert not last["hasValue"]  # all sent: the bar runs on while the server imports
    assert "60" in page.locator("#import-result").inner_text()
    assert not page.locator("[data-upload-status]").is_visible()  # the answer came: the status line is gone


def test_labelling_resumes_after_a_network_drop(live_server: str, page) -> None:
    make_user("carla")
    make_cells(8)
    login(page, live_server, "carla", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.wait_for_function(SHOWN)
    carla = get_user("carla").id
    for _ in range(50):  # the next cell is prefetched
        if _live_leases(carla) == 2:
            break
        page.wait_for_timeout(100)
    page.context.set_offline(True)
    first = page.locator("#cell-image").get_attribute("data-cell-id")
    page.keyboard.press("1")
    page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId !== '{first}'")
    page.keyboard.press("2")  # nothing prefetched any more: "loading the next cell…"
    page.wait_for_function("document.getElementById('save-status').dataset.pending === '2'")
    stored = page.evaluate("JSON.parse(localStorage.getItem('leukolab.outbox.carla')).map((i) => i.key)")
    assert len(set(stored)) == 2 and all(len(key) == 36 for key in stored)  # one key per label, kept
    posted = []
    page.on(
        "request",
        lambda request: (
            posted.append(request.post_data_json["idempotency_key"])
            if request.method == "POST" and request.url.endswith("/labels")
            else None
        ),
    )
    page.context.set_offline(False)
    page.wait_for_function("document.getElementById('save-status').dataset.pending === '0'", timeout=15_000)
    page.wait_for_function(SHOWN, timeout=15_000)  # the next cell comes without a reload
    third = page.locator("#cell-image").get_attribute("data-cell-id")
    page.keyboard.press("3")  # and keys work again
    page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId !== '{third}'")
    page.wait_for_function("document.getElementById('save-status').dataset.pending === '0'", timeout=15_000)
    with session_scope() as session:
        values = session.scalars(select(Label.value).where(Label.user_id == carla)).all()
    assert sorted(values) == ["lymphocyte", "monocyte", "neutrophil"]
    assert posted[:2] == stored  # the retries after the drop resend the keys made when labelling


def test_retrain_refusal_stays_after_the_runs_list_refreshes(live_server: str, page) -> None:
    admin_id = make_user("root", role="admin")
    with session_scope() as session:  # a queued run: the list polls itself and a new run is refused
        session.add(TrainingRun(status="queued", method="supervised", profile="tiny", params={}, created_by=admin_id))
    login(page, live_server, "root", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.goto(f"{live_server}/admin/training")
    page.click("#start-run button[type=submit]")
    message = page.locator("#run-message [role=alert]")
    message.wait_for(timeout=10_000)
    assert "already queued" in message.inner_text()
    page.evaluate("document.getElementById('runs').dataset.marker = 'before'")
    page.wait_for_function("document.getElementById('runs').dataset.marker === undefined", timeout=10_000)
    page.wait_for_timeout(1500)  # one more refresh
    assert message.is_visible() and "already queued" in message.inner_text()
    page.click("#run-message button.dismiss")
    assert page.locator("#run-message [role=alert]").count() == 0

    # Cancel asks first: declining leaves the run queued, accepting cancels it.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#runs article.run button.cancel")
    page.wait_for_timeout(1500)
    assert page.locator("#runs article.run").first.get_attribute("data-status") == "queued"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#runs article.run button.cancel")
    page.wait_for_selector("#runs article.run[data-status=cancelled]", timeout=10_000)


def test_an_open_label_page_holds_only_the_leases_it_needs(live_server: str, page) -> None:
    make_user("ann", role="admin")
    make_cells(10)
    ann = get_user("ann").id
    login(page, live_server, "ann", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    for _ in range(3):
        page.wait_for_function(SHOWN)
        page.wait_for_timeout(700)
        assert _live_leases(ann) <= 2  # the cell on screen and one prefetched
        page.reload()
    page.wait_for_function(SHOWN)
    for _ in range(50):  # the prefetch has landed (one still in flight on leaving is held until it expires)
        if _live_leases(ann) == 2:
            break
        page.wait_for_timeout(100)
    page.goto(f"{live_server}/admin/import")  # leaving the page gives the leases back
    for _ in range(50):
        if _live_leases(ann) == 0:
            break
        page.wait_for_timeout(100)
    assert _live_leases(ann) == 0


def test_empty_queue_page_picks_up_a_new_cell_and_counts_only_free_entries(fast_poll_server: str, page) -> None:
    make_user("bob")
    make_user("carla")
    bob = get_user("bob").id
    held = make_cells(4, seed=1)
    with session_scope() as session:  # bob's screen holds every queued cell
        for cell_id in held:
            session.add(
                QueueEntry(
                    cell_id=cell_id,
                    priority=1.0,
                    reason="low margin",
                    leased_to=bob,
                    lease_until=utcnow() + timedelta(minutes=5),
                )
            )
    login(page, fast_poll_server, "carla", PASSWORD)
    page.wait_for_url(f"{fast_poll_server}/label")
    page.locator("#empty").wait_for(state="visible", timeout=10_000)
    assert page.locator("#queue-size").inner_text() == "0"
    assert page.locator("#queue-held").inner_text() == "4" and page.locator("#queue-held-note").is_visible()
    (new,) = make_cells(1, seed=2)
    page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId === '{new}'", timeout=15_000)
    assert page.locator("#empty").is_hidden()


def test_reasons_in_plain_words_suggestion_threshold_and_confirmation(live_server: str, page) -> None:
    make_user("carla")
    unsure_cell, sure_cell = make_cells(2, seed=3)
    names = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "artefact"]
    with session_scope() as session:
        model = ModelVersion(artefact_path="unused", class_names=names, is_active=True)
        session.add(model)
        session.flush()
        for cell_id, probs, reason, priority in (
            (unsure_cell, [0.2, 0.21, 0.22, 0.17, 0.1, 0.1], "low margin", 2.0),
            (sure_cell, [0.02, 0.9, 0.02, 0.02, 0.02, 0.02], "rejected by filters", 1.0),
        ):
            best = max(range(6), key=lambda i: probs[i])
            session.add(
                Prediction(
                    model_version_id=model.id,
                    cell_id=cell_id,
                    probs=probs,
                    predicted=names[best],
                    confidence=probs[best],
                    entropy=1.0,
                    margin=0.01,
                    filter_outcome="rejected",
                )
            )
            session.add(QueueEntry(cell_id=cell_id, priority=priority, reason=reason))
    login(page, live_server, "carla", PASSWORD)
    page.wait_for_url(f"{live_server}/label")
    page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId === '{unsure_cell}'")
    reason = page.locator("#cell-reason").inner_text()
    assert "unsure between monocyte and lymphocyte" in reason and "margin" not in reason
    assert page.locator("#suggestion").inner_text() == ""  # 22 %: near chance, not shown
    assert page.locator("#buttons button.suggested").count() == 0

    page.keyboard.press("3")
    toast = page.locator("#toast")
    assert toast.get_attribute("aria-live") == "polite"
    page.wait_for_function("document.getElementById('toast').textContent.includes('labelled as monocyte')")
    page.wait_for_function(f"document.getElementById('cell-image').dataset.cellId === '{sure_cell}'")
    assert "lymphocyte (90 %)" in page.locator("#suggestion").inner_text()
    assert page.locator("#buttons button.suggested").get_attribute("data-label") == "lymphocyte"
    assert "filters" not in page.locator("#cell-reason").inner_text()
    page.wait_for_function("document.getElementById('save-status').dataset.pending === '0'")
    with session_scope() as session:
        assert session.scalar(select(Label.value).where(Label.cell_id == unsure_cell)) == "monocyte"
        assert session.get(Cell, unsure_cell).current_label_id is not None
