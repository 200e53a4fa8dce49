"""Write docs/results/labelling.md from the `leukolab bench labelling --json` reports in docs/results/labelling/.

    python scripts/labelling_report.py [REPORT_DIR] [OUT_MD]

Every report there becomes a row; the prose around the tables is kept here, so a rerun of the bench on a quiet
machine followed by this script updates the page. Name the reports ``<label>.json``: the label is the row's name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SQL_STEPS = ("COMMIT", "pool pre-ping", "BEGIN and connection checkout", "statements")

LABEL_STUDIO = """\
## Side by side with Label Studio

Quoted from issue 14 (same 2-core machine, 20 annotators, 100k tasks, PostgreSQL, flat out), not rerun here:

| | next p99 | label p99 | labels/s |
|---|---|---|---|
| Label Studio 1.23.2 | 3,431 ms | 4,219 ms | 4.7 |
| leukolab before this change (issue's flat-out run) | 503 ms | 580 ms | 67 |
| leukolab before this change (issue's table, `--think-ms 0`) | 528 ms | 612 ms | 64 |

The rows measured by this version are in the tables above (`think 0` rows: flat out).
"""

HOW = """\
## What changed on the hot path, and why it keeps every guarantee

- **`queue/next` is one statement on PostgreSQL** (`app/labelling/service.py`, `_NEXT_SQL`): CTEs take the
  caller's own live lease, else the best queued cell, else a random unlabelled cell walked from a random point of
  the partial index `ix_cells_unlabelled_random`, each with `FOR UPDATE ... SKIP LOCKED`, then `UPDATE`/`INSERT ...
  ON CONFLICT DO NOTHING` the queue entry and join the cell's hash, first reader and the active model's prediction
  (suggestion, two likeliest classes) in the same statement. Leases stay exclusive exactly as before: the row
  locks and the unique `queue_entries.cell_id` are the same, and a lost insert race is retried.
- **A label is two statements**: the first locks the cell row (`FOR UPDATE`, as `lock_cell` did) and reads the
  caller's user row, whether the class exists and the reading settings; the second, started after the lock is held
  (so under READ COMMITTED it sees every earlier try of the same idempotency key), inserts the row (the idempotency
  check, the lease holder and the shown suggestion are sub-selects), sets `current_label_id` to it and drops the
  queue entry. With the cell locked the new row is the newest standing label, which is the single-reading rule of
  `app/consensus/rules.py`; a cell under double reading (`readers_required = 2`, or a first read waiting) goes
  through the general `record_label` in the same transaction, lock held. SQLite keeps the general path
  (BEGIN IMMEDIATE already serialises writers).
- **No separate user lookup, and revocation stays immediate**: the hot routes take `app.deps.Caller` (the signed
  token's or session cookie's user id and session version, checked without the database) and their first
  statement reads the user row in the same SQL (`caller`/`allowed` CTEs): a lease is only taken, and a cell only
  locked, when the user is active, the session version matches and no password change is pending. A logout,
  password change, admin reset or deactivation in any process bumps or clears that row, so the next request
  anywhere is refused (tests/app/test_speed.py checks all four). Nothing is cached per process. The class list is
  checked inside the same statement (an `EXISTS` on `classes`), not cached, so a new class is usable at once.
- **Cheap JSON**: the two hot routes answer with `orjson.dumps` of a dict (no response-model validation pass);
  the OpenAPI schema still names `NextCell`/`LabelOut`.
- **Images by content hash**: `queue/next` gives `/api/v1/cells/{id}/image?v={sha256}`; that URL is served with
  `Cache-Control: private, max-age=31536000, immutable` (private: it needs a login) and `ETag: "{sha256}"`, and
  `If-None-Match` answers 304 after one small query. A re-shown cell (undo, reload) costs no request at all.
- **Floor**: `/bench/floor` (only with `LEUKOLAB_BENCH_FLOOR=1`, which the bench sets) is the same stack —
  middleware, thread pool, a request-owned session, BEGIN/`SELECT 1`/COMMIT, a JSON reply — with nothing else.
  The bench drives it after the main run with the same labellers and rhythm; every latency is also given as a
  ratio to it, so runs on a busy machine can be compared.
"""


def _row(label: str, report: dict) -> str:
    ratio = report.get("ratio_to_floor", {})
    floor = report.get("floor", {})
    machine = report.get("machine", {})
    think = "flat out" if not report.get("think_ms") else f"{report['think_ms']:.0f} ms"
    return (
        f"| {label} | {report.get('database', 'postgresql')} | {report['cells']:,} | {report['users']} | {think} "
        f"| {report['next']['p50_ms']} / {report['next']['p99_ms']} | {report['label']['p50_ms']} / "
        f"{report['label']['p99_ms']} | {floor.get('p50_ms', '–')} / {floor.get('p99_ms', '–')} "
        f"| {ratio.get('next_p99', '–')} / {ratio.get('label_p99', '–')} "
        f"| {report.get('labels_per_s', '–')} | {floor.get('requests_per_s', '–')} | {report['errors']} "
        f"| {report['lost_labels']} "
        f"| {machine.get('cpus', '?')} cpus, load {machine.get('load_1min_before', '?')}→"
        f"{machine.get('load_1min_after', '?')} |"
    )


def render(reports: dict[str, dict]) -> str:
    runs = {label: report for label, report in reports.items() if "next" in report}
    lines = [
        "# Labelling at the speed limit (issue 14)",
        "",
        "Written by `scripts/labelling_report.py` from the reports in `docs/results/labelling/`",
        "(`leukolab bench labelling --json docs/results/labelling/<name>.json [--think-ms N] [--cells N]",
        "[--labellers N] [--database sqlite] [--profile]`). Latencies in ms, p50 / p99; the floor is the same",
        "request shape against a one-round-trip endpoint in the same run; *ratio* is p99 / floor p99 (next / label).",
        "The load column is the 1-minute load average before → after the run: above the CPU count, other",
        "work shared the cores and every absolute figure is inflated. *floor req/s* is what the bare stack",
        "answered with the same labellers (flat out: the most it can do; a label costs two requests).",
        "",
        "| run | database | cells | labellers | think | next | label | floor | ratio p99 | labels/s | floor req/s"
        " | errors | lost | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(label, report) for label, report in sorted(runs.items())),
        "",
        "Targets (issue 14, on a quiet 2-core machine): think 250 ms, 20 labellers, 100k cells: p99 < 50 ms for",
        "next and label, 0 errors, 0 lost; flat out: ≥ 300 labels/s with p99 < 150 ms; 1,000,000 cells: p99",
        "within 20 % of the 100k run; SQLite with 5 labellers: no errors, no lost labels.",
        "",
        "## Where the time of a request goes (py-spy, server workers)",
        "",
        "Share of the busy samples of the server's worker processes (`--profile`: `py-spy record --idle`, so time",
        "spent waiting for PostgreSQL counts as SQL; threads waiting for work are left out).",
        "",
    ]
    profiled = {label: report["profile"] for label, report in sorted(reports.items()) if "profile" in report}
    if profiled:
        buckets = list(next(iter(profiled.values()))["share"])
        lines += [
            "| run | busy samples | " + " | ".join(buckets) + " |",
            "|---|---|" + "---|" * len(buckets),
            *(
                f"| {label} | {profile['busy_samples']} | "
                + " | ".join(f"{100 * profile['share'][name]:.0f} %" for name in buckets)
                + " |"
                for label, profile in profiled.items()
            ),
            "",
            "The SQL column by step (shares of all busy samples):",
            "",
            "| run | " + " | ".join(SQL_STEPS) + " |",
            "|---|" + "---|" * len(SQL_STEPS),
            *(
                f"| {label} | "
                + " | ".join(f"{100 * profile.get('sql_steps', {}).get(name, 0):.0f} %" for name in SQL_STEPS)
                + " |"
                for label, profile in profiled.items()
            ),
            "",
        ]
    browsed = {label: r["browser_key_to_paint"] for label, r in sorted(reports.items()) if "browser_key_to_paint" in r}
    if browsed:
        lines += [
            "## Browser: key press to the next cell painted",
            "",
            "Headless Chromium, one class key per pace; static/label.js marks the key and measures after the next",
            "cell's image is decoded and a frame has passed (Performance API). Target: p95 < 100 ms.",
            "",
            "| run | phase | keys | pace | p50 | p95 | p99 |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {label} | {phase} | {figures['keys']} | {figures['pace_ms']} ms | {figures['p50_ms']} "
                f"| {figures['p95_ms']} | {figures['p99_ms']} |"
                for label, phases in browsed.items()
                for phase, figures in phases.items()
            ),
            "",
        ]
    planned = {label: report["plans"] for label, report in sorted(reports.items()) if "plans" in report}
    if planned:
        lines += [
            "## Query plans (EXPLAIN ANALYZE, key lines)",
            "",
            "Every access is an index scan bounded by `LIMIT 1` or a primary key, so the cost does not grow",
            "with the number of cells; compare the 1,000,000-cell plans with the smaller runs.",
            "",
        ]
        for label, plans in planned.items():
            cells = reports[label].get("cells")
            lines.append(f"### {label} ({cells:,} cells)" if cells else f"### {label}")
            lines.append("")
            for name, plan in plans.items():
                lines += [f"`{name}`:", "", "```", *plan, "```", ""]
    lines += [HOW, LABEL_STUDIO]
    notes = ROOT / "docs" / "results" / "labelling" / "notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "results" / "labelling"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "results" / "labelling.md"
    reports = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    out.write_text(render(reports))
    print(f"wrote {out} from {len(reports)} reports")


if __name__ == "__main__":
    main()
