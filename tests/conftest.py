"""Shared fixtures: databases (SQLite always, PostgreSQL when reachable), clocks, workflows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.contacts import use_region
from engine.db import make_engine, make_sessionmaker
from engine.models import Base

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "NURTURE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("NURTURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning


def unavailable(what: str, error: Exception) -> None:
    """Skip with the reason on a newcomer's machine; fail under CI, where the service must exist."""
    message = f"{what} is not reachable ({error.__class__.__name__}: {error})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    """One PostgreSQL engine for the run, with a fresh schema made by the migrations."""
    engine = make_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as error:  # noqa: BLE001 - any connection failure means "not here"
        unavailable("PostgreSQL", error)
    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    from engine.migrations import upgrade

    upgrade(engine)
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database: a SQLite file, then PostgreSQL (tests run once on each)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'nurture.db'}")
        Base.metadata.create_all(engine)
        yield engine
        engine.dispose()
    else:
        engine = request.getfixturevalue("postgres_engine")
        _truncate(engine)
        yield engine


@pytest.fixture
def sessions(db: Engine) -> sessionmaker[Session]:
    """A session factory on the test database; each test owns its transactions."""
    return make_sessionmaker(db)


@pytest.fixture
def clock() -> FrozenClock:
    """A clock frozen on a Monday morning that tests move by hand."""
    return FrozenClock(START)


@pytest.fixture
def redis_url() -> str:
    """The Redis test database; skipped locally when absent, a failure under CI."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        unavailable("Redis", error)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(autouse=True)
def _no_region_left_behind() -> Iterator[None]:
    """A process's phone region is set by `App.create`: no test leaves one for the next."""
    yield
    use_region(None)
