"""Alembic migrations, and `upgrade`, which brings a SQLite or PostgreSQL schema to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine

MIGRATIONS = Path(__file__).parent


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database behind `engine` to `revision` (head by default).

    On SQLite, foreign keys are off for the run, as Alembic advises for its batch mode: a
    table rebuilt there is dropped and its copy renamed, and with them on the drop would
    cascade to every row that references it. They are checked before the run commits.
    """
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # outside a transaction, where SQLite lets it change
            _pragma(connection, "foreign_keys=OFF")
        try:
            with connection.begin():
                before = _revision(connection)
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if sqlite and _revision(connection) != before:
                    _check_references(connection)
        finally:
            if sqlite:
                _pragma(connection, "foreign_keys=ON")


def _revision(connection: Connection) -> str | None:
    """The revision the database is at (None before the first migration)."""
    return MigrationContext.configure(connection).get_current_revision()


def _check_references(connection: Connection) -> None:
    """Refuse to commit a migration that left rows referring to rows that are not there."""
    dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if dangling:
        shown = ", ".join(
            f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in dangling[:5]
        )
        raise RuntimeError(
            f"the migration would leave {len(dangling)} dangling reference(s): {shown}"
        )


def _pragma(connection: Connection, setting: str) -> None:
    """Run a PRAGMA on the driver's connection itself, outside SQLAlchemy's transaction."""
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"PRAGMA {setting}")
    finally:
        cursor.close()


def stamp(engine: Engine, revision: str = "head") -> None:
    """Mark a schema made from the models as at `revision`, so a later `upgrade` starts there."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.stamp(config, revision)
