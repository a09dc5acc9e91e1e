"""Scheduler scale: milliseconds for the scheduler to claim and enqueue 10,000 due enrolments
when 1,000,000 are enrolled, beside the same 10,000 when only they exist. Goal: at most 1.5x the
time (ratio <= 1.5), with the memory of the claim phase flat (tracemalloc peak and RSS growth).

Two databases are bulk-loaded with INSERT ... SELECT generate_series, one lead and one enrolment
in lead-nurture per row g: the large one (`--url`) with every row, the due rows spread evenly
through the table (every k-th row, due within the last hour) and the rest waiting (next step
within 30 days), exhausted (timeout within 30 days) or exited (no next step), every lead's decay
and inactivity due later; the small one (`--url` + "_due") with only the due rows, the same ids
and times. Runs alternate between the two, so load from neighbours on a shared machine hits both.

A claim phase is what `nurture scheduler` does: `Tasks.tick` passes (claim due leads, enrolments,
deliveries and handoffs under leases, enqueue each id on the Redis broker) until a pass finds
nothing. `claim_due_enrolments` alone (no broker) is timed too. Each figure is the median of
`--repeat` runs; leases are cleared and the broker's queues flushed between runs. The plan of the
claim query on the large database is printed with EXPLAIN ANALYZE: fresh, and with every due row
leased (what the last, empty pass of a phase scans).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import tracemalloc
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bench.common import Figure, report, reset_database
from engine.app import App
from engine.clock import FrozenClock
from engine.db import make_engine
from engine.runner.actors import Tasks
from engine.runner.scheduler import claim_due_enrolments
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nurture_bench_scheduler"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
NOW = datetime(2026, 3, 2, 10, tzinfo=UTC)
SEQUENCE = "lead-nurture"

# The rows g = 1..n, every k-th due up to row :last (k * due); with :only_due those alone.
ROWS = """(SELECT g, g % :k = 0 AND g <= :last AS due FROM generate_series(1, :n) AS g) AS rows
WHERE due OR NOT :only_due"""
# One lead per row.
LOAD_LEADS = (
    """
INSERT INTO leads (id, email, email_key, first_name, timezone, fields, email_consent,
                   sms_consent, stage, fit, engagement, fit_rules, sql_crossings, created_at,
                   updated_at, last_activity_at, decay_due_at, inactive_due_at)
SELECT g, 'lead' || g || '@bench.test', 'lead' || g || '@bench.test', 'Lee' || g, 'UTC', '{}',
       true, false, 'lead',
       0, 10, '{}', 0, :now - interval '10 days', :now - interval '1 day',
       :now - interval '1 day', :now + interval '1 day' * (1 + g % 14),
       :now + interval '1 day' * (30 + g % 15)
FROM """
    + ROWS
)
# One enrolment per row: due ones due within the hour, the rest by g % 10: 0-5 waiting,
# 6-7 exhausted, 8-9 exited.
LOAD_ENROLMENTS = (
    """
INSERT INTO enrolments (id, lead_id, sequence, sequence_version, status, milestone, position,
                        pass_no, exhausted, next_run_at, enrolled_at, milestone_entered_at,
                        exited_at, exit_reason, trigger)
SELECT g, g, :sequence, :version,
       CASE WHEN due THEN 'active' WHEN g % 10 >= 8 THEN 'exited' ELSE 'active' END,
       'awareness', CASE WHEN due THEN 2 WHEN g % 10 >= 6 THEN 5 ELSE 2 END, 1,
       NOT due AND g % 10 IN (6, 7),
       CASE WHEN due THEN :now - interval '1 second' * (g % 3600)
            WHEN g % 10 >= 8 THEN NULL
            ELSE :now + interval '1 second' * (3600 + g % 2592000) END,
       :now - interval '10 days', :now - interval '10 days',
       CASE WHEN NOT due AND g % 10 >= 8 THEN :now - interval '1 day' END,
       CASE WHEN NOT due AND g % 10 >= 8 THEN 'completed (awareness done)' END,
       'event form_submitted'
FROM """
    + ROWS
)


def build_app(url: str, redis_url: str) -> App:
    """The App a scheduler process builds, on a frozen clock so every run sees the same rows."""
    settings = Settings(
        database_url=url,
        redis_url=redis_url,
        workflows_dir=ROOT / "workflows",
        templates_dir=ROOT / "templates",
        public_url="https://nurture.bench.test",
        secret_key="bench-secret",
    )
    return App.create(
        settings,
        clock=FrozenClock(NOW),
        environ={},
        channels={},
        engine=make_engine(url),
        paced=False,
    )


def maintain(engine: Engine, statement: str) -> None:
    """Run VACUUM / ANALYZE, which cannot run inside a transaction."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(statement))


def load(app: App, enrolled: int, due: int, *, only_due: bool) -> None:
    """Bulk-load leads with one enrolment each: all `enrolled` rows, or only the `due` ones."""
    version = app.rt.workflows.sequences[SEQUENCE].version
    k = max(1, enrolled // due)
    params: dict[str, Any] = {
        "now": NOW,
        "n": enrolled,
        "k": k,
        "last": k * due,
        "only_due": only_due,
    }
    with app.engine.begin() as connection:
        connection.execute(text(LOAD_LEADS), params)
        connection.execute(
            text(LOAD_ENROLMENTS), {**params, "sequence": SEQUENCE, "version": version}
        )
        for table in ("leads", "enrolments"):
            connection.execute(
                text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), :n)"), params
            )
    maintain(app.engine, "VACUUM ANALYZE leads, enrolments")


def count_due(app: App) -> int:
    """Enrolments the scheduler should claim now."""
    with app.engine.connect() as connection:
        query = "SELECT count(*) FROM enrolments WHERE status = 'active' AND next_run_at <= :now"
        return int(connection.execute(text(query), {"now": NOW}).scalar_one())


def reset(app: App, broker: RedisBroker) -> None:
    """Clear the leases of the last run and empty the broker's queues."""
    with app.engine.begin() as connection:
        connection.execute(
            text("UPDATE enrolments SET lease_until = NULL WHERE lease_until IS NOT NULL")
        )
    broker.flush_all()


def enqueued(broker: RedisBroker, queue: str) -> int:
    """Ids waiting on a queue of the Redis broker: each message carries a batch of them."""
    messages = broker.client.hvals(f"{broker.namespace}:{queue}.msgs")
    return sum(len(json.loads(message)["args"][0]) for message in messages)


def tick_until_idle(tasks: Tasks, batch: int) -> list[float]:
    """Scheduler passes until one finds nothing due; the seconds each pass took."""
    passes = []
    while True:
        started = time.perf_counter()
        found = tasks.tick(batch)
        passes.append(time.perf_counter() - started)
        if not found:
            return passes


def claim_until_idle(app: App, batch: int) -> int:
    """claim_due_enrolments in transactions until nothing is due; how many it claimed."""
    claimed = 0
    while True:
        with app.sessions.begin() as session:
            ids = claim_due_enrolments(session, NOW, batch)
        claimed += len(ids)
        if not ids:
            return claimed


def rss_kib(field: str) -> int | None:
    """VmRSS (now) or VmHWM (peak) of this process in KiB, where /proc has them."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Case:
    """One database and the scheduler on it, with what its runs measured."""

    name: str
    app: App
    broker: RedisBroker
    tasks: Tasks
    tick: list[float] = field(default_factory=list)
    claim: list[float] = field(default_factory=list)
    traced_kib: list[float] = field(default_factory=list)
    rss_kib: list[float] = field(default_factory=list)
    passes: list[float] = field(default_factory=list)


def open_case(
    name: str, url: str, redis_url: str, args: argparse.Namespace, *, only_due: bool
) -> Case:
    """A fresh database loaded for one case, and a scheduler (Tasks) on a Redis broker."""
    reset_database(url)
    app = build_app(url, redis_url)
    started = time.perf_counter()
    load(app, args.enrolled, args.due, only_due=only_due)
    with app.engine.connect() as connection:
        rows = connection.execute(text("SELECT count(*) FROM enrolments")).scalar_one()
    print(f"{name}: loaded {rows:,} leads and enrolments in {time.perf_counter() - started:.1f}s")
    if count_due(app) != args.due:
        raise RuntimeError(f"{name}: {count_due(app)} due enrolments, expected {args.due}")
    broker = RedisBroker(url=redis_url)
    return Case(name, app, broker, Tasks(broker, app))


def run_once(case: Case, due: int, batch: int) -> None:
    """Time one tick loop (with its RSS growth) and one claim_due_enrolments loop."""
    reset(case.app, case.broker)
    can_reset = reset_peak_rss()
    before = rss_kib("VmRSS")
    started = time.perf_counter()
    case.passes = tick_until_idle(case.tasks, batch)
    case.tick.append(time.perf_counter() - started)
    peak = rss_kib("VmHWM")
    if can_reset and before is not None and peak is not None:
        case.rss_kib.append(peak - before)
    got = enqueued(case.broker, "journeys")
    if got != due:
        raise RuntimeError(f"{case.name}: enqueued {got} enrolments to advance, not {due}")
    reset(case.app, case.broker)
    started = time.perf_counter()
    claimed = claim_until_idle(case.app, batch)
    case.claim.append(time.perf_counter() - started)
    if claimed != due:
        raise RuntimeError(f"{case.name}: claimed {claimed} enrolments, expected {due}")


def trace(case: Case, batch: int) -> None:
    """The tracemalloc peak of one more tick loop (traced apart: tracing slows the timing)."""
    reset(case.app, case.broker)
    tracemalloc.start()
    tick_until_idle(case.tasks, batch)
    case.traced_kib.append(tracemalloc.get_traced_memory()[1] / 1024)
    tracemalloc.stop()


def median(values: list[float]) -> float:
    """The median, or nan when nothing was measured."""
    return statistics.median(values) if values else float("nan")


def explain_claim(app: App, batch: int, *, leased: bool) -> list[str]:
    """EXPLAIN ANALYZE of the exact SQL claim_due_enrolments sends (rolled back afterwards)."""
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FOR UPDATE" in statement:
            captured.append((statement, parameters))

    if leased:
        with app.sessions.begin() as session:  # lease every due row, as after a full pass
            while claim_due_enrolments(session, NOW, 10_000):
                pass
    event.listen(app.engine, "before_cursor_execute", capture)
    try:
        with app.engine.connect() as connection:
            with Session(bind=connection) as session:
                claim_due_enrolments(session, NOW, batch)
            connection.rollback()  # the claim only showed its SQL: undo its leases
            statement, parameters = captured[0]
            explain = "EXPLAIN (ANALYZE, BUFFERS) " + statement
            lines = list(connection.exec_driver_sql(explain, parameters).scalars())
            connection.rollback()
    finally:
        event.remove(app.engine, "before_cursor_execute", capture)
    return lines


def show_plan(title: str, lines: list[str]) -> None:
    """Print a plan and whether the enrolments table is read through an index."""
    print(f"-- {title}")
    for line in lines:
        print("   " + line)
    scans = [line for line in lines if "on enrolments" in line]
    if any("Seq Scan" in line for line in scans):
        print(
            "   !! sequential scan of enrolments: the claim needs an index, e.g.\n"
            "      CREATE INDEX ix_enrolments_due_active ON enrolments (next_run_at)"
            " WHERE status = 'active'"
        )
    elif scans:
        print("   ok: enrolments read through an index")


def main() -> None:
    """Load both databases, alternate runs between them, print the plan and the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--enrolled", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500, help="rows per kind per pass (CLI)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; medians reported")
    parser.add_argument("--url", default=os.environ.get("NURTURE_BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--redis", default=os.environ.get("NURTURE_BENCH_REDIS_URL", DEFAULT_REDIS))
    args = parser.parse_args()
    if not 0 < args.due <= args.enrolled:
        parser.error("--due must be between 1 and --enrolled")
    large_url = make_url(args.url)
    small_url = large_url.set(database=f"{large_url.database}_due")

    large = open_case("large", args.url, args.redis, args, only_due=False)
    small = open_case(
        "small", small_url.render_as_string(hide_password=False), args.redis, args, only_due=True
    )
    show_plan("claim query, fresh", explain_claim(large.app, args.batch, leased=False))
    show_plan(
        "claim query, every due row leased", explain_claim(large.app, args.batch, leased=True)
    )
    for _ in range(args.repeat):
        for case in (large, small):
            run_once(case, args.due, args.batch)
    for case in (large, small):
        trace(case, args.batch)
        case.broker.close()
        case.app.engine.dispose()
        print(
            f"{case.name}: {len(case.passes)} passes of {args.batch}: first"
            f" {case.passes[0] * 1000:.1f} ms, last claiming {case.passes[-2:-1][0] * 1000:.1f} ms,"
            f" final empty {case.passes[-1] * 1000:.1f} ms; peak RSS growth"
            f" {median(case.rss_kib):,.0f} KiB"
        )
    figures = [
        Figure(
            f"claim+enqueue {args.due:,} of {args.enrolled:,} (tick)",
            median(large.tick) * 1000,
            median(small.tick) * 1000,
            "ms, vs only the due rows",
            "ratio <= 1.5",
        ),
        Figure(
            "claim_due_enrolments alone",
            median(large.claim) * 1000,
            median(small.claim) * 1000,
            "ms, vs only the due rows",
            "ratio <= 1.5",
        ),
        Figure(
            "tracemalloc peak of the tick loop",
            median(large.traced_kib),
            median(small.traced_kib),
            "KiB",
            "ratio <= 1.5 (flat)",
        ),
    ]
    report("scheduler_scale", figures)


if __name__ == "__main__":
    main()
