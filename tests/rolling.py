"""One process of a rolling deploy: record events, run due steps and send, on its own YAML.

Run as `python -m tests.rolling WORKFLOWS OUTBOX ROUNDS [--apply-at N]` with
NURTURE_DATABASE_URL set; prints a JSON summary of what it did.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import timedelta

from sqlalchemy import select

from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.sending import send_delivery
from engine.funnel.rollout import apply
from engine.funnel.service import track
from engine.models import Delivery, DeliveryStatus
from engine.runner.inline import run_due
from engine.settings import Settings
from tests.conftest import START

EVENTS = ["form_submitted", "content_downloaded", "email_opened", "page_viewed", "email_clicked"]


def main(workflows: str, outbox: str, rounds: int, apply_at: int | None, seed: int) -> None:
    import os

    env = {**os.environ, "NURTURE_WORKFLOWS": workflows, "NURTURE_OUTBOX_DIR": outbox}
    clock = FrozenClock(START)
    app = App.create(Settings.from_env(env), clock=clock, environ=env, paced=False)
    rng = random.Random(seed)
    summary = {"events": 0, "sends": 0, "moved": 0}
    for round_no in range(rounds):
        clock.advance(timedelta(hours=7))
        for _ in range(6):
            lead = {"email": f"lead{rng.randrange(12)}@northwind.test"}
            with app.sessions.begin() as session:
                track(session, app.rt, lead, rng.choice(EVENTS), {"url": "/pricing"})
            summary["events"] += 1
        if apply_at is not None and round_no == apply_at:
            summary["moved"] = apply(app.sessions, app.rt, exit_stranded=True).moved
        run_due(app.sessions, app.rt)
        with app.sessions.begin() as session:
            due = list(
                session.scalars(
                    select(Delivery.id).where(
                        Delivery.status == DeliveryStatus.PLANNED, Delivery.due_at <= clock.now()
                    )
                )
            )
        for delivery_id in due:
            send_delivery(app, delivery_id)
            summary["sends"] += 1
    print(json.dumps(summary))


if __name__ == "__main__":
    args = sys.argv[1:]
    at = int(args[args.index("--apply-at") + 1]) if "--apply-at" in args else None
    main(args[0], args[1], int(args[2]), at, seed=int(args[3]))
