"""The Models page's pseudo-label funnel, with the pool's class mix the filter judged on."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.db import session_scope
from app.main import create_app
from app.models import ModelVersion
from tests.support.factories import make_user
from tests.support.http import token_headers

CLASSES = ["neutrophil", "lymphocyte", "ig"]


def _version(funnel: dict) -> None:
    with session_scope() as session:
        session.add(
            ModelVersion(
                artefact_path="/nonexistent.pt", class_names=CLASSES, metrics={"funnel": funnel}, is_active=False
            )
        )


def test_the_funnel_names_the_pools_estimated_class_mix(pg_db_url: str) -> None:
    _version({"unlabelled": 90, "set1": 60, "set2": 50, "pool_prior": [0.7, 0.28, 0.02]})
    _version({"unlabelled": 90, "set1": 61, "set2": 51})  # a model trained without the prior shift
    make_user("ada", role="admin")
    with TestClient(create_app()) as client:
        page = client.get("/admin/models", headers=token_headers(client, "ada"))
    assert page.status_code == 200
    assert "90 unlabelled cells → 60 passed the entropy filter" in page.text
    assert "estimated as\n    neutrophil 70.0 %, lymphocyte 28.0 %, ig 2.0 %." in page.text
    assert page.text.count('class="small pool-prior"') == 1
