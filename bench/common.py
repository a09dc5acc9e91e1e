"""Shared benchmark plumbing: a fresh database, a table of figures beside their baselines, and a
JSON record."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from engine.db import make_engine
from engine.migrations import upgrade
from engine.models import Base

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Figure:
    """One measured rate beside the baseline measured in the same run."""

    name: str
    value: float
    baseline: float
    unit: str
    goal: str

    @property
    def ratio(self) -> float:
        """value / baseline: how close nurture comes to the bare operation."""
        return self.value / self.baseline if self.baseline else float("nan")


def rate(work: Callable[[], int], *, seconds: float = 1.0) -> float:
    """Operations per second of `work` (which returns how many it did), repeated for `seconds`."""
    done, started = 0, time.perf_counter()
    while True:
        done += work()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def machine() -> str:
    """What the figures were measured on."""
    return f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def report(title: str, figures: list[Figure]) -> None:
    """Print the table and write bench/results/<title>.json with the same figures."""
    print(f"{title} on {machine()}")
    print(f"{'figure':42} {'nurture':>12} {'baseline':>12} {'ratio':>7}  goal")
    for f in figures:
        print(
            f"{f.name:42} {f.value:>12,.1f} {f.baseline:>12,.1f} {f.ratio:>7.2f}  {f.goal}"
            f"  ({f.unit})"
        )
    RESULTS.mkdir(exist_ok=True)
    record = {
        "title": title,
        "machine": machine(),
        "figures": [{**asdict(f), "ratio": f.ratio} for f in figures],
    }
    (RESULTS / f"{title}.json").write_text(json.dumps(record, indent=2))


def add_url_option(parser: argparse.ArgumentParser) -> None:
    """`--url`: a PostgreSQL database to empty and use (NURTURE_BENCH_DATABASE_URL by default);
    without one the benchmark makes a fresh SQLite file."""
    parser.add_argument(
        "--url",
        default=os.environ.get("NURTURE_BENCH_DATABASE_URL") or None,
        help="PostgreSQL URL of the database (emptied first); default a fresh SQLite file",
    )


def reset_database(url: str) -> None:
    """Create the PostgreSQL database if needed, drop every table and migrate it afresh."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            exists = connection.execute(
                text("select 1 from pg_database where datname = :d"), {"d": parsed.database}
            ).scalar()
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
        admin.dispose()
    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    upgrade(engine)
    engine.dispose()
