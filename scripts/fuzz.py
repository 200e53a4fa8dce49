"""Fuzz the API with schemathesis against a live server on PostgreSQL; write a summary JSON.

Run through ``scripts/fuzz`` (see there). The gate is the suite's (tests/app/test_fuzz.py): no 5xx,
no undocumented status, no response body or content type other than documented. Other checks'
findings are recorded too, but do not fail the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG_SERVER = os.environ.get("LEUKOLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
]
# What the first four checks report; any of these fails the run.
GATE_FAILURES = {
    "ServerError",
    "ContentTypeServerError",
    "UndefinedStatusCode",
    "MissingContentType",
    "UndefinedContentType",
    "MalformedMediaType",
    "JsonSchemaError",
    "MalformedJson",
    "ContentDeserializationError",
    "DiscriminatorMismatch",
}


# Routes that end every session and token of their caller (see app/users/routes.py).
ENDS_SESSIONS = "/auth/(logout-everywhere|password)$"


def _merge(reports: list[dict]) -> dict:
    """One report out of the passes' reports: failures, cases and operations added up."""
    return {
        "failures": [failure for report in reports for failure in report.get("failures", [])],
        "test_cases": {"generated": sum(report.get("test_cases", {}).get("generated", 0) for report in reports)},
        "operations": {"tested": sum(report.get("operations", {}).get("tested", 0) for report in reports)},
        "errors": [error for report in reports for error in report.get("errors", [])],
        "complete": bool(reports) and all(report.get("complete", False) for report in reports),
    }


def _prepare_database(name: str) -> str:
    """A fresh migrated database with an admin, a cytologist and some cells; its URL."""
    from tests.support.database import create_pg_database

    url = create_pg_database(name)
    os.environ["LEUKOLAB_DATABASE_URL"] = url
    from app import db
    from tests.support.factories import make_cells, make_user

    db.upgrade(url)
    make_user("root", role="admin")
    make_user("cyto")
    make_cells(20)
    db.get_engine().dispose()
    return url


def _summarise(report: dict, *, wanted_examples: int, seconds: float, returncode: int) -> dict:
    """The headline numbers of a schemathesis JSON run report, split into the gate and the rest."""
    gate: dict[str, int] = {}
    other: dict[str, int] = {}
    operations: dict[str, list[str]] = {}
    for failure in report.get("failures", []):
        kind = failure.get("type", "?")
        counts = gate if kind in GATE_FAILURES else other
        counts[kind] = counts.get(kind, 0) + failure.get("count", 1)
        operations.setdefault(kind, []).extend(failure.get("operations", []))
    cases = report.get("test_cases", {}).get("generated", 0)
    return {
        "cases": cases,
        "examples_per_operation": wanted_examples,
        "operations_tested": report.get("operations", {}).get("tested", 0),
        "gate_failures": gate,  # server errors, undocumented statuses, schema or content-type mismatches
        "other_failures": other,  # e.g. RejectedPositiveData: a schema-valid request refused
        "failing_operations": operations,
        "errors": len(report.get("errors", [])),
        "complete": report.get("complete", False),
        "passed": bool(cases) and not gate and not report.get("errors") and report.get("complete", False),
        "schemathesis_exit_code": returncode,
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1100, help="max examples per operation and phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", default="1")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "fuzz.json")
    parser.add_argument(
        "--operation",
        action="append",
        default=[],
        metavar="'METHOD PATH'",
        help="fuzz only this operation (repeatable), e.g. --operation 'PUT /api/v1/settings'",
    )
    args = parser.parse_args()

    import schemathesis

    from cli.server import start_server

    name = f"leukolab_fuzz_{os.getpid()}"
    url = _prepare_database(name)
    work = Path(tempfile.mkdtemp(prefix="leukolab-fuzz-"))
    os.environ.pop("LEUKOLAB_REDIS_URL", None)  # the filesystem broker: training runs queue without Redis
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LEUKOLAB_DATABASE_URL": url,
        "LEUKOLAB_BROKER_DIR": str(work / "broker"),
        "LEUKOLAB_ARTEFACT_DIR": str(work / "artefacts"),
    }
    server, base = start_server(url, env=env)
    started = time.monotonic()
    try:
        common = [
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(args.examples),
            "--seed",
            str(args.seed),
            "--workers",
            args.workers,
            "--no-shrink",
            "--continue-on-failure",
            "--suppress-health-check",
            "all",
        ]
        # The routes that end every session of their caller run apart, as the cytologist, so that
        # the admin's token stays valid for the rest of the run.
        passes = [
            ("root", "correct-horse-battery", ["--exclude-path-regex", ENDS_SESSIONS]),
            ("fuzz-reader", "correct-horse-battery", ["--include-path-regex", ENDS_SESSIONS]),
        ]
        if args.operation:  # a quick check of some operations, each in the pass it belongs to
            ending = [name for name in args.operation if re.search(ENDS_SESSIONS, name.split()[-1])]
            (admin_user, admin_password, admin_selection), (reader, reader_password, _) = passes
            passes = []
            if len(ending) < len(args.operation):
                names = [f"--include-name={name}" for name in args.operation]
                passes.append((admin_user, admin_password, [*admin_selection, *names]))
            if ending:
                passes.append((reader, reader_password, [f"--include-name={name}" for name in ending]))
        reports = []
        returncode = 0
        for number, (user, password, selection) in enumerate(passes):
            report_path = work / f"report-{number}.json"
            if user != "root":  # a fresh reader: the first pass may have deactivated the others
                admin = httpx.post(f"{base}/api/v1/auth/token", data={"username": "root", "password": password})
                admin.raise_for_status()
                httpx.post(
                    f"{base}/api/v1/users",
                    json={"username": user, "password": password, "role": "cytologist"},
                    headers={"Authorization": f"Bearer {admin.json()['access_token']}"},
                ).raise_for_status()
            token = httpx.post(f"{base}/api/v1/auth/token", data={"username": user, "password": password})
            token.raise_for_status()
            auth = f"Authorization: Bearer {token.json()['access_token']}"
            command = [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{base}/openapi.json",
                "--header",
                auth,
                *common,
                *selection,
                "--report",
                "json",
                "--report-json-path",
                str(report_path),
            ]
            print(
                "$", " ".join(c if not c.startswith("Authorization") else "Authorization: Bearer ..." for c in command)
            )
            run = subprocess.run(command, cwd=work, env=env)
            returncode = returncode or run.returncode
            reports.append(json.loads(report_path.read_text()) if report_path.exists() else {})
        summary = _summarise(
            _merge(reports), wanted_examples=args.examples, seconds=time.monotonic() - started, returncode=returncode
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        from tests.support.database import drop_pg_database

        drop_pg_database(name)
    summary = {
        **summary,
        "schemathesis": schemathesis.__version__,
        "seed": args.seed,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"raw report: {report_path}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
