"""Experiments at scale: judging a step's winner and the reports, over N sends per variant.

The data: the shipped lead-nurture's pricing-guide step with its two variants, N sends of each
with clicks at the same rate (so no variant wins and the judge reads every look it may), and
N enrolments of re-engagement, a tenth held out, with their stage changes. On SQLite in a temp
dir or on PostgreSQL (`--url`, emptied first); rows are written with bulk inserts.

Baselines, in the same run: for the judge and the step report, reading the same rows bare (the
step's sends, then the clicks of their leads, in the same 500-lead chunks) without judging; for
the holdout report, reading the enrolments and stage changes it counts.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, select

from bench.backtest import ROOT, START
from bench.common import Figure, add_url_option, report, reset_database
from engine.app import App
from engine.clock import FrozenClock
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    Event,
    Lead,
    Stage,
    StageChange,
)
from engine.read.experiments import sequence_experiments
from engine.read.significance import proportion_p
from engine.runner.winners import decide_winners
from engine.settings import Settings

STEP = ("lead-nurture", "consideration", "email:pricing_guide")
CHUNK = 500


def seed(app: App, sends: int, rng: random.Random) -> None:
    """N leads per variant with one send each (clicked 5% of the time), and N re-engagement
    enrolments (every tenth held out) of which some reach MQL."""
    sequence, milestone, step = STEP
    leads = [
        {"email": f"l{i}@bench.test", "email_key": f"l{i}@bench.test", "stage": Stage.LEAD,
         "created_at": START,
         "updated_at": START, "fields": {}, "fit_rules": {}}
        for i in range(2 * sends)
    ]  # fmt: skip
    with app.sessions.begin() as session:
        session.execute(insert(Lead), leads)
        ids = list(session.scalars(select(Lead.id).order_by(Lead.id)))
        enrolments = [
            {"lead_id": lead_id, "sequence": sequence, "sequence_version": "v", "milestone":
             milestone, "enrolled_at": START, "milestone_entered_at": START, "trigger": "bench",
             "holdout": False}
            for lead_id in ids
        ] + [
            {"lead_id": lead_id, "sequence": "re-engagement", "sequence_version": "v",
             "milestone": "reconnect", "enrolled_at": START, "milestone_entered_at": START,
             "trigger": "inactive", "holdout": n % 10 == 0}
            for n, lead_id in enumerate(ids[:sends])
        ]  # fmt: skip
        session.execute(insert(Enrolment), enrolments)
        enrolled = list(
            session.execute(
                select(Enrolment.id, Enrolment.lead_id).where(Enrolment.sequence == sequence)
            )
        )
        deliveries, events, changes = [], [], []
        for n, (enrolment_id, lead_id) in enumerate(enrolled):
            sent_at = START + timedelta(minutes=n)
            delivery_id = str(uuid.uuid4())
            deliveries.append(
                {"id": delivery_id, "enrolment_id": enrolment_id, "lead_id": lead_id,
                 "sequence": sequence, "milestone": milestone, "step": step, "pass_no": 1,
                 "channel": "email", "template": "pricing_guide",
                 "variant": "guide" if n % 2 else "question", "status": DeliveryStatus.SENT,
                 "planned_at": sent_at, "due_at": sent_at, "sent_at": sent_at, "attempts": 1}
            )  # fmt: skip
            if rng.random() < 0.05:
                clicked = sent_at + timedelta(days=1)
                events.append(
                    {"lead_id": lead_id, "type": "email_clicked", "occurred_at": clicked,
                     "received_at": clicked, "properties": {"delivery_id": delivery_id},
                     "source": "bench", "status": "processed", "attempts": 1}
                )  # fmt: skip
            if n < sends and rng.random() < (0.05 if n % 10 == 0 else 0.08):
                moved = START + timedelta(days=3)
                changes.append(
                    {"lead_id": lead_id, "from_stage": Stage.LEAD, "to_stage": Stage.MQL,
                     "reason": "bench", "changed_at": moved}
                )  # fmt: skip
        session.execute(insert(Delivery), deliveries)
        session.execute(insert(Event), events)
        session.execute(insert(StageChange), changes)


def bare_reads(app: App) -> float:
    """Milliseconds to read the step's sends and their leads' clicks, in the same chunks."""
    sequence, milestone, step = STEP
    started = time.perf_counter()
    with app.sessions() as session:
        sent = session.execute(
            select(Delivery.id, Delivery.lead_id, Delivery.variant, Delivery.sent_at)
            .where(Delivery.sequence == sequence, Delivery.milestone == milestone,
                   Delivery.step == step, Delivery.status == DeliveryStatus.SENT)
            .order_by(Delivery.sent_at, Delivery.id)
        ).all()  # fmt: skip
        leads = sorted({lead_id for _, lead_id, _, _ in sent})
        for offset in range(0, len(leads), CHUNK):
            session.execute(
                select(Event.lead_id, Event.occurred_at, Event.properties).where(
                    Event.lead_id.in_(leads[offset : offset + CHUNK]),
                    Event.type == "email_clicked",
                )
            ).all()
    return 1000 * (time.perf_counter() - started)


def bare_holdout_reads(app: App) -> float:
    """Milliseconds to read the holdout report's enrolments and stage changes."""
    started = time.perf_counter()
    with app.sessions() as session:
        rows = session.execute(
            select(Enrolment.lead_id, Enrolment.enrolled_at, Enrolment.holdout).where(
                Enrolment.sequence == "re-engagement"
            )
        ).all()
        leads = sorted({lead_id for lead_id, _, _ in rows})
        for offset in range(0, len(leads), CHUNK):
            chunk = leads[offset : offset + CHUNK]
            session.execute(select(StageChange).where(StageChange.lead_id.in_(chunk))).all()
            session.execute(select(Lead.id, Lead.stage).where(Lead.id.in_(chunk))).all()
    return 1000 * (time.perf_counter() - started)


def timed(work: Callable[[], object]) -> float:
    """Milliseconds `work()` takes."""
    started = time.perf_counter()
    work()
    return 1000 * (time.perf_counter() - started)


def main() -> None:
    """Seed the sends and enrolments, time the judge and the reports beside the bare reads."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=10_000, help="sends per variant")
    add_url_option(parser)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-experiments-"))
    url = args.url or f"sqlite:///{workdir / 'bench.db'}"
    reset_database(url)
    environ = {
        "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
        "NURTURE_TEMPLATES": str(ROOT / "templates"),
        "NURTURE_DATABASE_URL": url,
    }
    clock = FrozenClock(START + timedelta(days=60))
    try:
        app = App.create(Settings.from_env(environ), clock=clock, environ={}, paced=False)
        seed(app, args.sends, random.Random(7))
        proportion_p(1, 2, 1, 2)  # SciPy loaded once (0.6 s), as in a scheduler that judged
        bare_reads(app)  # once to warm the caches, as the judge and reports find them
        bare = bare_reads(app)
        with app.sessions.begin() as session:
            judge_s = timed(lambda: decide_winners(session, app.rt, clock.now()))
            assert not decide_winners(session, app.rt, clock.now()), "equal variants won"
        with app.sessions() as session:
            step_s = timed(lambda: sequence_experiments(session, app.rt, STEP[0], clock.now()))
        holdout_bare = bare_holdout_reads(app)
        with app.sessions() as session:
            holdout_s = timed(
                lambda: sequence_experiments(session, app.rt, "re-engagement", clock.now())
            )
        app.engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    n = args.sends
    report(
        "experiments",
        [
            Figure(f"judge a step, {n:,} sends per variant", judge_s, bare, "ms", "<= 2,000"),
            Figure("report of that step", step_s, bare, "ms", "<= 2,000"),
            Figure(f"holdout report, {n:,} enrolments", holdout_s, holdout_bare, "ms", "<= 2,000"),
        ],
    )


if __name__ == "__main__":
    main()
