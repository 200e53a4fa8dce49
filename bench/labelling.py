"""``leukolab bench labelling``: latency of next-cell and label under concurrent labellers, over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.server import start_server

BENCH_DB = "leukolab_bench"
PASSWORD = "bench-password-123"


def _percentiles(samples: list[float]) -> dict[str, float]:
    import numpy as np

    if not samples:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "count": 0}
    values = np.asarray(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "count": len(samples),
    }


def _fill(url: str, cells: int, users: int) -> None:
    """Create a fresh schema with ``cells`` generated cells and ``users`` cytologists."""
    from PIL import Image
    from sqlalchemy import insert

    from app import db
    from app.models import Cell, User
    from app.security import hash_password

    db.upgrade(url)
    engine = db.make_engine(url)
    tile = io.BytesIO()
    Image.new("RGB", (16, 16), (180, 120, 200)).save(tile, format="PNG")
    png = tile.getvalue()
    zeros = bytes(64 * 64 * 3 - 8)
    password_hash = hash_password(PASSWORD)
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            [
                {"username": f"bench{i}", "role": "cytologist", "password_hash": password_hash, "is_active": True}
                for i in range(users)
            ],
        )
        batch = 5000
        with typer.progressbar(range(0, cells, batch), label=f"generating {cells} cells") as starts:
            for start in starts:
                rows = []
                for index in range(start, min(cells, start + batch)):
                    unique = index.to_bytes(8, "little")
                    rows.append(
                        {
                            "sha256": hashlib.sha256(unique).hexdigest(),
                            "display_png": png,
                            "display_size": 16,
                            "model_input": unique + zeros,
                            "source_name": f"bench/{index}.png",
                            "random_key": random.random(),
                        }
                    )
                conn.execute(insert(Cell), rows)
    if engine.dialect.name == "postgresql":
        # a settled database, as a live site's: fresh statistics and visibility map (autovacuum's work),
        # and the fill's WAL written out now, not by a checkpoint or autovacuum in the measured window
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
            # CHECKPOINT needs a superuser (or pg_checkpoint); without it the bench still runs
            with contextlib.suppress(Exception):
                conn.exec_driver_sql("CHECKPOINT")
    else:  # the fill's WAL (GBs) copied into the database now, not by a checkpoint in the middle of the run
        with engine.connect() as conn:
            conn.exec_driver_sql("COMMIT")  # out of the BEGIN IMMEDIATE the engine starts with
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def _class_names(url: str) -> list[str]:
    from sqlalchemy import select

    from app import db
    from app.models import CellClass

    engine = db.make_engine(url)
    with engine.connect() as conn:
        names = list(conn.scalars(select(CellClass.name).where(CellClass.is_wbc)))
    engine.dispose()
    return names


async def _login(client, users: int) -> list[str]:
    tokens = []
    for i in range(users):
        response = await client.post("/api/v1/auth/token", data={"username": f"bench{i}", "password": PASSWORD})
        response.raise_for_status()
        tokens.append(response.json()["access_token"])
    return tokens


async def _drive(
    base: str, users: int, seconds: float, classes: list[str], think_s: float, warmup_s: float, floor_s: float = 0.0
) -> dict:
    """Each labeller asks for the next cell, looks at it for ``think_s`` (0.5 to 1.5 times), labels it, again.

    Then, for ``floor_s``, the same labellers send the same two requests, in the same rhythm, to the floor
    (``/bench/floor``: the same stack, one SQL round trip) so every latency can be read as a ratio to it.
    """
    import httpx

    next_latency: list[float] = []
    label_latency: list[float] = []
    floor_latency: list[float] = []
    acknowledged: list[int] = []
    errors: list[str] = []
    exhausted: list[str] = []
    limits = httpx.Limits(max_connections=users * 2)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        tokens = await _login(client, users)
        measure_from = time.perf_counter() + warmup_s  # connections, pools and caches warm up first
        deadline = measure_from + seconds

        async def timed(method: str, url: str, latencies: list[float], **kwargs):
            started = time.perf_counter()
            try:
                response = await client.request(method, url, **kwargs)
            except httpx.HTTPError as error:
                errors.append(f"{url.split('?')[0].split('/')[-1]}: {error.__class__.__name__}")
                return None
            if started >= measure_from:
                latencies.append(time.perf_counter() - started)
            return response

        async def labeller(token: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            while time.perf_counter() < deadline:
                response = await timed("GET", "/api/v1/queue/next", next_latency, headers=headers)
                if response is not None and response.status_code == 204:
                    exhausted.append(token)  # every cell labelled: this labeller is done
                    return
                if response is None or response.status_code != 200:
                    errors.append(f"next: HTTP {response.status_code}") if response is not None else None
                    continue
                cell_id = response.json()["cell_id"]
                await asyncio.sleep(random.uniform(0.5, 1.5) * think_s)  # looking at the cell
                response = await timed(
                    "POST",
                    f"/api/v1/cells/{cell_id}/labels",
                    label_latency,
                    json={"label": random.choice(classes)},
                    headers=headers,
                )
                if response is not None and response.status_code == 201:
                    acknowledged.append(response.json()["id"])
                elif response is not None:
                    errors.append(f"label: HTTP {response.status_code}")

        async def floor_labeller(token: str, until: float) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            while time.perf_counter() < until:
                for method in ("GET", "POST"):
                    response = await timed(method, "/bench/floor", floor_latency, headers=headers)
                    if response is not None and response.status_code != 200:
                        errors.append(f"floor: HTTP {response.status_code}")
                    if method == "GET":
                        await asyncio.sleep(random.uniform(0.5, 1.5) * think_s)

        started = time.perf_counter()
        await asyncio.gather(*(labeller(token) for token in tokens))
        elapsed = time.perf_counter() - max(started, measure_from)
        if floor_s > 0:
            floor_until = time.perf_counter() + floor_s
            await asyncio.gather(*(floor_labeller(token, floor_until) for token in tokens))
    result = {
        "next": _percentiles(next_latency),
        "label": _percentiles(label_latency),
        "labels_per_s": round(len(label_latency) / elapsed, 1),
        "requests_per_s": round((len(next_latency) + len(label_latency)) / elapsed, 1),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:10],
        "labellers_out_of_cells": len(exhausted),
        "acknowledged": acknowledged,
    }
    if floor_latency:
        floor = _percentiles(floor_latency)
        floor["requests_per_s"] = round(len(floor_latency) / floor_s, 1)  # what the stack alone sustains
        result["floor"] = floor
        result["ratio_to_floor"] = {
            f"{name}_{p}": round(result[name][f"{p}_ms"] / floor[f"{p}_ms"], 2)
            for name in ("next", "label")
            for p in ("p50", "p99")
            if floor[f"{p}_ms"]
        }
    return result


# --- the browser path: key press to the next cell painted, read from the page's Performance API ------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def browser_key_to_paint(base: str, username: str, labels: int, pace_s: float) -> dict:
    """Log ``username`` in with headless Chromium, press a class key every ``pace_s`` for ``labels`` labels,
    and give the percentiles of static/label.js's ``leukolab:key-to-paint`` measures (prefetch included)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            page.goto(f"{base}/login")
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/label")
            page.wait_for_selector("#cell-image[data-cell-id]")
            for _ in range(labels):
                page.keyboard.press("1")
                page.wait_for_timeout(pace_s * 1000)
            page.wait_for_timeout(1000)
            durations = page.evaluate(
                "performance.getEntriesByName('leukolab:key-to-paint').map((entry) => entry.duration / 1000)"
            )
        finally:
            browser.close()
    return {**_percentiles(durations), "keys": labels, "pace_ms": round(pace_s * 1000)}


# --- where the server's time goes: py-spy samples of the worker processes, summarised ---------------

PROFILE_BUCKETS = (
    "auth",
    "SQL (driver and waiting for PostgreSQL)",
    "ORM and SQL building (SQLAlchemy)",
    "handler Python",
    "serialisation",
    "event loop, HTTP and middleware",
)
_AUTH = ("current_user ", "caller ", "load_caller ", "read_token ", "refuse_caller ")
_SERIALISE = ("serialize_response ", "jsonable_encoder ", "_json (app/labelling", "orjson", "pydantic")
_HANDLER = ("app/labelling/", "app/consensus/", "app/deps.py", "app/db.py", "app/main.py")


# Frames a thread sits in with nothing to do: the event loop in select(), uvicorn's supervisor
# pipe, a thread-pool thread waiting for a request, the master process.
_IDLE_LEAVES = {
    "Runner.run",
    "Connection._recv",
    "main",
    "Condition.wait",
    "Queue.get",
    "BaseSelector.select",
    "EpollSelector.select",
    "BaseEventLoop._run_once",
    "BaseEventLoop.run_forever",
    "Event.wait",
    "Thread._bootstrap",
    "Thread._bootstrap_inner",
    "WorkerThread.run",
    "sleep",
    "Server.main_loop",
}


def classify_stack(stack: str) -> str | None:
    """The bucket of one sampled stack (root first, ``;``-separated); None for a thread with nothing to do."""
    frames = stack.split(";")
    if not stack.strip() or frames[-1].split(" (")[0] in _IDLE_LEAVES:
        return None
    if any("app/users/" in frame for frame in frames):
        return None  # the labellers' logins before the measurement, not the hot path
    if any(any(name in frame for name in _AUTH) for frame in frames):
        return "auth"
    if any(any(name in frame for name in _SERIALISE) for frame in frames):
        return "serialisation"
    if any(any(part in frame for part in _HANDLER) for frame in frames):
        if any("psycopg" in frame or "sqlite3" in frame for frame in frames):
            return "SQL (driver and waiting for PostgreSQL)"
        if any("sqlalchemy/" in frame for frame in frames):
            return "ORM and SQL building (SQLAlchemy)"
        return "handler Python"
    return "event loop, HTTP and middleware"


def summarise_profile(paths: list[Path]) -> dict:
    """Per-bucket shares of the busy samples in py-spy ``--format raw`` files (the server's worker processes)."""
    from collections import Counter

    buckets: Counter = Counter()
    sql: Counter = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            bucket = classify_stack(stack)
            if bucket is not None:
                buckets[bucket] += int(count)
            if bucket == PROFILE_BUCKETS[1]:
                sql[_sql_step(stack)] += int(count)
    total = sum(buckets.values())
    return {
        "busy_samples": total,
        "share": {name: round(buckets[name] / total, 3) if total else 0.0 for name in PROFILE_BUCKETS},
        # the SQL bucket by step, as shares of all busy samples
        "sql_steps": {name: round(sql[name] / total, 3) if total else 0.0 for name in SQL_STEPS},
    }


SQL_STEPS = ("COMMIT", "pool pre-ping", "BEGIN and connection checkout", "statements")


def _sql_step(stack: str) -> str:
    if "do_ping" in stack:
        return "pool pre-ping"
    if "commit (" in stack.lower() or "_commit_impl" in stack:
        return "COMMIT"
    if "_connection_for_bind" in stack and "Cursor.execute" not in stack:
        return "BEGIN and connection checkout"
    return "statements"


def _profile_workers(server: subprocess.Popen, seconds: float, out_dir: Path) -> list[subprocess.Popen]:
    """Start ``py-spy record`` on each of the server's worker processes (``--idle``: time waiting for SQL counts)."""
    import shutil

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
    pids = [pid for pid in children if pid.isdigit()] or [str(server.pid)]
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                pid,
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                "200",
                "--idle",
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                str(out_dir / f"worker-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


def _create_bench_database(name: str) -> str:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def labelling_command(
    json_out: Annotated[Path, typer.Option("--json", help="where to write the report")],
    cells: Annotated[int, typer.Option(help="generated cells")] = 100_000,
    users: Annotated[int, typer.Option("--labellers", "--users", help="concurrent simulated labellers")] = 20,
    seconds: Annotated[float, typer.Option(help="how long to drive the server")] = 30.0,
    database: Annotated[
        str, typer.Option(help="postgres (a fresh leukolab_bench database on local PostgreSQL) or sqlite (a temp file)")
    ] = "postgres",
    database_url: Annotated[str | None, typer.Option(help="use this (empty) database instead of creating one")] = None,
    database_name: Annotated[
        str, typer.Option(help="the PostgreSQL database to (re)create for --database postgres")
    ] = BENCH_DB,
    server_workers: Annotated[
        int | None, typer.Option(help="uvicorn worker processes (default: 2 on PostgreSQL, 1 on SQLite: one writer)")
    ] = None,
    think_ms: Annotated[
        float,
        typer.Option(help="mean pause between seeing a cell and labelling it; 0 drives the server flat out"),
    ] = 250.0,
    warmup_s: Annotated[float, typer.Option(help="seconds of driving before latencies are recorded")] = 3.0,
    floor_s: Annotated[
        float, typer.Option(help="seconds of the same load on the one-round-trip floor endpoint, after the run")
    ] = 10.0,
    profile: Annotated[
        bool, typer.Option(help="sample the server workers with py-spy while measuring (shares in the report)")
    ] = False,
    browser_labels: Annotated[
        int,
        typer.Option(help="labels given in headless Chromium, alone and then under the load (0: no browser)"),
    ] = 0,
    browser_pace_ms: Annotated[float, typer.Option(help="one key press per this many ms in the browser")] = 600.0,
) -> None:
    """Drive the web server with concurrent labellers and report latency percentiles, their ratio to the floor
    (the same stack answering after one SQL round trip) and lost labels."""
    import tempfile

    from sqlalchemy import func, select

    from app import db
    from app.models import Label

    if database not in ("postgres", "sqlite"):
        raise typer.BadParameter("--database is postgres or sqlite")
    scratch = Path(tempfile.mkdtemp(prefix="leukolab-bench-"))
    if server_workers is None:
        server_workers = 1 if database == "sqlite" or (database_url or "").startswith("sqlite") else 2
    if database_url is None:
        database_url = (
            f"sqlite:///{scratch / 'bench.db'}" if database == "sqlite" else _create_bench_database(database_name)
        )
    started_fill = time.perf_counter()
    _fill(database_url, cells, users + (1 if browser_labels else 0))  # the last one is the browser's
    fill_s = time.perf_counter() - started_fill

    try:
        server, base = start_server(database_url, workers=server_workers, env={"LEUKOLAB_BENCH_FLOOR": "1"})
    except RuntimeError as error:
        raise typer.Exit(2) from error
    load_before = os.getloadavg()
    spies: list[subprocess.Popen] = []
    try:
        classes = _class_names(database_url)
        browser: dict = {}
        if browser_labels:
            typer.echo(f"{browser_labels} labels in Chromium, one per {browser_pace_ms:.0f} ms, no other load")
            browser["quiet"] = browser_key_to_paint(base, f"bench{users}", browser_labels, browser_pace_ms / 1000)
        typer.echo(f"driving {base} with {users} labellers for {seconds:.0f} s")

        async def measured() -> dict:
            run = asyncio.create_task(_drive(base, users, seconds, classes, think_ms / 1000, warmup_s, floor_s))
            await asyncio.sleep(warmup_s + 1)  # logins and warm-up first
            if profile:
                spies.extend(_profile_workers(server, seconds - 2, scratch / "profile"))
            if browser_labels:  # as many as fit in the measured window
                keys = max(1, min(browser_labels, int((seconds - 5) / (browser_pace_ms / 1000))))
                browser["under_load"] = await asyncio.to_thread(
                    browser_key_to_paint, base, f"bench{users}", keys, browser_pace_ms / 1000
                )
            return await run

        result = asyncio.run(measured())
        if browser:
            result["browser_key_to_paint"] = browser
    finally:
        for spy in spies:
            spy.wait(timeout=60)
        server.terminate()
        server.wait(timeout=30)
    load_after = os.getloadavg()

    acknowledged = result.pop("acknowledged")
    engine = db.make_engine(database_url)
    with engine.connect() as conn:
        stored = 0
        for start in range(0, len(acknowledged), 10_000):
            chunk = acknowledged[start : start + 10_000]
            stored += conn.scalar(select(func.count(Label.id)).where(Label.id.in_(chunk)))
    engine.dispose()
    result.update(
        labels_acknowledged=len(acknowledged),
        lost_labels=len(acknowledged) - stored,
        database=engine.dialect.name,
        cells=cells,
        users=users,
        seconds=seconds,
        think_ms=think_ms,
        warmup_s=warmup_s,
        floor_s=floor_s,
        server_workers=server_workers,
        fill_s=round(fill_s, 1),
        machine={
            "cpus": os.cpu_count(),
            "load_1min_before": round(load_before[0], 2),
            "load_1min_after": round(load_after[0], 2),
        },
    )
    if engine.dialect.name == "postgresql":
        result["plans"] = explain_hot_path(database_url)
    if profile:
        result["profile"] = summarise_profile(sorted((scratch / "profile").glob("worker-*.txt")))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))


# --- ``leukolab bench races``: the interleavings of issue 13, over HTTP ----------------------------

# --- the hot path's query plans: the queue's cost must not grow with the number of cells ----------------

PLAN_KEYS = ("Index", "Seq Scan", "LockRows", "Insert", "Update", "Delete", "Execution Time", "Planning Time")


def explain_hot_path(url: str, *, username: str = "bench0") -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of the one-statement ``queue/next`` and of a label's two statements on PostgreSQL,
    run in a transaction that is rolled back; only the plan lines that show access paths and timings."""
    from datetime import timedelta

    from sqlalchemy import exists, select, text

    from app.labelling import service
    from app.models import Cell, QueueEntry, User, utcnow

    engine = db_engine(url)
    plans: dict[str, list[str]] = {}
    with engine.connect() as conn:
        transaction = conn.begin()
        now = utcnow()
        leased = select(QueueEntry.id).where(QueueEntry.leased_to == User.id, QueueEntry.lease_until > now)
        # a user holding no live lease, so the plan shows the whole walk (queue, then a random cell)
        user = (
            conn.execute(
                select(User.id, User.session_version).where(~exists(leased)).order_by(User.id).limit(1)
            ).first()
            or conn.execute(select(User.id, User.session_version).where(User.username == username)).one()
        )
        common = {"uid": user.id, "sv": user.session_version, "may_change": False}
        queries = {
            "queue/next": (
                service._NEXT_SQL,
                {**common, "now": now, "until": now + timedelta(minutes=5), "exclude": [], "start": random.random()},
            )
        }
        cell_id = conn.scalar(select(Cell.id).where(Cell.current_label_id.is_(None)).limit(1)) or conn.scalar(
            select(Cell.id).limit(1)
        )
        label = {**common, "cell": cell_id, "value": "basophil"}
        queries["label: lock and check"] = (service._LOCK_SQL, {**label, "unsure": "unsure"})
        queries["label: store"] = (
            service._STORE_SQL,
            {**label, "key": None, "now": now, "readers": 1, "min_confidence": 0.5},
        )
        try:
            for name, (sql, params) in queries.items():
                lines = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), params).scalars().all()
                plans[name] = [line.strip() for line in lines if any(key in line for key in PLAN_KEYS)]
        finally:
            transaction.rollback()
    engine.dispose()
    return plans


def db_engine(url: str):
    from app import db

    return db.make_engine(url)
