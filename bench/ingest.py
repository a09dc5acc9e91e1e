"""Ingest: events per second through the full event path (store, dedupe, score, ledger, stage,
milestone triggers), one per transaction and in batches of 500, beside the same events written
as bare inserts on the same database. Goal: the per-event path within 2x of the bare insert."""

from __future__ import annotations

import argparse
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from bench.common import Figure, report, reset_database
from engine.clock import FrozenClock
from engine.db import make_engine, make_sessionmaker
from engine.funnel.service import NewEvent, record, track
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nurture_bench"
TYPES = [
    ("content_downloaded", {"title": "Report"}),
    ("page_viewed", {"url": "/pricing"}),
    ("email_opened", {}),
    ("email_clicked", {"url": "/blog"}),
    ("page_viewed", {"url": "/"}),
]


def fresh_database(url: str) -> None:
    """The emptied, migrated benchmark database plus the bare-insert table of the baseline."""
    reset_database(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS bench_events"))
        connection.execute(
            text(
                "CREATE TABLE bench_events (id serial primary key, lead_id int, type varchar(64), "
                "properties jsonb, occurred_at timestamptz, received_at timestamptz, "
                "idempotency_key varchar(200) unique, source varchar(32))"
            )
        )
    engine.dispose()


def events(count: int, leads: int, seed: int) -> list[tuple[str, str, dict[str, str], datetime]]:
    """(email, type, properties, time) for `count` events spread over `leads` leads."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, 9, tzinfo=UTC)
    return [
        (
            f"lead{rng.randrange(leads)}@bench.test",
            *rng.choice(TYPES),
            start + timedelta(seconds=i * 7),
        )
        for i in range(count)
    ]


def main() -> None:
    """Run both paths on the same database and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--leads", type=int, default=1000)
    parser.add_argument("--url", default=os.environ.get("NURTURE_BENCH_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    fresh_database(args.url)
    engine = make_engine(args.url)
    sessions = make_sessionmaker(engine)
    workflows = load_workflows(ROOT / "workflows", _names("email"), _names("sms"))
    clock = FrozenClock(datetime(2026, 3, 2, 9, tzinfo=UTC))
    rt = Runtime(workflows, clock)
    batch = 500

    def nurture(items: list, per_transaction: int, tag: str) -> float:  # type: ignore[type-arg]
        """The engine's own path: `track` for one event, `record` for a batch in one pass."""
        started = time.perf_counter()
        for offset in range(0, len(items), per_transaction):
            chunk = items[offset : offset + per_transaction]
            clock.set(max(clock.now(), chunk[-1][3]))
            with sessions.begin() as s:
                if per_transaction == 1:
                    email, kind, props, at = chunk[0]
                    track(
                        s,
                        rt,
                        {"email": email},
                        kind,
                        props,
                        occurred_at=at,
                        event_id=tag + str(offset),
                    )
                    continue
                record(
                    s,
                    rt,
                    [
                        NewEvent({"email": email}, kind, props, at, f"{tag}-{offset + i}")
                        for i, (email, kind, props, at) in enumerate(chunk)
                    ],
                )
        return len(items) / (time.perf_counter() - started)

    def bare(items: list, per_transaction: int, tag: str) -> float:  # type: ignore[type-arg]
        statement = text(
            "INSERT INTO bench_events (lead_id, type, properties, occurred_at, received_at, "
            "idempotency_key, source) VALUES (:lead, :type, cast(:props as jsonb), :at, :at, "
            ":key, 'bench') ON CONFLICT (idempotency_key) DO NOTHING"
        )
        started = time.perf_counter()
        for offset in range(0, len(items), per_transaction):
            rows = [
                {
                    "lead": hash(e) % 1000,
                    "type": k,
                    "props": "{}",
                    "at": at,
                    "key": f"{tag}-{offset + i}",
                }
                for i, (e, k, _, at) in enumerate(items[offset : offset + per_transaction])
            ]
            with engine.begin() as connection:
                connection.execute(statement, rows)
        return len(items) / (time.perf_counter() - started)

    single = events(args.events, args.leads, seed=1)
    batched = events(args.events, args.leads, seed=2)
    figures = [
        Figure(
            "one event per transaction",
            nurture(single, 1, "a"),
            bare(single, 1, "a"),
            "events/s",
            "ratio >= 0.5",
        ),
        Figure(
            f"batches of {batch}",
            nurture(batched, batch, "b"),
            bare(batched, batch, "b"),
            "events/s",
            "ratio >= 0.2",
        ),
    ]
    report("ingest", figures)
    engine.dispose()


def _names(channel: str) -> set[str]:
    from engine.delivery.rendering import Renderer

    renderer = Renderer(ROOT / "templates")
    return renderer.email_templates() if channel == "email" else renderer.sms_templates()


if __name__ == "__main__":
    main()
