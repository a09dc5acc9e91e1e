"""Soak: the production shape on loopback for a bounded time, watched for slowdown, errors and
memory growth.

Running: the real HTTP API (`create_api`, uvicorn on a free port in a thread), a scheduler
thread (`Tasks.tick` every second, as `nurture scheduler`), Dramatiq worker processes over a
Redis broker (a namespace of its own, removed afterwards), PostgreSQL (emptied first), the
outbox channel in a temp dir, and sending paced as configured (Redis pacer; `--unpaced` lifts
the provider rates, which otherwise cap sends/s once a backlog builds up). Load generator
threads post single events with idempotency ids for a pool of leads as fast as the API takes
them. The leads' time zones are chosen among those whose local time is inside the sequences'
send windows now, so sends go out during the run instead of waiting for office hours.

The first tenth of the run warms up (connection pools, statement caches, the first leads) and
is left out. Figures, each as value beside baseline:
- events/s accepted and sends/s handled (deliveries reaching sent, failed, skipped or unknown)
  in the second half of the measured time beside the first half: well below 1 is a slowdown;
- events accepted beside events posted (ratio 1: every request answered 2xx);
- errors (non-2xx answers, failed requests, failed or unknown deliveries, worker errors logged)
  beside everything attempted (ratio: the error share; the goal is none);
- resident memory at the end beside the start (after the warm-up), of the API process (which
  also runs the load generator and the scheduler) and of the worker processes (summed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import redis
import uvicorn
from sqlalchemy import func, select

from bench.common import Figure, report, reset_database
from engine.app import App
from engine.clock import SystemClock
from engine.delivery.pacing import rate_for
from engine.http.api import create_api
from engine.models import Delivery, Handoff
from engine.runner.actors import Tasks
from engine.settings import Settings
from engine.workflow.windows import next_open_slot

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nurture_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
API_KEY = "bench-soak-key-0123456789-0123456789"
WARMUP = 0.1  # share of the run before the first sample: pools, caches, first leads
FINAL = ("sent", "failed", "skipped", "unknown")
ERRORS = ("failed", "unknown")
ZONES = [
    "Pacific/Honolulu",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Sao_Paulo",
    "Atlantic/Azores",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Athens",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
]
EVENTS: list[tuple[str, dict[str, Any], float]] = [  # type, properties, weight
    ("content_downloaded", {"title": "The 2026 Benchmark Report"}, 0.25),
    ("form_submitted", {"form": "contact"}, 0.15),
    ("page_viewed", {"url": "https://acme.test/pricing"}, 0.25),
    ("email_opened", {}, 0.2),
    ("email_clicked", {"url": "https://acme.test/blog"}, 0.1),
    ("demo_requested", {}, 0.05),
]
TITLES = ["VP Marketing", "Head of Growth", "Marketing Manager", "Analyst", "Founder"]


@dataclass
class Tally:
    """Requests made by the load generator, shared by its threads."""

    posted: int = 0
    accepted: int = 0
    rejected: int = 0  # answered, but not 2xx
    failed: int = 0  # no answer: connection error or timeout
    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int | None) -> None:
        """Count one request by its answer (None: no answer)."""
        with self.lock:
            self.posted += 1
            if status is None:
                self.failed += 1
            elif 200 <= status < 300:
                self.accepted += 1
            else:
                self.rejected += 1
                self.statuses[status] += 1


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MB (Linux /proc); 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_zones(app: App, seconds: float) -> list[str]:
    """Time zones in which every sequence's send window is open now and at the end of the run."""
    windows = [s.send.window for s in app.rt.workflows.sequences.values() if s.send.window]
    now = SystemClock().now()
    moments = [now, now + timedelta(seconds=seconds)]

    def open_in(zone: str, chosen: list[Any]) -> bool:
        tz = ZoneInfo(zone)
        return all(next_open_slot(m, tz, w, None) == m for m in moments for w in chosen)

    for chosen in (windows, windows[:1]):
        zones = [z for z in ZONES if open_in(z, chosen)]
        if zones:
            return zones
    print("no zone is inside a send window now: sends will be deferred", file=sys.stderr)
    return ZONES


def lead_pool(count: int, zones: list[str], seed: int) -> list[dict[str, Any]]:
    """`count` leads with identities and attributes, some with a phone and SMS consent."""
    rng = random.Random(seed)
    pool = []
    for i in range(count):
        lead: dict[str, Any] = {
            "email": f"soak{i}@soak{i % 97}.test",
            "first_name": f"Lead{i}",
            "company": f"Company {i % 97}",
            "title": rng.choice(TITLES),
            "timezone": rng.choice(zones),
        }
        if rng.random() < 0.4:
            lead |= {"phone": f"+1415{2_000_000 + i:07d}", "sms_consent": True}
        pool.append(lead)
    return pool


def generate(
    base_url: str, pool: list[dict[str, Any]], tally: Tally, stop: threading.Event, seed: int
) -> None:
    """Post single events for random leads of the pool until `stop` is set."""
    rng = random.Random(seed)
    kinds = [(t, p) for t, p, _ in EVENTS]
    weights = [w for _, _, w in EVENTS]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30, trust_env=False) as client:
        while not stop.is_set():
            kind, properties = rng.choices(kinds, weights)[0]
            body = {
                "id": uuid.uuid4().hex,
                "lead": rng.choice(pool),
                "type": kind,
                "properties": properties,
            }
            try:
                status: int | None = client.post("/v1/events", json=body).status_code
            except httpx.HTTPError:
                status = None
            tally.add(status)


def settings_for(url: str, redis_url: str) -> Settings:
    """Settings of every process of the soak: the shipped workflows, these services."""
    return Settings.from_env(
        {
            "NURTURE_DATABASE_URL": url,
            "NURTURE_REDIS_URL": redis_url,
            "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
            "NURTURE_TEMPLATES": str(ROOT / "templates"),
        }
    )


def run_worker(args: argparse.Namespace) -> None:
    """A worker process: Dramatiq over the soak's broker namespace until SIGTERM."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = App.create(
        settings_for(args.url, args.redis_url),
        environ={"NURTURE_OUTBOX_DIR": args.outbox},
        paced=not args.unpaced,
    )
    broker = RedisBroker(url=args.redis_url, namespace=args.namespace)
    Tasks(broker, app)
    worker = dramatiq.Worker(broker, worker_threads=args.threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop()
    broker.close()


@contextlib.contextmanager
def broker_namespace(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this run's broker; its keys are deleted afterwards."""
    namespace = f"nurture-soak-{uuid.uuid4().hex[:8]}"
    try:
        yield namespace
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
        client.close()


@contextlib.contextmanager
def serving(api: Any) -> Iterator[str]:
    """The API under uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on port {port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def working(
    args: argparse.Namespace, namespace: str, outbox: Path, logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes, each consuming once it says so; stopped with SIGTERM afterwards."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(args.workers):
            command = [sys.executable, "-m", "bench.soak", "--worker-child"]
            command += ["--url", args.url, "--redis-url", args.redis_url]
            command += ["--namespace", namespace, "--outbox", str(outbox)]
            command += ["--threads", str(args.threads)] + (["--unpaced"] if args.unpaced else [])
            with (logs / f"worker{index}.log").open("w") as stderr:
                processes.append(
                    subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
                )
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"worker {process.pid} did not start; see {logs}")
        yield processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def scheduling(tasks: Tasks, interval: float = 1.0) -> Iterator[None]:
    """The loop of `nurture scheduler` in a thread: claim due work and enqueue it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            busy = tasks.tick(500) >= 500
            if not busy:
                stop.wait(max(0.0, interval - (time.monotonic() - started)))

    thread = threading.Thread(target=loop, name="scheduler")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def loading(base_url: str, pool: list[dict[str, Any]], clients: int, seed: int) -> Iterator[Tally]:
    """Load generator threads posting events until the block ends; yields their tally."""
    tally, stop = Tally(), threading.Event()
    threads = [
        threading.Thread(target=generate, args=(base_url, pool, tally, stop, seed + i))
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        yield tally
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@dataclass(frozen=True)
class Sample:
    """What the soak sees at one moment."""

    at: float
    accepted: int
    deliveries: dict[str, int]
    api_rss: float
    worker_rss: float

    @property
    def handled(self) -> int:
        """Deliveries in a final state."""
        return sum(self.deliveries.get(status, 0) for status in FINAL)

    def rate(self, earlier: Sample, what: str) -> float:
        """Events accepted or sends handled per second since `earlier`."""
        return (getattr(self, what) - getattr(earlier, what)) / (self.at - earlier.at)


def sample(app: App, tally: Tally, workers: list[subprocess.Popen[bytes]]) -> Sample:
    """Counters, delivery states and resident memory, now."""
    with app.sessions() as s:
        rows = s.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
    return Sample(
        at=time.monotonic(),
        accepted=tally.accepted,
        deliveries={status: int(n) for status, n in rows},
        api_rss=rss_mb(),
        worker_rss=sum(rss_mb(w.pid) for w in workers),
    )


def pacing(app: App, unpaced: bool) -> str:
    """The send rates the workers keep to, which cap sends/s when the backlog is large."""
    if unpaced:
        return "unpaced (--unpaced)"
    rates = app.rt.send.rates
    senders = {("email", "outbox")} | {
        ("sms", s.send.sms_from) for s in app.rt.workflows.sequences.values() if s.send.sms_from
    }
    caps = ", ".join(
        f"{c} {sender} {rate_for(c, sender, rates):g}/s" for c, sender in sorted(senders)
    )
    return f"paced per sender: {caps}"


def worker_errors(logs: Path) -> list[str]:
    """ERROR and CRITICAL lines the workers logged (actor failures, broker trouble)."""
    return [
        line
        for path in sorted(logs.glob("worker*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith(("ERROR", "CRITICAL"))
    ]


def soak(args: argparse.Namespace, seconds: float) -> None:
    """Start everything, load it for `seconds`, stop everything, print the figures."""
    from dramatiq.brokers.redis import RedisBroker

    reset_database(args.url)
    scratch = Path(tempfile.mkdtemp(prefix="nurture-soak-"))
    outbox = scratch / "outbox"
    app = App.create(
        settings_for(args.url, args.redis_url), environ={"NURTURE_OUTBOX_DIR": str(outbox)}
    )
    warmup = max(1.0, seconds * WARMUP)
    with contextlib.ExitStack() as stack:
        namespace = stack.enter_context(broker_namespace(args.redis_url))
        broker = RedisBroker(url=args.redis_url, namespace=namespace)
        stack.callback(broker.close)
        tasks = Tasks(broker, app)
        base_url = stack.enter_context(
            serving(create_api(app, tasks, api_keys=[API_KEY], environ={}))
        )
        workers = stack.enter_context(working(args, namespace, outbox, scratch))
        stack.enter_context(scheduling(tasks))
        zones = open_zones(app, seconds)
        pool = lead_pool(args.leads, zones, args.seed)
        idle_rss = rss_mb()
        with loading(base_url, pool, args.clients, args.seed) as tally:
            time.sleep(warmup)
            first = sample(app, tally, workers)
            time.sleep((seconds - warmup) / 2)
            middle = sample(app, tally, workers)
            time.sleep(max(0.0, first.at + seconds - warmup - time.monotonic()))
            last = sample(app, tally, workers)
        with app.sessions() as s:
            handoffs = int(s.scalar(select(func.count()).select_from(Handoff)) or 0)
    app.engine.dispose()
    logged = worker_errors(scratch)
    failed = sum(last.deliveries.get(status, 0) for status in ERRORS)
    errors = tally.rejected + tally.failed + failed + len(logged)
    report(
        "soak",
        [
            Figure(
                "events/s accepted, 2nd half vs 1st",
                last.rate(middle, "accepted"),
                middle.rate(first, "accepted"),
                "events/s",
                ">= 0.9",
            ),
            Figure(
                "sends/s handled, 2nd half vs 1st",
                last.rate(middle, "handled"),
                middle.rate(first, "handled"),
                "sends/s",
                ">= 0.9",
            ),
            Figure("events accepted vs posted", tally.accepted, tally.posted, "events", "1.00"),
            Figure("errors vs attempts", errors, tally.posted + last.handled, "count", "0"),
            Figure("API process RSS, end vs start", last.api_rss, first.api_rss, "MB", "<= 1.1"),
            Figure("worker RSS, end vs start", last.worker_rss, first.worker_rss, "MB", "<= 1.1"),
        ],
    )
    print(
        f"{seconds:.0f} s ({warmup:.0f} s warm-up not in the rates), {args.clients} clients, "
        f"{args.workers} worker(s) x {args.threads} threads, {args.leads} leads in "
        f"{', '.join(zones)}; API RSS before load {idle_rss:.1f} MB; handoffs {handoffs}; "
        f"deliveries {dict(sorted(last.deliveries.items()))}; non-2xx {dict(tally.statuses)}, "
        f"no answer {tally.failed}; worker errors logged {len(logged)}"
    )
    print(f"sending {pacing(app, args.unpaced)}")
    for line in logged[:5]:
        print(f"  {line}")
    if logged:
        print(f"worker logs kept in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    """Parse the flags and run the soak (or, internally, one worker process)."""
    parser = argparse.ArgumentParser(description=__doc__)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=2.0, help="how long to load")
    length.add_argument("--seconds", type=float, help="how long to load (overrides --minutes)")
    parser.add_argument(
        "--url",
        default=os.environ.get("NURTURE_BENCH_DATABASE_URL", DEFAULT_URL),
        help="PostgreSQL URL (emptied first)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("NURTURE_BENCH_REDIS_URL", DEFAULT_REDIS),
        help="Redis of the broker and pacer",
    )
    parser.add_argument("--leads", type=int, default=2000, help="lead pool of the load")
    parser.add_argument("--clients", type=int, default=4, help="load generator threads")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker")
    parser.add_argument(
        "--unpaced", action="store_true", help="send without the provider rate limits"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--outbox", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_child:
        run_worker(args)
        return
    soak(args, args.seconds if args.seconds is not None else args.minutes * 60)


if __name__ == "__main__":
    main()
