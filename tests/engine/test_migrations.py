"""Migrations: Alembic builds the same schema as the models on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from engine.db import make_engine, make_sessionmaker
from engine.funnel.leads import Identity, find_lead
from engine.funnel.topics import has_left, leave_topic
from engine.migrations import upgrade
from engine.models import (
    Base,
    Delivery,
    Enrolment,
    Lead,
    Suppression,
    TopicOptOut,
    VariantPick,
)
from tests.conftest import START

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
        assert _indexes(inspector.get_indexes(table.name)) == _indexes(
            {"name": i.name, "column_names": [c.name for c in i.columns]} for i in table.indexes
        ), table.name
    engine.dispose()


def _indexes(indexes: Iterable[Mapping[str, Any]]) -> set[tuple[str, tuple[str, ...]]]:
    """Each index by name and columns in order: what decides which queries it serves."""
    return {(str(i["name"]), tuple(i["column_names"])) for i in indexes}


def _insert_lead(connection: Connection) -> None:
    """Lead 7, written with SQL: an old revision has no models to write it with."""
    connection.execute(
        text(
            "INSERT INTO leads (id, email, fields, email_consent, sms_consent, stage, fit,"
            " engagement, fit_rules, sql_crossings, created_at, updated_at) VALUES (7,"
            " 'ana@northwind.test', '{}', true, false, 'lead', 0, 0, '{}', 0, :at, :at)"
        ),
        {"at": START},
    )


def _in_a_fresh_schema(
    postgres_engine: Engine, schema: str, check: Callable[[Engine], None]
) -> None:
    """Run `check` on an engine whose tables live in a new, empty PostgreSQL schema."""
    with postgres_engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    engine = make_engine(
        postgres_engine.url.render_as_string(hide_password=False),
        connect_args={"options": f"-csearch_path={schema}"},
    )
    try:
        check(engine)
    finally:
        engine.dispose()
        with postgres_engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def _upgrade_with_a_lead_to_unsubscribe_topics(engine: Engine) -> None:
    """From 0002 with a lead in it to head: the lead's topic choices can be recorded, once."""
    upgrade(engine, "0002")
    with engine.begin() as connection:
        assert "topic_opt_outs" not in inspect(connection).get_table_names()
        _insert_lead(connection)
    upgrade(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("topic_opt_outs")}
    assert columns == {"id", "lead_id", "topic", "source", "created_at"}
    with make_sessionmaker(engine).begin() as session:
        lead = session.get_one(Lead, 7)
        leave_topic(session, lead, "webinars", "unsubscribe", START)
        leave_topic(session, lead, "webinars", "unsubscribe", START)
    with make_sessionmaker(engine)() as session:
        assert has_left(session, 7, "webinars") and not has_left(session, 7, "marketing")
        assert session.scalars(select(TopicOptOut.topic)).all() == ["webinars"]


def test_a_sqlite_database_at_0002_upgrades_to_record_unsubscribe_topics(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'at-0002.db'}")
    _upgrade_with_a_lead_to_unsubscribe_topics(engine)
    engine.dispose()


def test_a_postgres_database_at_0002_upgrades_to_record_unsubscribe_topics(
    postgres_engine: Engine,
) -> None:
    _in_a_fresh_schema(postgres_engine, "migrate_0003", _upgrade_with_a_lead_to_unsubscribe_topics)


def _upgrade_with_a_delivery_to_experiments(engine: Engine) -> None:
    """From 0005 with an enrolment and its delivery to head: neither is held out nor drew a
    variant, and a step's pick can be recorded once."""
    upgrade(engine, "0005")
    with engine.begin() as connection:
        _insert_lead(connection)
        connection.execute(
            text(
                "INSERT INTO enrolments (id, lead_id, sequence, sequence_version, status,"
                " milestone, position, pass_no, exhausted, enrolled_at, milestone_entered_at,"
                " trigger) VALUES (3, 7, 'drip', 'v1', 'active', 'awareness', 1, 1, false, :at,"
                " :at, 'form_submitted')"
            ),
            {"at": START},
        )
        connection.execute(
            text(
                "INSERT INTO deliveries (id, enrolment_id, lead_id, sequence, milestone, step,"
                " pass_no, channel, template, status, planned_at, due_at, attempts) VALUES"
                " ('d1', 3, 7, 'drip', 'awareness', 'email:welcome', 1, 'email', 'welcome',"
                " 'sent', :at, :at, 1)"
            ),
            {"at": START},
        )
    upgrade(engine)
    with make_sessionmaker(engine).begin() as session:
        assert session.get_one(Enrolment, 3).holdout is False
        assert session.get_one(Delivery, "d1").variant is None
        pick = {"sequence": "drip", "milestone": "awareness", "step": "email:welcome"}
        session.add(
            VariantPick(**pick, variant="a", kind="auto", figures={}, reason="r", picked_at=START)
        )
    with pytest.raises(IntegrityError), make_sessionmaker(engine).begin() as session:
        session.add(
            VariantPick(**pick, variant="b", kind="auto", figures={}, reason="r", picked_at=START)
        )


def test_a_sqlite_database_at_0005_upgrades_to_record_experiments(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'at-0005.db'}")
    _upgrade_with_a_delivery_to_experiments(engine)
    engine.dispose()


def test_a_postgres_database_at_0005_upgrades_to_record_experiments(
    postgres_engine: Engine,
) -> None:
    _in_a_fresh_schema(postgres_engine, "migrate_0005", _upgrade_with_a_delivery_to_experiments)


def _upgrade_to_email_keys(engine: Engine) -> None:
    """From 0008 with leads stored lower-cased, one on an xn-- domain, and suppressions of
    that domain: every lead keeps its key, the IDNA domain reads in Unicode, and the lead
    and its suppression are found by the address however it is written."""
    upgrade(engine, "0008")
    with engine.begin() as connection:
        _insert_lead(connection)
        connection.execute(
            text(
                "INSERT INTO leads (id, email, fields, email_consent, sms_consent, stage, fit,"
                " engagement, fit_rules, sql_crossings, created_at, updated_at) VALUES (8,"
                " 'jens@xn--blbr-roah.dk', '{}', true, false, 'lead', 0, 0, '{}', 0, :at, :at)"
            ),
            {"at": START},
        )
        for address in ("jens@xn--blbr-roah.dk", "ole@xn--blbr-roah.dk", "ole@blåbær.dk"):
            connection.execute(
                text(
                    "INSERT INTO suppressions (channel, address, reason, created_at)"
                    " VALUES ('email', :address, 'bounced', :at)"
                ),
                {"address": address, "at": START},
            )
    upgrade(engine)
    with make_sessionmaker(engine).begin() as session:
        leads = {lead.id: (lead.email, lead.email_key) for lead in session.scalars(select(Lead))}
        assert leads == {
            7: ("ana@northwind.test", "ana@northwind.test"),
            8: ("jens@blåbær.dk", "jens@blåbær.dk"),
        }
        found = find_lead(session, Identity.parse({"email": "Jens@xn--BLBR-roah.dk"}))
        assert found is not None and found.id == 8
        suppressed = session.scalars(select(Suppression.address).order_by(Suppression.address))
        assert list(suppressed) == ["jens@blåbær.dk", "ole@blåbær.dk"]


def test_a_sqlite_database_at_0008_upgrades_to_email_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'at-0008.db'}")
    _upgrade_to_email_keys(engine)
    engine.dispose()


def test_a_postgres_database_at_0008_upgrades_to_email_keys(postgres_engine: Engine) -> None:
    _in_a_fresh_schema(postgres_engine, "migrate_0008", _upgrade_to_email_keys)


def test_a_sqlite_database_at_0010_keeps_its_leads_and_their_rows_and_never_reuses_an_id(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'at-0010.db'}")
    upgrade(engine, "0010")
    with engine.begin() as connection:
        _insert_lead(connection)  # lead 7
        connection.execute(
            text(
                "INSERT INTO events (lead_id, type, properties, occurred_at, received_at, source,"
                " status, attempts) VALUES (7, 'page_viewed', '{}', :at, :at, 'api', 'processed',"
                " 1)"
            ),
            {"at": START},
        )
        connection.execute(  # lead 9, merged into 7 before this: its id lives on in links
            text(
                "INSERT INTO lead_aliases (field, value, lead_id, merged_lead, merged_at)"
                " VALUES ('id', '9', 7, 9, :at)"
            ),
            {"at": START},
        )
    upgrade(engine)
    with make_sessionmaker(engine).begin() as session:
        assert session.scalar(text("SELECT count(*) FROM events WHERE lead_id = 7")) == 1
        assert session.scalar(text("PRAGMA foreign_keys")) == 1  # on again after the run
        session.execute(text("DELETE FROM leads WHERE id = 7"))  # as a merge removes a lead
        assert session.scalar(text("SELECT count(*) FROM events")) == 0  # still cascading
        session.add(Lead(email="new@x.test", created_at=START, updated_at=START))
        session.flush()
        assert session.scalar(select(Lead.id)) == 10  # never 7 or 9 again
    engine.dispose()
