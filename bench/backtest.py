"""Backtest: `nurture backtest lead-nurture --since D` over a live database of N leads.

The live history is real: N `nurture demo` personas played through the engine (scheduler,
Dramatiq stub broker and worker, outbox into a temp dir, both shipped sequences) for
`--before` days and then the D days of the period, on SQLite in a temp dir or on PostgreSQL
(`--url`, emptied first). Then, at the end of that history, the backtest replays every lead
with an event in the period: its earlier events through scoring alone, the period's through
the sequence, in a scratch SQLite database, beside the live figures.

Measured: the backtest's wall time and CPU time (all threads), per lead, and its figures
beside the live ones. Baseline: the live run that made the history, timed the same way: the
backtest replays the same events through the same pipeline, so about 1 means it costs what
running the period live cost. Goal: 10,000 leads x 30 days within a few minutes (180 s).
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Figure, add_url_option, report, reset_database
from engine.app import App
from engine.clock import FrozenClock
from engine.db import make_engine
from engine.runner.backtest import backtest
from engine.runner.demo import persona
from engine.runner.simulation import Simulation
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning, as in `nurture demo`
RESOLUTION = timedelta(hours=1)
GOAL_S = 180.0  # "within a few minutes" at 10,000 leads x 30 days
LIVE = "live.db"  # the live SQLite database, in a temp dir


def cpu_seconds() -> float:
    """User plus system CPU time of this process (every thread) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def live(
    settings: Settings, workdir: Path, leads: int, days: int, before: int, seed: int
) -> tuple[float, float]:
    """Play the personas into the live database (PostgreSQL, else `workdir/live.db`) until the
    period's end; wall and CPU seconds."""
    rng = random.Random(seed)
    script = [e for i in range(leads) for e in persona(rng, i, START).events]
    postgres = settings.database_url.startswith("postgresql")
    engine = make_engine(settings.database_url) if postgres else None
    started, cpu = time.perf_counter(), cpu_seconds()
    sim = Simulation(settings, START, workdir, engine=engine, database=LIVE)
    try:
        sim.run(script, START + timedelta(days=before + days), resolution=RESOLUTION)
    finally:
        sim.close()
        shutil.rmtree(workdir / "outbox", ignore_errors=True)
    return time.perf_counter() - started, cpu_seconds() - cpu


def main() -> None:
    """Build the history, backtest it and print the figures beside the live run's."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=10_000, help="synthetic leads")
    parser.add_argument("--days", type=int, default=30, help="days of the period backtested")
    parser.add_argument("--before", type=int, default=7, help="days of history before it")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the personas")
    add_url_option(parser)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-backtest-"))
    if args.url:
        reset_database(args.url)
    settings = Settings.from_env(
        {
            "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
            "NURTURE_TEMPLATES": str(ROOT / "templates"),
            "NURTURE_DATABASE_URL": args.url or f"sqlite:///{workdir / LIVE}",
        }
    )
    try:
        live_seconds, live_cpu = live(
            settings, workdir, args.leads, args.days, args.before, args.seed
        )
        end = START + timedelta(days=args.before + args.days)
        app = App.create(settings, clock=FrozenClock(end), environ={}, paced=False)
        started, cpu = time.perf_counter(), cpu_seconds()
        result = backtest(app, "lead-nurture", timedelta(days=args.days))
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        app.engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    n = result.leads

    def sent(figures: dict[str, Any], channel: str) -> int:
        return sum(s["sent"] for s in figures["steps"] if f"/{channel}:" in s["step"])

    bt, lv = result.backtest, result.live
    report(
        "backtest",
        [
            Figure(
                f"wall time, {n} leads x {args.days} days",
                seconds,
                live_seconds,
                "s",
                f"<= {GOAL_S:g} s",
            ),
            Figure("CPU time (all threads)", cpu, live_cpu, "s", "~1"),
            Figure(
                "wall time per lead (replayed vs live)",
                1000 * seconds / n,
                1000 * live_seconds / args.leads,
                "ms/lead",
                "~1",
            ),
            Figure(
                "emails sent (backtest vs live)",
                sent(bt, "email"),
                sent(lv, "email"),
                "count",
                "~1",
            ),
            Figure("SMS sent (backtest vs live)", sent(bt, "sms"), sent(lv, "sms"), "count", "~1"),
            Figure("MQLs in the period (backtest vs live)", bt["mql"], lv["mql"], "count", "~1"),
            Figure("SQLs in the period (backtest vs live)", bt["sql"], lv["sql"], "count", "~1"),
        ],
    )
    print(
        f"{app.engine.url.get_backend_name()} live database: {args.leads} personas over "
        f"{args.before} + {args.days} days; {n} leads with events in the period replayed, "
        f"{result.events} events in it and {result.history} before it"
    )


if __name__ == "__main__":
    main()
