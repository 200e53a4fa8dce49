"""``leukolab bench races``: the interleavings of issue 13 (undo against label, undo against undo, label against
label, repeated POSTs), over HTTP on PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time
from pathlib import Path
from typing import Annotated

import typer

from bench.labelling import BENCH_DB, PASSWORD
from cli.server import start_server

RACE_KINDS = ("undo_vs_label", "double_undo", "label_vs_label", "repeated_post")
RACE_USERS = ("racer_a", "racer_b", "racer_c", "racer_d", "racer_e", "racer_f")
CONCURRENT_UNDOS = 3  # undos one user sends at once in a double-undo round
REPEATED_POSTS = 3  # copies of one label (one idempotency key) sent at once


def race_setup(engine, rounds: int) -> list[int]:
    """Insert the racing users and one fresh cell per round and kind; return the cell ids."""
    from PIL import Image
    from sqlalchemy import insert, select

    from app.models import Cell, User
    from app.security import hash_password

    tile = io.BytesIO()
    Image.new("RGB", (16, 16), (180, 120, 200)).save(tile, format="PNG")
    password_hash = hash_password(PASSWORD)
    tag = os.urandom(4).hex()
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            [{"username": name, "role": "cytologist", "password_hash": password_hash} for name in RACE_USERS],
        )
        rows = [
            {
                "sha256": hashlib.sha256(f"race-{tag}-{index}".encode()).hexdigest(),
                "display_png": tile.getvalue(),
                "display_size": 16,
                "model_input": bytes(64 * 64 * 3),
                "source_name": f"race/{index}.png",
                "random_key": random.random(),
            }
            for index in range(rounds * len(RACE_KINDS))
        ]
        conn.execute(insert(Cell), rows)
        hashes = [row["sha256"] for row in rows]
        by_hash = dict(conn.execute(select(Cell.sha256, Cell.id).where(Cell.sha256.in_(hashes))).all())
    return [by_hash[sha] for sha in hashes]


class _Racer:
    """Sends requests in parallel threads, released together by a barrier, and tallies the answers."""

    def __init__(self, client, engine, headers: dict[str, dict[str, str]], classes: list[str]) -> None:
        import threading
        from collections import Counter
        from concurrent.futures import ThreadPoolExecutor

        self.client, self.engine, self.headers, self.classes = client, engine, headers, classes
        self.pool = ThreadPoolExecutor(max_workers=max(CONCURRENT_UNDOS, REPEATED_POSTS, 2))
        self.statuses: dict[str, Counter] = {kind: Counter() for kind in RACE_KINDS}
        self.server_errors = 0
        self.transport_errors = 0
        self.lost_current_labels = 0
        self.stale_current_labels = 0
        self.duplicate_rows = 0
        self.double_undo_rounds_without_one_success = 0
        self.leased_to_other_recorded = 0
        self.lock = threading.Lock()  # the counters are written from several threads

    def post(self, kind: str, what: str, user: str, url: str, **kwargs):
        import httpx

        try:
            response = self.client.post(url, headers=self.headers[user], **kwargs)
        except httpx.HTTPError:
            with self.lock:
                self.transport_errors += 1
                self.statuses[kind][f"{what} transport error"] += 1
            return None
        with self.lock:
            self.statuses[kind][f"{what} {response.status_code}"] += 1
            self.server_errors += response.status_code >= 500
        return response

    def together(self, *calls):
        """Run the zero-argument ``calls`` at the same moment; their results in order."""
        import threading

        barrier = threading.Barrier(len(calls))

        def run(call):
            barrier.wait(timeout=30)
            return call()

        return [future.result() for future in [self.pool.submit(run, call) for call in calls]]

    def label(self, kind: str, user: str, cell_id: int, **extra):
        body = {"label": random.choice(self.classes), **extra}
        return self.post(kind, "label", user, f"/api/v1/cells/{cell_id}/labels", json=body)

    def undo(self, kind: str, user: str):
        return self.post(kind, "undo", user, "/api/v1/labels/undo")

    def _current(self, cell_id: int) -> tuple[int | None, int | None]:
        """The cell's cached current label and the one its rows give."""
        from sqlalchemy.orm import Session

        from app.labelling.service import standing_label_id
        from app.models import Cell

        with Session(self.engine) as session:
            return session.get(Cell, cell_id).current_label_id, standing_label_id(session=session, cell_id=cell_id)

    def check_stands(self, cell_id: int, expected_id: int | None) -> None:
        cached, standing = self._current(cell_id)
        if expected_id is not None and cached != expected_id:
            self.lost_current_labels += 1
        if cached != standing:
            self.stale_current_labels += 1

    def undo_vs_label(self, cell_id: int) -> None:
        """a labels the cell; then a's undo and b's label of the same cell arrive at once: b's label stands."""
        first = self.label("undo_vs_label", "racer_a", cell_id)
        if first is None or first.status_code != 201:
            return
        _undo, other = self.together(
            lambda: self.undo("undo_vs_label", "racer_a"), lambda: self.label("undo_vs_label", "racer_b", cell_id)
        )
        if other is not None and other.status_code == 201:
            self.leased_to_other_recorded += other.json().get("lease_holder") == "racer_a"
            self.check_stands(cell_id, other.json()["id"])

    def double_undo(self, cell_id: int) -> None:
        """c labels the cell, then sends several undos at once: one succeeds, the others get 409 (or 404)."""
        first = self.label("double_undo", "racer_c", cell_id)
        if first is None or first.status_code != 201:
            return
        answers = self.together(*[lambda: self.undo("double_undo", "racer_c")] * CONCURRENT_UNDOS)
        successes = sum(1 for answer in answers if answer is not None and answer.status_code == 200)
        self.double_undo_rounds_without_one_success += successes != 1
        self.check_stands(cell_id, None)

    def label_vs_label(self, cell_id: int) -> None:
        """d and e label the same cell at once: the newer row stands, and the cache says so."""
        answers = self.together(
            lambda: self.label("label_vs_label", "racer_d", cell_id),
            lambda: self.label("label_vs_label", "racer_e", cell_id),
        )
        ids = [answer.json()["id"] for answer in answers if answer is not None and answer.status_code == 201]
        self.check_stands(cell_id, max(ids) if len(ids) == 2 else None)

    def repeated_post(self, cell_id: int) -> None:
        """f sends one label (one idempotency key) several times at once: one row, 201 once, then 200."""
        from sqlalchemy import func, select
        from sqlalchemy.orm import Session

        from app.models import Label

        body = {"label": random.choice(self.classes), "idempotency_key": os.urandom(16).hex()}
        answers = self.together(
            *[lambda: self.post("repeated_post", "label", "racer_f", f"/api/v1/cells/{cell_id}/labels", json=body)]
            * REPEATED_POSTS
        )
        with Session(self.engine) as session:
            rows = session.scalar(select(func.count(Label.id)).where(Label.cell_id == cell_id))
        self.duplicate_rows += max(rows - 1, 0)
        ids = {answer.json()["id"] for answer in answers if answer is not None and answer.status_code in (200, 201)}
        self.duplicate_rows += max(len(ids) - 1, 0)  # two different rows acknowledged for one key
        self.check_stands(cell_id, next(iter(ids)) if len(ids) == 1 else None)


def run_races(client, engine, cell_ids: list[int], rounds: int) -> dict:
    """Play ``rounds`` rounds of each race through ``client`` (an ``httpx.Client`` or a TestClient)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from app.labelling.service import current_label_mismatches
    from app.models import CellClass

    with Session(engine) as session:
        classes = list(session.scalars(select(CellClass.name).where(CellClass.is_wbc)))
    headers = {}
    for name in RACE_USERS:
        response = client.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
        response.raise_for_status()
        headers[name] = {"Authorization": f"Bearer {response.json()['access_token']}"}
    racer = _Racer(client, engine, headers, classes)
    cells = iter(cell_ids)
    started = time.perf_counter()
    try:
        for _round in range(rounds):
            for kind in RACE_KINDS:
                getattr(racer, kind)(next(cells))
    finally:
        racer.pool.shutdown()
    with Session(engine) as session:
        mismatches = current_label_mismatches(session=session)
    return {
        "rounds": rounds,
        "kinds": list(RACE_KINDS),
        "lost_current_labels": racer.lost_current_labels,
        "duplicate_rows": racer.duplicate_rows,
        "server_errors": racer.server_errors,
        "cache_mismatches": len(mismatches) + racer.stale_current_labels,
        "transport_errors": racer.transport_errors,
        "double_undo_rounds_without_one_success": racer.double_undo_rounds_without_one_success,
        "labels_recorded_as_leased_to_other": racer.leased_to_other_recorded,
        "statuses": {kind: dict(sorted(counter.items())) for kind, counter in racer.statuses.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


RACE_FAILURES = ("lost_current_labels", "duplicate_rows", "server_errors", "cache_mismatches", "transport_errors")


def races_command(
    json_out: Annotated[Path, typer.Option("--json", help="where to write the report")],
    rounds: Annotated[int, typer.Option(min=1, max=100_000, help="rounds of each race")] = 1000,
    database_url: Annotated[
        str | None,
        typer.Option(help="an empty database to use instead of creating leukolab_bench_races on local Postgres"),
    ] = None,
    server_workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 2,
) -> None:
    """Race undo against label, undo against undo, label against label and repeated POSTs over HTTP
    on PostgreSQL; exit 1 unless no label was lost, duplicated, answered 5xx or left a stale cache."""
    import httpx

    from app import db

    if database_url is None:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}_races WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {BENCH_DB}_races")
        database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{BENCH_DB}_races"
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    cell_ids = race_setup(engine, rounds)
    try:
        server, base = start_server(database_url, workers=server_workers)
    except RuntimeError as error:
        raise typer.Exit(2) from error
    try:
        typer.echo(f"racing {base} ({server_workers} processes): {rounds} rounds of {', '.join(RACE_KINDS)}")
        limits = httpx.Limits(max_connections=2 * max(CONCURRENT_UNDOS, REPEATED_POSTS))
        with httpx.Client(base_url=base, timeout=60, limits=limits) as client:
            result = run_races(client, engine, cell_ids, rounds)
    finally:
        server.terminate()
        server.wait(timeout=30)
        engine.dispose()
    result.update(database=engine.dialect.name, server_workers=server_workers)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))
    if any(result[name] for name in RACE_FAILURES):
        raise typer.Exit(1)
