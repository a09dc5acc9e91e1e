"""`nurture leads merge` and `nurture leads conflicts` on SQLite and PostgreSQL: one lead out of
two with both pasts and a score its ledger sums to, the old keys still naming it, errors that
name the key, and the conflicts a call naming two leads leaves until they are merged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, select

from engine.app import App
from engine.cli.main import main
from engine.cli.merging import MERGE_HINT
from engine.clock import SystemClock
from engine.funnel.service import Outcome, track
from engine.models import Event, Lead, LeadConflict, ScoreEntry
from tests.apps import FIXTURES, ROOT, outbox_app

Nurture = Callable[..., Result]
ANA, PHONE = "ana@northwind.test", "+14155550100"


@pytest.fixture
def nurture(db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Nurture:
    """Run `nurture ARGS` on the empty test database (SQLite, then PostgreSQL)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NURTURE_DATABASE_URL", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(FIXTURES))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    monkeypatch.setenv("NURTURE_OUTBOX_DIR", str(tmp_path / "outbox"))
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, list(args), catch_exceptions=False, env={"COLUMNS": "200"})

    return run


@pytest.fixture
def app(db: Engine, tmp_path: Path) -> App:
    """The engine on the same database, for what `nurture track` cannot say (a phone)."""
    return outbox_app(db, SystemClock(), tmp_path)


def _track(app: App, lead: dict[str, Any], event: str) -> Outcome:
    with app.sessions.begin() as session:
        return track(session, app.rt, lead, event)


def _two_leads(nurture: Nurture, app: App) -> None:
    """Ana by email (18 points, lead) and a VP by phone (30 points and fit 10, mql)."""
    assert nurture("track", ANA, "content_downloaded").exit_code == 0
    assert nurture("track", ANA, "form_submitted").exit_code == 0
    assert _track(app, {"phone": PHONE, "title": "VP Sales"}, "demo_requested").lead_id == 2


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_merging_a_phone_lead_into_an_email_lead_keeps_both_pasts_and_the_phone_finds_it(
    nurture: Nurture, app: App
) -> None:
    _two_leads(nurture, app)

    result = nurture("leads", "merge", ANA, PHONE)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"merged {PHONE} (lead 2) into {ANA} (lead 1): stage sql, score 58 (fit 10, engagement 48)"
    )
    assert any(line.split() == ["│", "events", "│", "1", "│"] for line in lines)
    assert "aliases left: none" in lines
    assert "handed to sales (handoff 1)" in lines
    with app.sessions() as s:
        survivor = s.get_one(Lead, 1)
        types = set(s.scalars(select(Event.type).where(Event.lead_id == 1)))
        ledger = s.scalar(select(func.sum(ScoreEntry.points)).where(ScoreEntry.lead_id == 1))
        assert s.get(Lead, 2) is None
        assert ledger == survivor.fit + survivor.engagement == 58
    assert types == {"content_downloaded", "form_submitted", "demo_requested"}
    shown = _json(nurture("lead", "show", PHONE, "--json"))
    assert (shown["lead"]["id"], shown["lead"]["email"]) == (1, ANA)
    assert [h["id"] for h in _json(nurture("handoffs", "--json"))] == [1]


def test_merge_json_says_what_moved_the_alias_left_and_the_run_collapsed(
    nurture: Nurture,
) -> None:
    nurture("track", ANA, "content_downloaded")
    nurture("track", "ana.old@northwind.test", "content_downloaded")

    done = _json(nurture("leads", "merge", "1", "ana.old@northwind.test", "--json"))

    assert done["survivor"] == {
        "id": 1,
        "key": ANA,
        "stage": "lead",
        "score": {"total": 16.0, "fit": 0.0, "engagement": 16.0},
    }
    assert done["merged"] == {"id": 2, "key": "ana.old@northwind.test"}
    assert (done["moved"]["events"], done["moved"]["enrolments"]) == (1, 1)
    assert done["aliases"] == [{"field": "email", "value": "ana.old@northwind.test"}]
    assert done["collapsed"] == [2]  # both ran the drip: the older run goes on
    assert done["handoff_id"] is None
    assert _json(nurture("lead", "show", "ana.old@northwind.test", "--json"))["lead"]["id"] == 1
    tracked = nurture("track", "ana.old@northwind.test", "page_viewed")
    assert tracked.output.startswith("page_viewed recorded")
    assert _json(nurture("lead", "show", ANA, "--json"))["score"]["total"] == 16.0


def test_merge_names_an_unknown_key_and_refuses_one_lead_twice_or_an_erased_lead(
    nurture: Nurture, app: App
) -> None:
    _two_leads(nurture, app)
    assert nurture("privacy", "erase", PHONE, "--yes").exit_code == 0

    unknown = nurture("leads", "merge", ANA, "nobody@x.test")
    same = nurture("leads", "merge", ANA, "1")
    erased = nurture("leads", "merge", ANA, "2")

    assert (unknown.exit_code, unknown.output.strip()) == (
        1,
        "error: no lead with email 'nobody@x.test'",
    )
    assert (same.exit_code, same.output.strip()) == (
        1,
        "error: a lead cannot be merged with itself",
    )
    assert (erased.exit_code, erased.output.strip()) == (
        1,
        "error: lead 2 is erased: there is nothing to merge",
    )
    assert _json(nurture("lead", "show", "2", "--json"))["lead"]["erased_at"] is not None


def test_conflicts_list_a_call_naming_two_leads_until_they_are_merged(
    nurture: Nurture, app: App, tmp_path: Path
) -> None:
    _two_leads(nurture, app)
    assert _json(nurture("leads", "conflicts", "--json")) == []

    named = _track(app, {"email": ANA, "phone": PHONE}, "page_viewed")
    (tmp_path / "both.csv").write_text(f"email,phone\n{ANA},{PHONE}\n")
    assert nurture("leads", "import", str(tmp_path / "both.csv")).exit_code == 0

    assert named.lead_id == 1  # the event lands on the lead its email names
    [conflict] = _json(nurture("leads", "conflicts", "--json"))
    assert {k: conflict[k] for k in ("lead_id", "lead", "other_id", "other")} == {
        "lead_id": 1,
        "lead": ANA,
        "other_id": 2,
        "other": PHONE,
    }
    assert (conflict["field"], conflict["value"], conflict["source"]) == ("phone", PHONE, "import")
    assert conflict["times"] == 2 and conflict["first_seen_at"] <= conflict["last_seen_at"]
    listed = nurture("leads", "conflicts")
    assert f"{ANA} (1)" in listed.stdout and f"{PHONE} (2)" in listed.stdout
    assert listed.stdout.splitlines()[-1] == MERGE_HINT
    with app.sessions() as s:
        assert s.get_one(Lead, 1).phone is None  # the phone stays with the lead holding it

    assert nurture("leads", "merge", ANA, PHONE).exit_code == 0
    assert _json(nurture("leads", "conflicts", "--json")) == []
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(LeadConflict)) == 0
        assert s.get_one(Lead, 1).phone == PHONE
