"""Database engines and sessions: SQLite for the embedded default, PostgreSQL in production."""

from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Engine,
    Executable,
    Select,
    Update,
    bindparam,
    create_engine,
    event,
    update,
)
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


def claim(
    session: Session,
    query: Select[Any],
    params: dict[str, Any],
    model: Any = None,
    lease: str | None = None,
) -> list[Any]:
    """The ids the prebuilt `query` selects with `params`, row-locked with SKIP LOCKED on
    PostgreSQL, and the `lease` column of those rows set to the `lease` parameter.

    Several schedulers can claim at once; each row goes to one of them. Statements are built
    once per process (`_skip_locked`, `_leasing`), so a claim costs its round trips only.
    """
    if is_postgres(session):
        query = _skip_locked(query)
    ids = list(session.scalars(query, params))
    if ids and lease is not None:
        session.execute(_leasing(model, lease), {"ids": ids, "lease": params["lease"]})
    return ids


@cache
def _skip_locked(query: Select[Any]) -> Select[Any]:
    return query.with_for_update(skip_locked=True)


@cache
def _leasing(model: Any, column: str) -> Update:
    return (
        update(model)
        .where(model.id.in_(bindparam("ids", expanding=True)))
        .values({column: bindparam("lease")})
        .execution_options(synchronize_session=False)
    )


def changed_rows(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE (keeping loaded objects in step); the rows it matched."""
    options = {"synchronize_session": "fetch"}
    result = cast(CursorResult[Any], session.execute(statement, execution_options=options))
    return int(result.rowcount)
