"""Dispatch: deliveries sent per second by real Dramatiq workers over Redis, through the whole
send path (the `send_delivery` actor: row lock, guards, render, planned -> sending -> sent) to a
channel that discards the message, beside a no-op actor on the same broker, queue and worker
(same thread count). Goal: the send path at least half the no-op rate (ratio >= 0.5).

Leads are enrolled in the shipped lead-nurture sequence by the engine itself (a form_submitted
event, then the first step planned: the `welcome` email). For speed, the engine prepares the
warm-up leads and the N measured ones are SQL copies of the first (lead, event, enrolment,
planned delivery, with new ids and addresses); `--prepare engine` runs all N through the engine.
Every lead has one planned delivery, so no frequency cap can defer it. A frozen clock on a Monday
at 10:00 UTC keeps leads in UTC inside the mon-fri 09:00-18:00 send window. Wall time runs from
the first enqueue until every delivery is in a final state in the database (polled), or until
the no-op actor has run N times. Pacing is off unless `--pace-rate` is given (then the Redis
pacer at that rate). No-op and send runs alternate in `--rounds`, so a neighbour's load on a
shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Connection, func, select, text

from bench.common import Figure, report, reset_database
from channels.base import (
    EMAIL,
    SENT,
    SMS,
    Channel,
    EmailMessage,
    SendResult,
    SmsMessage,
    check_delivery_id,
    email_headers,
)
from engine.app import App
from engine.clock import FrozenClock
from engine.db import make_engine
from engine.funnel.service import track
from engine.models import Base, Delivery, Enrolment, Event, Lead
from engine.runner.actors import CHUNK, Tasks
from engine.runner.scheduler import advance_enrolment
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nurture_bench_dispatch"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
# A Monday, 10:00 UTC: inside every shipped send window for leads in UTC.
NOW = datetime(2026, 3, 2, 10, tzinfo=UTC)
FINAL = ("sent", "failed", "skipped", "unknown")
PREPARE_BATCH = 250
POLL = 0.01  # seconds between database polls while waiting for the send path


class DiscardChannel(Channel):
    """An adapter that checks a message like the console adapter does, then drops it."""

    name = "discard"

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.sent = 0
        self._lock = threading.Lock()

    def send(self, message: EmailMessage | SmsMessage) -> SendResult:
        """Validate the delivery id (and email headers), count the message, send nothing."""
        delivery_id = check_delivery_id(message.delivery_id)
        if self.channel == EMAIL and isinstance(message, EmailMessage):
            email_headers(message)
        elif not (self.channel == SMS and isinstance(message, SmsMessage)):
            raise self.wrong_message(message)
        with self._lock:
            self.sent += 1
        return SendResult(self.name, f"discard-{delivery_id}", SENT)


class Countdown:
    """A thread-safe count of finished messages that signals when a target is reached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = 0
        self._target = 0
        self.reached = threading.Event()

    def expect(self, target: int) -> None:
        """Start counting afresh towards `target` messages."""
        with self._lock:
            self._done, self._target = 0, target
            self.reached.clear()

    def tick(self) -> None:
        """Count one message; set `reached` on the last one."""
        with self._lock:
            self._done += 1
            if self._done >= self._target:
                self.reached.set()


def build_app(url: str, redis_url: str, threads: int, pace_rate: float | None) -> App:
    """The App a worker process would build, with the discarding channel and a frozen clock."""
    settings = Settings(
        database_url=url,
        redis_url=redis_url,
        workflows_dir=ROOT / "workflows",
        templates_dir=ROOT / "templates",
        public_url="https://nurture.bench.test",
        secret_key="bench-secret",
    )
    app = App.create(
        settings,
        clock=FrozenClock(NOW),
        environ={},
        channels={EMAIL: DiscardChannel(EMAIL), SMS: DiscardChannel(SMS)},
        engine=make_engine(url, pool_size=max(5, threads + 2)),
        paced=pace_rate is not None,
    )
    if pace_rate is not None:
        rates = {EMAIL: pace_rate, SMS: pace_rate}
        app.rt = replace(app.rt, send=replace(app.rt.send, rates=rates))
    return app


def prepare(app: App, first: int, count: int) -> list[str]:
    """Enrol `count` new leads through the engine and plan their first step; the delivery ids."""
    planned: list[str] = []
    for offset in range(first, first + count, PREPARE_BATCH):
        with app.sessions.begin() as session:
            for i in range(offset, min(offset + PREPARE_BATCH, first + count)):
                lead = {"email": f"lead{i}@bench.test", "first_name": f"Lee{i}", "timezone": "UTC"}
                result = track(session, app.rt, lead, "form_submitted", event_id=f"form-{i}")
                for enrolment_id in result.due_enrolments:
                    planned.extend(advance_enrolment(session, app.rt, enrolment_id))
    if len(planned) != count:
        raise RuntimeError(
            f"expected {count} planned deliveries, the engine planned {len(planned)}"
        )
    return planned


def copy_rows(
    connection: Connection, model: type[Base], where: str, values: dict[str, str | None], count: int
) -> None:
    """Insert `count` copies of the `where` rows, `values` overriding columns by SQL over g."""
    table = model.__tablename__
    # A column given as None is left to its default (a serial id); the rest are copied as is.
    columns = [c.name for c in model.__table__.columns if values.get(c.name, "") is not None]
    chosen = ", ".join(values.get(c) or f'{table}."{c}"' for c in columns)
    names = ", ".join(f'"{c}"' for c in columns)
    connection.execute(
        text(
            f"INSERT INTO {table} ({names}) SELECT {chosen}"
            f" FROM {table}, generate_series(1, :n) AS g WHERE {where}"
        ),
        {"n": count},
    )


def copy_leads(app: App, seed: str, count: int) -> list[str]:
    """Copy the seed delivery's lead, events, enrolment and delivery `count` times in SQL."""
    with app.engine.begin() as connection:
        lead_id, enrolment_id = connection.execute(
            select(Delivery.lead_id, Delivery.enrolment_id).where(Delivery.id == seed)
        ).one()
        lead = connection.execute(text("SELECT max(id) FROM leads")).scalar_one()
        enrolment = connection.execute(text("SELECT max(id) FROM enrolments")).scalar_one()
        copy_rows(
            connection,
            Lead,
            f"id = {lead_id}",
            {
                "id": f"{lead} + g",
                "email": "'copy' || g || '@bench.test'",
                "email_key": "'copy' || g || '@bench.test'",
                "first_name": "'Lee' || g",
            },
            count,
        )
        copy_rows(
            connection,
            Event,
            f"lead_id = {lead_id}",
            {"id": None, "lead_id": f"{lead} + g", "idempotency_key": "idempotency_key || g"},
            count,
        )
        copy_rows(
            connection,
            Enrolment,
            f"id = {enrolment_id}",
            {"id": f"{enrolment} + g", "lead_id": f"{lead} + g"},
            count,
        )
        copy_rows(
            connection,
            Delivery,
            f"id = '{seed}'",
            {
                "id": "gen_random_uuid()::text",
                "enrolment_id": f"{enrolment} + g",
                "lead_id": f"{lead} + g",
            },
            count,
        )
        for table in ("leads", "enrolments"):
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )
        ids = connection.execute(
            select(Delivery.id).where(Delivery.lead_id > lead).order_by(Delivery.lead_id)
        )
        return list(ids.scalars())


def statuses(app: App) -> Counter[str]:
    """How many deliveries are in each status."""
    with app.sessions.begin() as session:
        rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        return Counter({str(status): n for status, n in rows})


def run_sends(
    app: App, actor: dramatiq.Actor[[list[str]], None], ids: list[str], timeout: float
) -> float:
    """Enqueue the ids as the scheduler does, in messages of CHUNK; seconds until every
    delivery is final."""
    before = statuses(app)
    target = sum(before[s] for s in FINAL) + len(ids)
    started = time.perf_counter()
    for offset in range(0, len(ids), CHUNK):
        actor.send(ids[offset : offset + CHUNK])
    while True:
        counts = statuses(app)
        if sum(counts[s] for s in FINAL) >= target:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"deliveries not final after {timeout:.0f}s: {dict(counts)}")
        time.sleep(POLL)


def run_noops(
    actor: dramatiq.Actor[[str], None], countdown: Countdown, count: int, timeout: float
) -> float:
    """Enqueue `count` no-op messages; seconds until the worker has run every one."""
    countdown.expect(count)
    started = time.perf_counter()
    for i in range(count):
        actor.send(f"noop-{i}")
    if not countdown.reached.wait(timeout):
        raise TimeoutError(f"no-op messages not all processed after {timeout:.0f}s")
    return time.perf_counter() - started


def main() -> None:
    """Prepare the deliveries, then time the no-op actor and the send path on one worker."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8, help="worker threads (CLI default: 8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of no-op and sends")
    parser.add_argument(
        "--prepare", choices=("copy", "engine"), default="copy", help="how to make the N leads"
    )
    parser.add_argument(
        "--pace-rate", type=float, default=None, help="messages/s per sender; default: pacing off"
    )
    parser.add_argument("--url", default=os.environ.get("NURTURE_BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--redis", default=os.environ.get("NURTURE_BENCH_REDIS_URL", DEFAULT_REDIS))
    args = parser.parse_args()
    warmup = 2 * args.threads
    timeout = max(60.0, args.deliveries / 20)

    reset_database(args.url)
    app = build_app(args.url, args.redis, args.threads, args.pace_rate)
    started = time.perf_counter()
    warm_ids = prepare(app, 0, warmup)
    if args.prepare == "engine":
        ids = prepare(app, warmup, args.deliveries)
    else:
        ids = copy_leads(app, warm_ids[0], args.deliveries)
    with app.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    print(
        f"prepared {len(ids)} planned deliveries ({args.prepare}) in"
        f" {time.perf_counter() - started:.1f}s"
    )

    broker = RedisBroker(url=args.redis)
    tasks = Tasks(broker, app)
    countdown = Countdown()

    @dramatiq.actor(actor_name="bench_noop", queue_name="sends", broker=broker, max_retries=0)
    def noop(payload: str) -> None:
        """The baseline: a message taken off the `sends` queue that does nothing."""
        countdown.tick()

    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=args.threads, worker_timeout=100)
    worker.start()
    noop_seconds = send_seconds = 0.0
    try:
        run_noops(noop, countdown, warmup, timeout)
        run_sends(app, tasks.send_deliveries, warm_ids, timeout)
        for r in range(args.rounds):
            chunk = ids[r :: args.rounds]
            noop_seconds += run_noops(noop, countdown, len(chunk), timeout)
            send_seconds += run_sends(app, tasks.send_deliveries, chunk, timeout)
    finally:
        worker.stop()
        broker.close()
    counts = statuses(app)
    sent = sum(c.sent for c in app.channels.values())  # type: ignore[attr-defined]
    print(f"deliveries by status: {dict(counts)}; messages the channel took: {sent}")
    if counts["sent"] != args.deliveries + warmup:
        raise RuntimeError(f"not every delivery was sent: {dict(counts)}")
    pacing = "pacing off" if args.pace_rate is None else f"paced at {args.pace_rate:g}/s"
    report(
        "dispatch",
        [
            Figure(
                f"send_delivery, {args.threads} threads, {pacing}",
                args.deliveries / send_seconds,
                args.deliveries / noop_seconds,
                "deliveries/s vs no-op messages/s",
                "ratio >= 0.5",
            )
        ],
    )
    app.engine.dispose()


if __name__ == "__main__":
    main()
