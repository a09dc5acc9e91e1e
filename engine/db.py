"""Database engines and sessions: SQLite for the embedded default, PostgreSQL in production."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Select, create_engine, event, update
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and write-locking transactions."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        _serialise_sqlite_writers(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)  # survive a restarted server; callers may opt out
    return create_engine(url, **kwargs)


def _serialise_sqlite_writers(engine: Engine) -> None:
    """Begin every SQLite transaction IMMEDIATE so two writers queue instead of failing late."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below take over
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if engine.url.database not in (None, "", ":memory:"):
            # WAL with synchronous=NORMAL: durable across process crashes, one fsync per
            # checkpoint instead of per commit, the usual setting for an embedded server.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (callers own the transaction)."""
    return sessionmaker(engine, expire_on_commit=False)


def is_postgres(session: Session) -> bool:
    """True on PostgreSQL, where row locks (FOR UPDATE, SKIP LOCKED) exist."""
    return session.get_bind().dialect.name == "postgresql"


def claim(session: Session, query: Select[Any], model: Any, **lease: Any) -> list[Any]:
    """The ids `query` selects, row-locked with SKIP LOCKED on PostgreSQL, `lease` set on them.

    Several schedulers can claim at once; each row goes to one of them.
    """
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    ids = list(session.scalars(query))
    if ids and lease:
        session.execute(update(model).where(model.id.in_(ids)).values(**lease))
    return ids
