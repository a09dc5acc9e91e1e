"""Identity stitching at scale: visitors' anonymous page views joined to their leads by a form.

N visitors each view the pricing page twice anonymously (kept in `visitor_events`), then a
form names them (`visitors.take`, in calls of 50 as a Segment batch or a burst of form posts
brings them), which records the views and the form on the lead in time order. On SQLite in a
temp dir or on PostgreSQL (`--url`, emptied first).

Baseline, in the same run on a fresh database: the same events recorded straight on known
leads by `service.record` in calls of 50 (what the engine costs without visitors). Figures are
events a second: the two views and the form per visitor.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from bench.backtest import ROOT, START
from bench.common import Figure, add_url_option, report, reset_database
from engine.app import App
from engine.clock import FrozenClock
from engine.funnel.service import NewEvent, record
from engine.funnel.visitors import FORM, SNIPPET, Hit, take
from engine.settings import Settings

CALL = 50  # hits per call
PRICING = {"url": "https://acme.test/pricing", "path": "/pricing"}


def _app(url: str) -> App:
    settings = Settings.from_env(
        {
            "NURTURE_DATABASE_URL": url,
            "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
            "NURTURE_TEMPLATES": str(ROOT / "templates"),
        }
    )
    return App.create(settings, clock=FrozenClock(START + timedelta(days=1)), environ={})


def _views(visitors: int) -> list[Hit]:
    return [
        Hit(f"v{i}", None, "page_viewed", PRICING, START + timedelta(minutes=i + k), f"p{i}.{k}",
            SNIPPET)
        for i in range(visitors)
        for k in (0, 30)
    ]  # fmt: skip


def _forms(visitors: int) -> list[Hit]:
    return [
        Hit(
            f"v{i}",
            {"email": f"p{i}@bench.test", "first_name": "Pat"},
            "form_submitted",
            {"form": "demo-request"},
            START + timedelta(hours=2, minutes=i),
            f"f{i}",
            FORM,
        )
        for i in range(visitors)
    ]


def _timed(app: App, calls: list[Callable[[Session], object]]) -> float:
    """Seconds to run each call in its own transaction."""
    started = time.perf_counter()
    for call in calls:
        with app.sessions.begin() as session:
            call(session)
    return time.perf_counter() - started


def stitched(url: str, visitors: int) -> float:
    """Events a second through `take`: the views kept anonymous, then the forms identifying."""
    app = _app(url)
    views, forms = _views(visitors), _forms(visitors)
    calls: list[Callable[[Session], object]] = [
        lambda s, chunk=chunk: take(s, app.rt, chunk)  # type: ignore[misc]
        for hits in (views, forms)
        for chunk in (hits[i : i + CALL] for i in range(0, len(hits), CALL))
    ]
    seconds = _timed(app, calls)
    app.engine.dispose()
    return (len(views) + len(forms)) / seconds


def bare(url: str, visitors: int) -> float:
    """Events a second through `record` alone: the same events on leads known from the start."""
    app = _app(url)
    events = [
        NewEvent({"email": f"p{hit.visitor[1:]}@bench.test"}, hit.type or "", hit.properties,
                 hit.occurred_at, hit.event_id, hit.source)
        for hit in _views(visitors) + _forms(visitors)
    ]  # fmt: skip
    calls: list[Callable[[Session], object]] = [
        lambda s, chunk=chunk: record(s, app.rt, chunk)  # type: ignore[misc]
        for chunk in (events[i : i + CALL] for i in range(0, len(events), CALL))
    ]
    seconds = _timed(app, calls)
    app.engine.dispose()
    return len(events) / seconds


def main(argv: list[str] | None = None) -> None:
    """Print stitching's rate beside recording the same events on known leads."""
    parser = argparse.ArgumentParser(prog="python -m bench.stitching", description=__doc__)
    parser.add_argument("--visitors", type=int, default=2000, help="visitors identified")
    add_url_option(parser)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="nurture-bench-"))
    try:
        rates = []
        for run in ("stitched", "bare"):
            url = args.url or f"sqlite:///{folder / (run + '.db')}"
            reset_database(url)
            rates.append((stitched if run == "stitched" else bare)(url, args.visitors))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    where = "PostgreSQL" if args.url else "SQLite"
    report(
        "stitching",
        [
            Figure(
                f"stitch {args.visitors} visitors, calls of {CALL} ({where})",
                rates[0],
                rates[1],
                "events/s; baseline: the same events on known leads",
                "-",
            )
        ],
    )


if __name__ == "__main__":
    main()
