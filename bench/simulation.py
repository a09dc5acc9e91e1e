"""Simulation: N synthetic leads (the `nurture demo` personas) through D days of simulated time
with the shipped workflows and templates, through the real pipeline exactly as `nurture demo`
runs it: scheduler passes, the Dramatiq stub broker and an in-process worker, the outbox
channel, a clock that jumps between due moments at one-hour resolution.

Measured: wall time, leads/s, CPU time of all threads (steadier than wall time on a shared
machine), peak memory (ru_maxrss of a fresh process minus its RSS after
set-up, so imports and the loaded workflows are not counted), and the funnel (MQLs, SQLs,
handoffs, sends by channel).

Baseline: the same simulation at N/10 leads (`--baseline-leads`) in the same run. Each size
runs in a fresh child process, so neither inherits the other's memory or caches. The ratio of
the cost per lead (N against N/10) says whether the engine scales linearly: about 1 is linear,
clearly above 1 means each lead costs more as there are more of them. The goal on ms per lead
is the `nurture demo` target: 1000 leads in under 15 s; on CPU, at most 10 ms per lead.

`--url` runs on PostgreSQL (emptied first); the default is a fresh SQLite file in a temp dir,
like the demo. `--profile FILE` runs only the N-lead simulation under cProfile (every thread)
and prints the top functions by cumulative and own time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from bench.common import Figure, add_url_option, report, reset_database
from engine.db import make_engine
from engine.models import Delivery, Enrolment, Handoff
from engine.read.stats import funnel
from engine.runner.demo import persona
from engine.runner.simulation import Simulation
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning, as in `nurture demo`
RESOLUTION = timedelta(hours=1)  # the demo's clock step
DEMO_GOAL_MS = 15.0  # `nurture demo`: 1000 leads in under 15 s
CPU_GOAL_MS = 10.0  # CPU per lead per 60 simulated days


def rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    """User plus system CPU time this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """The highest resident set size this process has had, in MB (ru_maxrss is KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _database(url: str | None) -> Engine | None:
    """An emptied, migrated PostgreSQL (or other) database for `url`; None: the SQLite default."""
    if url is None:
        return None
    reset_database(url)
    return make_engine(url)


@contextlib.contextmanager
def _profiled(path: Path | None) -> Iterator[None]:
    """cProfile the main thread and every thread started inside, merged into `path`."""
    if path is None:
        yield
        return
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(*_: Any) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile()
        with lock:
            profiles.append(profiler)
        profiler.enable()

    threading.setprofile(start)
    main = cProfile.Profile()
    main.enable()
    try:
        yield
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(main)
        for profiler in profiles:  # their threads have ended: the worker was stopped
            profiler.create_stats()
            stats.add(profiler)
        stats.dump_stats(str(path))
        for key in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(str(path), stream=out).sort_stats(key).print_stats(25)
            print(out.getvalue(), file=sys.stderr)


def simulate(leads: int, days: int, seed: int, url: str | None, profile: Path | None) -> dict:
    """Run one simulation in this process; returns timings, memory and funnel counts."""
    rng = random.Random(seed)
    script = [e for i in range(leads) for e in persona(rng, i, START).events]
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-sim-"))
    settings = Settings.from_env(
        {
            "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
            "NURTURE_TEMPLATES": str(ROOT / "templates"),
            "NURTURE_DATABASE_URL": url or f"sqlite:///{workdir / 'simulation.db'}",
        }
    )
    with _profiled(profile):  # before the Simulation exists, so its worker threads are seen
        sim = Simulation(settings, START, workdir, engine=_database(url))
        rss_before = rss_mb()
        started, cpu_started = time.perf_counter(), cpu_seconds()
        try:
            sim.run(script, START + timedelta(days=days), resolution=RESOLUTION)
        finally:
            sim.close()
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    peak = peak_rss_mb()
    try:
        if url is not None:  # where autovacuum is off, the planner would guess at 300k rows
            with sim.app.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("ANALYZE"))
        with sim.app.sessions() as s:
            stages = funnel(s, sim.app.rt)["stages"]
            handoffs = s.scalar(select(func.count()).select_from(Handoff)) or 0
            re_engaged = s.scalar(
                select(func.count(func.distinct(Enrolment.lead_id))).where(
                    Enrolment.sequence == "re-engagement"
                )
            )
            deliveries = s.execute(
                select(Delivery.channel, Delivery.status, func.count()).group_by(
                    Delivery.channel, Delivery.status
                )
            ).all()
    finally:
        sim.app.engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
    sent = {channel: n for channel, status, n in deliveries if status == "sent"}
    return {
        "leads": leads,
        "events": len(script),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_before_mb": rss_before,
        "peak_growth_mb": max(peak - rss_before, 0.0),
        "mql": stages["mql_ever"],
        "sql": stages["sql_ever"],
        "handoffs": int(handoffs),
        "re_engaged": int(re_engaged or 0),
        "emails": int(sent.get("email", 0)),
        "sms": int(sent.get("sms", 0)),
        "deliveries": {f"{c}/{s}": int(n) for c, s, n in deliveries},
        "backend": make_url(settings.database_url).get_backend_name(),
    }


def run_child(leads: int, args: argparse.Namespace, profile: Path | None = None) -> dict:
    """Run one size in a fresh interpreter and return what it measured."""
    command = [sys.executable, "-m", "bench.simulation", "--child", "--leads", str(leads)]
    command += ["--days", str(args.days), "--seed", str(args.seed)]
    if args.url:
        command += ["--url", args.url]
    if profile is not None:
        command += ["--profile", str(profile)]
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def figures(big: dict, small: dict) -> list[Figure]:
    """The N-lead run beside the N/10 run: throughput, cost per lead, memory, funnel."""
    scale = big["leads"] / small["leads"]
    n, b = big["leads"], small["leads"]

    def ms(run: dict, key: str = "seconds") -> float:
        return 1000 * run[key] / run["leads"]

    counts = [
        ("MQLs (ever)", "mql"),
        ("SQLs (ever)", "sql"),
        ("handoffs to sales", "handoffs"),
        ("re-engaged leads", "re_engaged"),
        ("emails sent", "emails"),
        ("SMS sent", "sms"),
    ]
    return [
        Figure(
            f"wall time, {n} vs {b} leads", big["seconds"], small["seconds"], "s", f"~{scale:g}"
        ),
        Figure("leads/s", n / big["seconds"], b / small["seconds"], "leads/s", ">= 0.9 (linear)"),
        Figure(
            "cost per lead",
            ms(big),
            ms(small),
            "ms/lead",
            f"<= 1.1; <= {DEMO_GOAL_MS:g} ms",
        ),
        Figure(
            "CPU time per lead (all threads)",
            ms(big, "cpu_seconds"),
            ms(small, "cpu_seconds"),
            "ms/lead",
            f"<= 1.1; <= {CPU_GOAL_MS:g} ms",
        ),
        Figure(
            "peak memory growth",
            big["peak_growth_mb"],
            small["peak_growth_mb"],
            "MB",
            f"<= {scale:g}",
        ),
        *(Figure(name, big[key], small[key], "count", f"~{scale:g}") for name, key in counts),
    ]


def main() -> None:
    """Run the baseline and the full size in child processes and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=10_000, help="synthetic leads")
    parser.add_argument("--days", type=int, default=60, help="simulated days")
    parser.add_argument("--baseline-leads", type=int, help="baseline size (default leads/10)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the personas")
    add_url_option(parser)
    parser.add_argument("--profile", type=Path, help="cProfile the full size into this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(simulate(args.leads, args.days, args.seed, args.url, args.profile)))
        return
    if args.profile is not None:
        run = run_child(args.leads, args, args.profile)
        print(json.dumps(run, indent=2))
        return
    small_leads = args.baseline_leads or max(args.leads // 10, 1)
    small = run_child(small_leads, args)
    big = run_child(args.leads, args)
    report("simulation", figures(big, small))
    print(
        f"{big['backend']}, {args.days} simulated days: {big['events']} scripted events; "
        f"deliveries {big['deliveries']}"
    )


if __name__ == "__main__":
    main()
