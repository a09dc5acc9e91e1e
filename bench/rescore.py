"""Rescore: `nurture plan`'s replay of every lead, and `nurture rescore`, over N leads' history.

The history is real: N `nurture demo` personas played through the engine for D days (as
`bench.backtest` builds it), on SQLite in a temp dir or on PostgreSQL (`--url`, emptied
first). Then scoring.yml is edited (pricing page views 7 -> 15 points, the MQL threshold
20 -> 25) and the plan replays every lead; `rescore` applies it, and a second `rescore`
finds nothing left to do.

Baseline: reading the same leads' past (events, resets, ledger sums) in the same batches
without replaying it: what the replay adds to the reads it cannot avoid.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from bench.backtest import LIVE, ROOT, START, cpu_seconds, live
from bench.common import Figure, add_url_option, report, reset_database
from engine.app import App
from engine.clock import FrozenClock
from engine.funnel.replay import read_past
from engine.funnel.rescore import plan_rescore, rescore
from engine.models import Lead
from engine.settings import Settings

BATCH = 1000  # leads per read, as the plan reads them


def edited_workflows(target: Path) -> Path:
    """The shipped workflows with the scoring change a marketer would plan."""
    shutil.copytree(ROOT / "workflows", target)
    scoring = target / "scoring.yml"
    text = scoring.read_text().replace("  mql: 20\n", "  mql: 25\n", 1)
    pricing = text.index("id: pricing_page_view")
    text = text[:pricing] + text[pricing:].replace("points: 7", "points: 15", 1)
    scoring.write_text(text)
    return target


def read_only(app: App) -> float:
    """Seconds to read every lead's past in batches, replaying nothing."""
    started = time.perf_counter()
    with app.sessions() as session:
        ids = list(session.scalars(select(Lead.id).order_by(Lead.id)))
        for offset in range(0, len(ids), BATCH):
            read_past(session, ids[offset : offset + BATCH])
            list(session.scalars(select(Lead).where(Lead.id.in_(ids[offset : offset + BATCH]))))
            session.expunge_all()
    return time.perf_counter() - started


def main() -> None:
    """Build the history, plan and apply the rescore, print the figures beside the reads."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=10_000, help="synthetic leads")
    parser.add_argument("--days", type=int, default=30, help="days of history")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the personas")
    add_url_option(parser)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-rescore-"))
    if args.url:
        reset_database(args.url)
    environ = {
        "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
        "NURTURE_TEMPLATES": str(ROOT / "templates"),
        "NURTURE_DATABASE_URL": args.url or f"sqlite:///{workdir / LIVE}",
    }
    try:
        live(Settings.from_env(environ), workdir, args.leads, args.days, 0, args.seed)
        environ["NURTURE_WORKFLOWS"] = str(edited_workflows(workdir / "edited"))
        clock = FrozenClock(START + timedelta(days=args.days))
        app = App.create(Settings.from_env(environ), clock=clock, environ={}, paced=False)
        baseline = read_only(app)
        started, cpu = time.perf_counter(), cpu_seconds()
        with app.sessions() as session:
            plan = plan_rescore(session, app.rt)
        plan_s, plan_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        started = time.perf_counter()
        done = rescore(app.sessions, app.rt)
        apply_s = time.perf_counter() - started
        again = rescore(app.sessions, app.rt)
        app.engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    n = plan.leads
    report(
        "rescore",
        [
            Figure(f"plan, {n} leads x {args.days} days", plan_s, baseline, "s", "<= 60 s"),
            Figure("plan per lead (CPU)", 1000 * plan_cpu / n, 1000 * baseline / n, "ms", ""),
            Figure("rescore (applied)", apply_s, baseline, "s", ""),
            Figure("leads changed: plan vs rescore", plan.changed, done.changed, "count", "1"),
            Figure("changed by a second rescore", again.changed, 0, "count", "0"),
        ],
    )
    print(
        f"{n} leads; new MQLs {done.moves['mql']}, dropped {done.moves['slipped']},"
        f" new SQLs {done.moves['sql']} (held, not handed off)"
    )


if __name__ == "__main__":
    main()
