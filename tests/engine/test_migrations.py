"""Migrations: Alembic builds the same schema as the models on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect

from engine.db import make_engine
from engine.migrations import upgrade
from engine.models import Base

TABLES = {t.name for t in Base.metadata.sorted_tables}


def test_an_empty_postgres_database_upgrades_to_head_with_every_table(
    postgres_engine: Engine,
) -> None:
    inspector = inspect(postgres_engine)
    assert TABLES | {"alembic_version"} <= set(inspector.get_table_names())
    columns = {c["name"] for c in inspector.get_columns("enrolments")}
    assert {"next_run_at", "lease_until", "milestone", "position", "pass_no"} <= columns


def test_an_empty_sqlite_file_upgrades_to_head_and_matches_the_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    upgrade(engine)
    upgrade(engine)  # a second upgrade is a no-op, as `nurture init` on an existing database
    inspector = inspect(engine)
    assert TABLES <= set(inspector.get_table_names())
    for table in Base.metadata.sorted_tables:
        assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.columns.keys())
    engine.dispose()
