"""Dashboard pages over a large base: the p95 time to answer the overview, a sequence, a lead
page, the handoffs list and a search, over the demo's data cloned to `--leads` leads on
PostgreSQL, beside `/healthz` through the same app (one trivial query). Goal: every page's
p95 under 300 ms at 100,000 leads. A sequence's figures are counted over its whole history at
most once a minute; the slowest such count is reported too.

The base is real: `--seed-leads` demo personas played through the engine for 60 days, then
every row copied (ids, addresses and delivery ids made unique) until the leads number
`--leads`, so the pages meet the shapes and proportions the engine makes.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from bench.common import Figure, report, reset_database
from engine.app import App
from engine.db import make_engine
from engine.http.api import create_api
from engine.models import Handoff, Lead
from engine.runner.demo import persona
from engine.runner.simulation import Simulation
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nurture_bench"
START = datetime(2026, 3, 2, 9, tzinfo=UTC)
GOAL_MS = 300.0

# Each copied table: its integer key (None for deliveries, keyed by text) and how each
# column of a copy is made from the original's (`k` is the copy's number, 1, 2, ...).
COPIES: dict[str, dict[str, str]] = {
    "leads": {
        "id": "id + k * :leads",
        "email": "replace(email, '@', '+' || k || '@')",
        "email_key": "replace(email_key, '@', '+' || k || '@')",
        "external_id": "external_id || ':' || k",
        "phone": "NULL",
    },
    "events": {
        "id": "id + k * :events",
        "lead_id": "lead_id + k * :leads",
        "idempotency_key": "idempotency_key || ':' || k",
        "properties": (
            "CASE WHEN properties ? 'delivery_id' THEN jsonb_set(properties, '{delivery_id}', "
            "to_jsonb(md5((properties->>'delivery_id') || ':' || k)::uuid::text)) "
            "ELSE properties END"
        ),
    },
    "score_ledger": {
        "id": "id + k * :score_ledger",
        "lead_id": "lead_id + k * :leads",
        "event_id": "event_id + k * :events",
    },
    "stage_changes": {"id": "id + k * :stage_changes", "lead_id": "lead_id + k * :leads"},
    "enrolments": {"id": "id + k * :enrolments", "lead_id": "lead_id + k * :leads"},
    "milestone_visits": {
        "id": "id + k * :milestone_visits",
        "enrolment_id": "enrolment_id + k * :enrolments",
    },
    "deliveries": {
        "id": "md5(id || ':' || k)::uuid::text",
        "enrolment_id": "enrolment_id + k * :enrolments",
        "lead_id": "lead_id + k * :leads",
    },
    "handoffs": {"id": "id + k * :handoffs", "lead_id": "lead_id + k * :leads"},
}


def settings(url: str, workdir: Path) -> Settings:
    """The demo's workflows and templates on the benchmark database."""
    return Settings.from_env(
        {
            "NURTURE_DATABASE_URL": url,
            "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
            "NURTURE_TEMPLATES": str(ROOT / "templates"),
            "NURTURE_OUTBOX_DIR": str(workdir / "outbox"),
        }
    )


def play(url: str, leads: int, workdir: Path) -> None:
    """`leads` demo personas through the engine for 60 days, on the emptied database."""
    reset_database(url)
    rng = random.Random(7)
    script = [e for i in range(leads) for e in persona(rng, i, START).events]
    sim = Simulation(settings(url, workdir), START, workdir, engine=make_engine(url))
    try:
        sim.run(script, START + timedelta(days=60), resolution=timedelta(hours=1))
    finally:
        sim.close()


def grow(engine: Engine, copies: int) -> None:
    """Copy every row `copies` times with unique keys, then bring the id sequences past them."""
    with engine.begin() as connection:
        sizes = {
            table: int(
                connection.execute(text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar_one()
            )
            for table, columns in COPIES.items()
            if "id" in columns and table != "deliveries"
        }
        for table, changed in COPIES.items():
            names = [
                row[0]
                for row in connection.execute(
                    text(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = :t ORDER BY ordinal_position"
                    ),
                    {"t": table},
                )
            ]
            made = ", ".join(changed.get(name, name) for name in names)
            connection.execute(
                text(
                    f"INSERT INTO {table} ({', '.join(names)}) SELECT {made} "
                    f"FROM {table}, generate_series(1, :copies) AS k"
                ),
                {"copies": copies, **sizes},
            )
        for table in sizes:
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE"))


def p95_ms(client: TestClient, paths: list[str], rounds: int) -> float:
    """The 95th percentile of the answer times of `paths`, each fetched `rounds` times."""
    times = []
    for _ in range(rounds):
        for path in paths:
            started = time.perf_counter()
            answer = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, f"{path}: {answer.status_code}"
    return statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]


def main() -> None:
    """Build the base, then time each page beside /healthz."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=100_000, help="leads in the base")
    parser.add_argument("--seed-leads", type=int, default=1000, help="personas played")
    parser.add_argument("--rounds", type=int, default=20, help="fetches of each page")
    parser.add_argument("--url", default=os.environ.get("NURTURE_BENCH_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-dashboard-"))
    started = time.perf_counter()
    play(args.url, args.seed_leads, workdir)
    engine = make_engine(args.url)
    grow(engine, max(args.leads // args.seed_leads - 1, 0))
    print(f"base built in {time.perf_counter() - started:.0f} s", flush=True)
    app = App.create(settings(args.url, workdir), environ={}, engine=engine)
    client = TestClient(create_api(app, None, api_keys=[], allow_no_auth=True, environ={}))
    with app.sessions() as s:
        total = int(s.scalar(select(func.count()).select_from(Lead)) or 0)
        rng = random.Random(1)
        top = int(s.scalar(select(func.max(Lead.id))) or 1)
        leads = [f"/leads/{rng.randint(1, top)}" for _ in range(10)]
        hot = s.scalars(select(Handoff.lead_id).order_by(Handoff.id.desc()).limit(5)).all()
    print(f"{total:,} leads", flush=True)
    last = START + timedelta(days=60)
    period = f"start={(last - timedelta(days=30)).date()}&end={last.date()}"
    pages = {
        "overview (30 days)": [f"/?{period}"],
        "sequence page": ["/sequences/lead-nurture"],
        "lead page": leads + [f"/leads/{lead_id}" for lead_id in hot],
        "handoffs": ["/handoffs"],
        "search": ["/leads?q=tanaka"],
    }
    baseline = p95_ms(client, ["/healthz"], args.rounds * 5)
    # the first view of each sequence counts its whole history; later ones within a minute reuse it
    afresh = max(p95_ms(client, [f"/sequences/{name}"], 1) for name in app.rt.workflows.sequences)
    figures = [
        Figure(
            f"{name} p95", p95_ms(client, paths, args.rounds), baseline, "ms", f"< {GOAL_MS:.0f} ms"
        )
        for name, paths in pages.items()
    ]
    figures.append(Figure("sequence page counted afresh (slowest)", afresh, baseline, "ms", "-"))
    report("dashboard", figures)
    app.engine.dispose()


if __name__ == "__main__":
    main()
