"""The training page's progress line: what a running retrain is doing, in the unit it counts."""

from __future__ import annotations

from tests.support.factories import make_running_run


def test_the_training_page_counts_the_fit_to_the_lab_in_cells(pg_db_url: str) -> None:
    """A retrain from the reference first fits it to the lab (a pass over every cell); the page says so."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from ml.retrain import FIT_PHASE
    from ml.train import Progress
    from tests.support.http import browser_login
    from worker.training import RunReporter

    run_id = make_running_run(silent_s=1)
    reporter = RunReporter(run_id)  # not entered: no heartbeat thread, only the progress it writes
    reporter.progress(
        Progress(epoch=0, epochs=1, step=128, steps=312, loss=float("nan"), phase=FIT_PHASE, unit="cells")
    )
    with TestClient(create_app()) as client:
        browser_login(client, "root")
        page = client.get("/admin/training")
    assert page.status_code == 200
    detail = " ".join(page.text.split())
    assert f'{FIT_PHASE} · cells <span class="run-step">128</span>/312' in detail
    reporter.progress(Progress(epoch=1, epochs=3, step=5, steps=20, loss=0.5))
    with TestClient(create_app()) as client:
        browser_login(client, "root")
        detail = " ".join(client.get("/admin/training").text.split())
    assert 'epoch <span class="run-epoch">1</span>/3 · step <span class="run-step">5</span>/20' in detail
