"""Schemathesis fuzzes the JSON API on PostgreSQL as an admin: no 5xx, every status and body as documented.

A bounded run for the suite; ``scripts/fuzz`` runs the same gate with 20,000+ cases against a server.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import load_all_checks, not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.support.database import use_database
from tests.support.factories import make_cells, make_user
from tests.support.http import token_headers

# Enough to reach every operation's documented statuses, few enough to keep the suite fast.
EXAMPLES_PER_OPERATION = 10
# The gate: no 5xx, no undocumented status, no body or content type other than documented.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# These end every session of the caller: they are fuzzed last, as another user, so the admin's token keeps working.
ENDS_SESSIONS = {"/api/v1/auth/logout-everywhere", "/api/v1/auth/password"}


def _fuzz(
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    auth: dict[str, str],
    statuses: Counter[tuple[str, int]],
    failures: list[str],
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=auth)
        statuses[(operation.label, response.status_code)] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=auth)
        except (AssertionError, FailureGroup) as failure:
            failures.append(f"{operation.label} [{mode}] {str(failure)[:800]}")

    try:
        run()
    except Unsatisfiable:  # an operation without parameters has nothing to make invalid
        assert mode is schemathesis.GenerationMode.NEGATIVE


def test_api_conforms_to_its_schema(pg_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_database(pg_db_url, monkeypatch, broker_dir=str(tmp_path / "broker"), artefact_dir=str(tmp_path / "art"))
    load_all_checks()
    make_user("root", role="admin")
    make_user("cyto")
    make_cells(5)
    app = create_app()
    statuses: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    with TestClient(app) as client:
        auth = token_headers(client, "root")
        # /openapi.json needs a login like every page: loading it this way checks that too.
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
        operations = [result.ok() for result in schema.get_all_operations()]
        operations.sort(key=lambda operation: operation.path in ENDS_SESSIONS)
        cyto_auth = token_headers(client, "cyto")
        for operation in operations:
            headers = cyto_auth if operation.path in ENDS_SESSIONS else auth
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                _fuzz(operation, mode, headers, statuses, failures)

    assert not failures, "\n\n".join(failures[:10]) + f"\n\n{len(failures)} failures"
    assert len(operations) >= 19
    assert {label for label, _ in statuses} == {operation.label for operation in operations}  # each one was called
    assert sum(statuses.values()) >= len(operations) * EXAMPLES_PER_OPERATION
    # the run reached past authentication and validation: successes, refusals and missing rows
    reached = {status for _, status in statuses}
    assert {200, 201, 401, 404, 422} <= reached, sorted(reached)
