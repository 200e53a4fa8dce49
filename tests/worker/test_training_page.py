"""An admin starts a retrain on /admin/training and watches its progress change live."""

from __future__ import annotations

import pytest

from tests.browser.conftest import login, start_server
from tests.support.factories import PASSWORD
from tests.worker.conftest import CLASSES, insert_cells

pytestmark = [pytest.mark.browser, pytest.mark.worker]


@pytest.fixture
def server(loop_env: dict[str, str], pg_db_url: str):
    keys = ("LEUKOLAB_REDIS_URL", "LEUKOLAB_ARTEFACT_DIR", "LEUKOLAB_BROKER_DIR")
    process, base = start_server(pg_db_url, **{k.removeprefix("LEUKOLAB_").lower(): loop_env[k] for k in keys})
    yield base
    process.terminate()
    process.wait(timeout=10)


def test_admin_watches_a_retrain_live(server: str, start_worker, page) -> None:
    insert_cells({name: 5 for name in CLASSES}, unlabelled=15)
    start_worker()
    login(page, server, "expert", PASSWORD)
    page.wait_for_url(f"{server}/label")
    page.goto(f"{server}/admin/training")
    assert page.locator("#runs").get_attribute("data-polling") == "no"
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    page.select_option("select[name=method]", "mean-teacher")
    page.select_option("select[name=profile]", "tiny")
    page.fill("input[name=epochs]", "60")
    page.click("#start-run button[type=submit]")

    run = page.locator("#runs article.run").first
    page.wait_for_selector("#runs article.run[data-status=running] .run-epoch", timeout=60_000)
    first_epoch = int(run.locator(".run-epoch").inner_text())
    page.wait_for_function(
        f"Number(document.querySelector('#runs article.run .run-epoch')?.textContent) > {first_epoch}",
        timeout=60_000,
    )
    page.wait_for_function("document.querySelector('#runs svg.chart[data-key=loss]').dataset.points > 0")
    assert page.evaluate("window.__sameDocument") is True

    page.once("dialog", lambda dialog: dialog.accept())  # "Cancel run #n?"
    page.click("#runs article.run button.cancel")
    page.wait_for_selector("#runs article.run[data-status=cancelled]", timeout=30_000)
    page.wait_for_selector("#runs[data-polling=no]", timeout=10_000)  # it stops polling when done
    assert page.evaluate("window.__sameDocument") is True
