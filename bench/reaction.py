"""Reaction: milliseconds from the HTTP request carrying the event that crosses the SQL threshold
to the signed handoff arriving at a CRM receiver, p50 and p99 over --crossings crossings, while a
background load of events (--load per second) runs through the same API. Goal: p99 under 1 s.

The production shape on one machine: the HTTP API (`create_api` under uvicorn), a Dramatiq
worker (--threads, 8 like `nurture worker`) and a scheduler (a tick a second, like `nurture
scheduler`) each in its own process, Redis as the broker, PostgreSQL, and the test CRM receiver
of tests/crm.py, which checks the signature. Crossings come at random (Poisson) moments, --rate
per second, so the handoffs queue sometimes idles, as in life. --poll-ms sets the worker's
longest idle poll of a queue; --burst makes that many emails due as the crossings start, as when
the send window opens on a backlog, to see handoffs compete with paced sends for worker threads;
--sends-apart gives the sends queue a worker process of its own.

Each crossing lead starts just below the SQL threshold of workflows/scoring.yml,
"(score >= 60 and fit >= 15) or ...": fit 20 (a VP title and 200 employees) plus a form (10) and
three downloads (24) make 54 points; one pricing page view (+7) makes 61 and crosses. Background
leads have no fit, so they never cross: every handoff the receiver sees is a measured crossing.

Baseline, measured under the same load: a bare POST of the same JSON body to a no-op route added
to the same uvicorn server (same client, middleware and thread pool; no auth, validation,
database or broker), plus a bare signed POST of a real handoff document to the same receiver
(`engine.crm.post`). Those two hops are the floor of any design; what nurture adds on top is the
event's transaction, the enqueue, the worker's pickup and the handoff's two transactions.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import func, select, update

from bench.common import Figure, report, reset_database
from bench.ingest import DEFAULT_URL, TYPES
from engine.app import App
from engine.db import make_engine
from engine.delivery.handoff import post as crm_post
from engine.funnel.service import track
from engine.models import Delivery, Enrolment, Lead
from engine.runner.actors import POLL_MS
from engine.runner.scheduler import advance_enrolment
from engine.settings import QUEUES
from tests.channels.servers import Reply, Request, free_port
from tests.crm import CrmReceiver

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
API_KEY = "bench-reaction-api-key-0123456789abcdef"
CRM_SECRET = "bench-crm-secret"
NOOP_PATH = "/bench/noop"
GOOD_FIT = {"title": "VP Marketing", "company_size": 200}  # fit 10 + 10
BELOW_SQL = [
    ("form_submitted", {}),
    *[("content_downloaded", {"title": f"R{i}"}) for i in (1, 2, 3)],
]
CROSSING = ("page_viewed", {"url": "/pricing"})  # +7: 54 -> 61
LOAD_TYPES = [("form_submitted", {}), *TYPES]
WARMUP = 20
PREPARE_BATCH = 100
HELD = "bench: held for the burst"
SCHEDULER_BATCH = 500


# --- The processes under test ----------------------------------------------------------------


def environment(url: str, redis_url: str, crm_url: str, outbox: str) -> dict[str, str]:
    """NURTURE_* settings for the API and worker processes: this database, broker and CRM."""
    return dict(os.environ) | {
        "NURTURE_DATABASE_URL": url,
        "NURTURE_REDIS_URL": redis_url,
        "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
        "NURTURE_TEMPLATES": str(ROOT / "templates"),
        "NURTURE_CRM_WEBHOOK_URL": crm_url,
        "NURTURE_CRM_WEBHOOK_SECRET": CRM_SECRET,
        "NURTURE_EMAIL_CHANNEL": "outbox",
        "NURTURE_SMS_CHANNEL": "outbox",
        "NURTURE_OUTBOX_DIR": outbox,
        "NO_PROXY": "127.0.0.1,localhost",
    }


def serve_api(env: dict[str, str], port: int) -> None:
    """The API process: `create_api` over Redis-backed Tasks, plus the baseline's no-op route."""
    import uvicorn

    from engine.http.api import create_api
    from engine.runner.actors import Tasks, make_broker

    app = App.create(environ=env)
    tasks = Tasks(make_broker(app.settings.redis_url), app)
    api = create_api(app, tasks, api_keys=[API_KEY], environ=env)

    def noop(body: dict[str, Any]) -> dict[str, bool]:
        """Parse the JSON body and answer: the floor of one request to this server."""
        return {"ok": True}

    api.add_api_route(NOOP_PATH, noop, methods=["POST"])
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning")


def run_worker(
    env: dict[str, str], threads: int, poll_ms: int, queues: set[str] | None, stop: ProcessEvent
) -> None:
    """A worker process: the actors of `Tasks` on `queues` (None: all) until `stop` is set."""
    import dramatiq

    from engine.runner.actors import Tasks, make_broker

    app = App.create(environ=env)
    broker = make_broker(app.settings.redis_url)
    Tasks(broker, app)
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=threads, worker_timeout=poll_ms)
    worker.start()
    stop.wait()
    worker.stop()


def run_scheduler(env: dict[str, str], stop: ProcessEvent, interval: float = 1.0) -> None:
    """The scheduler process, as `nurture scheduler`: enqueue due work every `interval` seconds."""
    from engine.runner.actors import Tasks, make_broker

    app = App.create(environ=env)
    tasks = Tasks(make_broker(app.settings.redis_url), app)
    while not stop.is_set():
        started = time.monotonic()
        if tasks.tick(SCHEDULER_BATCH) < SCHEDULER_BATCH:
            stop.wait(max(0.0, interval - (time.monotonic() - started)))


@contextmanager
def running(
    env: dict[str, str], port: int, threads: int, poll_ms: int, sends_apart: bool
) -> Iterator[str]:
    """Start the API, worker(s) and scheduler processes; yield the API's URL once healthy."""
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    split = [set(QUEUES) - {"sends"}, {"sends"}] if sends_apart else [None]
    processes = [
        spawn.Process(target=serve_api, args=(env, port), name="api"),
        *[
            spawn.Process(
                target=run_worker, args=(env, threads, poll_ms, queues, stop), name="worker"
            )
            for queues in split
        ],
        spawn.Process(target=run_scheduler, args=(env, stop), name="scheduler"),
    ]
    for process in processes:
        process.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, processes)
        yield base
    finally:
        stop.set()
        processes[0].terminate()  # uvicorn stops cleanly on SIGTERM
        for process in processes:
            process.join(15)
            if process.is_alive():
                process.kill()


def wait_healthy(base: str, processes: list[Any], timeout: float = 60.0) -> None:
    """Poll /healthz until it answers 200; fail early when a process died."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, trust_env=False, timeout=2) as client:
        while time.monotonic() < deadline:
            dead = [p.name for p in processes if not p.is_alive()]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} process exited during start-up")
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the API at {base} was not healthy within {timeout:.0f}s")


def fresh_redis(url: str) -> None:
    """Drop the broker queues and pacing slots a previous run left in this Redis database."""
    client = redis.Redis.from_url(url)
    for pattern in ("dramatiq:*", "nurture:pace:*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


# --- The CRM receiver and the clients --------------------------------------------------------


class TimedReceiver(CrmReceiver):
    """The test CRM receiver, noting when each lead's first signed handoff arrived."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.arrived: dict[str, float] = {}
        self.documents: list[dict[str, Any]] = []

    def handle(self, request: Request) -> Reply:
        """Check the signature as CrmReceiver does, then note the arrival by lead email."""
        now = time.perf_counter()
        reply = super().handle(request)
        if reply.status == 200:
            document = json.loads(request.body)
            with self._lock:
                self.arrived.setdefault(document["lead"]["email"], now)
                if not self.documents:
                    self.documents.append(document)
        return reply

    def wait_for(self, emails: list[str], timeout: float) -> None:
        """Return when every lead in `emails` arrived, or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(e not in self.arrived for e in emails):
            time.sleep(0.05)


class Clients:
    """One keep-alive HTTP client per thread, authorised with the benchmark's API key."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._local = threading.local()
        self._all: list[httpx.Client] = []

    def get(self) -> httpx.Client:
        """This thread's client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                base_url=self.base,
                headers={"Authorization": f"Bearer {API_KEY}"},
                trust_env=False,
                timeout=30,
            )
            self._local.client = client
            self._all.append(client)
        return client

    def close(self) -> None:
        """Close every thread's client."""
        for client in self._all:
            client.close()


def event_body(email: str, kind: str, properties: dict[str, Any], event_id: str) -> dict[str, Any]:
    """The JSON of one POST /v1/events."""
    return {"id": event_id, "lead": {"email": email}, "type": kind, "properties": properties}


# --- Preparation, load, crossings, baseline --------------------------------------------------


def prepare(env: dict[str, str], emails: list[str], *, hold: bool = False) -> None:
    """Bring each lead to 54 points with fit 20, one pricing page view from SQL.

    The form enrols them in lead-nurture; its due steps run here and the emails they plan count
    as sent, so the leads wait in the sequence as real ones would. With `hold` the emails stay
    planned, held back a day, for `release` to make due at once.
    """
    app = App.create(environ=env, channels={}, paced=False)
    for offset in range(0, len(emails), PREPARE_BATCH):
        with app.sessions.begin() as session:
            for email in emails[offset : offset + PREPARE_BATCH]:
                for kind, properties in BELOW_SQL:
                    track(session, app.rt, {"email": email, **GOOD_FIT}, kind, properties)
            now = app.rt.clock.now()
            due = select(Enrolment.id).where(
                Enrolment.status == "active", Enrolment.next_run_at <= now
            )
            for enrolment_id in list(session.scalars(due)):
                advance_enrolment(session, app.rt, enrolment_id)
            planned = update(Delivery).where(
                Delivery.status == "planned", Delivery.detail.is_(None)
            )
            if hold:
                planned = planned.values(due_at=now + timedelta(days=1), detail=HELD)
            else:
                planned = planned.values(status="sent", sent_at=now, provider="bench")
            session.execute(planned)
    with app.sessions() as session:
        query = select(Lead.stage, func.count()).where(Lead.email.in_(emails)).group_by(Lead.stage)
        stages: dict[str, int] = {stage: count for stage, count in session.execute(query)}
    app.engine.dispose()
    if stages.get("sql"):
        raise RuntimeError(f"preparation already crossed SQL ({stages}): check scoring.yml")


def release(url: str) -> int:
    """Make every held email due now, as when the send window opens on a backlog."""
    engine = make_engine(url)
    with engine.begin() as connection:
        released = connection.execute(
            update(Delivery)
            .where(Delivery.detail == HELD)
            .values(due_at=datetime.now(UTC), detail=None)
        ).rowcount
    engine.dispose()
    return released


@dataclass
class Load:
    """Background events at a steady rate from a few client threads, until stopped."""

    clients: Clients
    rate: float
    leads: int
    threads: int = 4
    sent: int = 0
    failed: int = 0
    started: float = 0.0
    stopped: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Start the client threads; each sends every threads/rate seconds."""
        if self.rate <= 0:
            return
        self.started = time.perf_counter()
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        """Stop sending and wait for the threads."""
        self._stop.set()
        for thread in self._workers:
            thread.join()
        self.stopped = time.perf_counter()

    @property
    def achieved(self) -> float:
        """Events per second actually recorded while the load ran."""
        elapsed = self.stopped - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        interval = self.threads / self.rate
        next_at = time.perf_counter() + index * interval / self.threads
        count = 0
        while not self._stop.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at = max(next_at + interval, time.perf_counter() - interval)
            kind, properties = rng.choice(LOAD_TYPES)
            email = f"load{rng.randrange(self.leads)}@bench.test"
            body = event_body(email, kind, properties, f"load-{index}-{count}")
            count += 1
            try:
                ok = self.clients.get().post("/v1/events", json=body).status_code == 200
            except httpx.HTTPError:
                ok = False
            with self._lock:
                self.sent += ok
                self.failed += not ok


@dataclass
class Crossings:
    """When each crossing request left, when its answer came, and which did not cross."""

    sent: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    not_crossed: list[str] = field(default_factory=list)


def cross(clients: Clients, emails: list[str], rate: float, seed: int) -> Crossings:
    """POST each lead's crossing event at Poisson moments, `rate` per second on average."""
    rng = random.Random(seed)
    result = Crossings()
    lock = threading.Lock()

    def one(email: str) -> None:
        kind, properties = CROSSING
        body = event_body(email, kind, properties, f"cross-{email}")
        started = time.perf_counter()
        try:
            response = clients.get().post("/v1/events", json=body)
            crossed = response.status_code == 200 and response.json()["handoff_id"] is not None
        except httpx.HTTPError:
            crossed = False
        answered = time.perf_counter()
        with lock:
            result.sent[email], result.answered[email] = started, answered
            if not crossed:
                result.not_crossed.append(email)

    with ThreadPoolExecutor(max_workers=8) as pool:
        at = time.perf_counter()
        for email in emails:
            at += rng.expovariate(rate)
            time.sleep(max(0.0, at - time.perf_counter()))
            pool.submit(one, email)
    return result


@dataclass
class Floor:
    """Seconds of each baseline sample: the no-op API POST, the CRM POST, and both."""

    api: list[float] = field(default_factory=list)
    crm: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)


def baseline(clients: Clients, receiver: TimedReceiver, samples: int) -> Floor:
    """Time a no-op POST to the API, then a signed CRM POST of a real handoff document."""
    document = receiver.documents[0]
    body = event_body("baseline@bench.test", *CROSSING, "baseline")
    client = clients.get()
    floor = Floor()
    for index in range(samples):
        started = time.perf_counter()
        client.post(NOOP_PATH, json=body).raise_for_status()
        answered = time.perf_counter()
        status = crm_post(
            receiver.endpoint, CRM_SECRET, f"baseline-{index}", document, datetime.now(UTC)
        )
        finished = time.perf_counter()
        floor.api.append(answered - started)
        floor.crm.append(finished - answered)
        floor.total.append(finished - started)
        if status != 200:
            raise RuntimeError(f"the CRM receiver answered {status} to the baseline POST")
    return floor


def ms(values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of seconds, in milliseconds."""
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(0, min(len(ordered), rank) - 1)] * 1000


# --- The run ---------------------------------------------------------------------------------


def main() -> None:
    """Prepare leads, start the processes and the load, measure baseline and crossings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crossings", type=int, default=1000, help="measured SQL crossings")
    parser.add_argument("--rate", type=float, default=10.0, help="crossings per second (Poisson)")
    parser.add_argument("--load", type=float, default=20.0, help="background events per second")
    parser.add_argument("--load-leads", type=int, default=1000, help="leads the load spreads over")
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        help="emails made due at once as the crossings start (a send window opening)",
    )
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    parser.add_argument(
        "--sends-apart",
        action="store_true",
        help="run the sends queue in a worker process of its own (a second --threads pool)",
    )
    parser.add_argument(
        "--poll-ms",
        type=int,
        default=POLL_MS,
        help=f"Dramatiq worker_timeout, the longest idle poll of a queue ({POLL_MS}: as shipped)",
    )
    parser.add_argument("--url", default=os.environ.get("NURTURE_BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--redis", default=os.environ.get("NURTURE_BENCH_REDIS_URL", DEFAULT_REDIS))
    args = parser.parse_args()
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"

    reset_database(args.url)
    fresh_redis(args.redis)
    warmup = [f"warm{i}@bench.test" for i in range(WARMUP)]
    measured = [f"cross{i}@bench.test" for i in range(args.crossings)]
    with TimedReceiver(CRM_SECRET) as receiver, tempfile.TemporaryDirectory() as outbox:
        env = environment(args.url, args.redis, receiver.endpoint, outbox)
        prepare(env, warmup + measured)
        if args.burst:
            prepare(env, [f"burst{i}@bench.test" for i in range(args.burst)], hold=True)
        with running(env, free_port(), args.threads, args.poll_ms, args.sends_apart) as base:
            clients = Clients(base)
            load = Load(clients, args.load, args.load_leads)
            load.start()
            try:
                cross(clients, warmup, args.rate, seed=1)
                receiver.wait_for(warmup, timeout=30)
                if not receiver.documents:
                    raise RuntimeError("no handoff reached the CRM receiver during the warm-up")
                floor = baseline(clients, receiver, args.crossings)
                release(args.url)
                result = cross(clients, measured, args.rate, seed=2)
                receiver.wait_for(measured, timeout=30)
            finally:
                load.stop()
                clients.close()
    figures = summarise(args, result, receiver.arrived, floor, load)
    report("reaction", figures)


def summarise(
    args: argparse.Namespace,
    result: Crossings,
    arrived: dict[str, float],
    floor: Floor,
    load: Load,
) -> list[Figure]:
    """Latency percentiles in milliseconds beside the baseline's, and the context figures."""
    latencies = [arrived[e] - t for e, t in result.sent.items() if e in arrived]
    answers = [result.answered[e] - t for e, t in result.sent.items()]
    after = [arrived[e] - result.answered[e] for e in result.sent if e in arrived]
    if not latencies:
        raise RuntimeError("no measured handoff reached the CRM receiver")
    burst = f", {args.burst} emails due at once" if args.burst else ""
    workers = "sends in a worker of their own, " if args.sends_apart else ""
    print(
        f"{len(result.sent)} crossings at {args.rate:g}/s (Poisson) under {load.achieved:.1f} "
        f"background events/s{burst}; {workers}worker {args.threads} threads, idle poll up to "
        f"{args.poll_ms} ms; {len(result.not_crossed)} requests did not cross; "
        f"machine load average {os.getloadavg()[0]:.1f}"
    )
    return [
        Figure("reaction p50", ms(latencies, 50), ms(floor.total, 50), "ms", "(no goal)"),
        Figure("reaction p99", ms(latencies, 99), ms(floor.total, 99), "ms", "p99 < 1000 ms"),
        Figure("  of which the event request p50", ms(answers, 50), ms(floor.api, 50), "ms", ""),
        Figure("  of which the event request p99", ms(answers, 99), ms(floor.api, 99), "ms", ""),
        Figure("  of which answer to CRM p50", ms(after, 50), ms(floor.crm, 50), "ms", ""),
        Figure("  of which answer to CRM p99", ms(after, 99), ms(floor.crm, 99), "ms", ""),
        Figure("handoffs arrived", len(latencies), len(result.sent), "handoffs", "all"),
        Figure("background load", load.achieved, args.load, "events/s", "(context)"),
    ]


if __name__ == "__main__":
    main()
