"""The demo's synthetic visitors: page views browsed anonymously, joined to the lead a form
names, scored once in time order; visitors who never fill a form stay anonymous."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from engine.cli.main import main
from engine.db import make_engine, make_sessionmaker
from engine.funnel.lead_fields import check_lead
from engine.models import Event, Lead, ScoreEntry, Visitor, VisitorEvent
from engine.read.sources import SNIPPET, website_figures
from engine.runner.demo import Persona, crowd, lead_of
from engine.runner.simulation import ScriptedEvent, Simulation
from engine.settings import Settings
from engine.starter import examples

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # the demo's start, a Monday morning
UNTIL = START + timedelta(days=25)
DAY = timedelta(days=1)


def _settings() -> Settings:
    bundled = examples()
    return replace(
        Settings.from_env({}), workflows_dir=bundled.workflows, templates_dir=bundled.templates
    )


def _on_site(personas: list[Persona], until: datetime) -> list[ScriptedEvent]:
    """What the personas did on the website up to `until`, in time order."""
    return sorted(e for p in personas for e in p.events if e.visitor is not None and e.at <= until)


def _expected(personas: list[Persona], until: datetime) -> dict[str, int]:
    """The website figures the script itself implies: every page view kept, each visitor
    whose form was filled identified, the views before that form joined to its lead."""
    site = _on_site(personas, until)
    forms: dict[str, datetime] = {}
    for event in site:
        if event.lead and event.visitor is not None:
            forms.setdefault(event.visitor, event.at)
    views = [e for e in site if not e.lead]
    visitors = {e.visitor for e in site}
    return {
        "page_views": len(views),
        "visitors": len(visitors),
        "identified": len(forms),
        "anonymous": len(visitors) - len(forms),
        "joined": sum(1 for e in views if e.visitor in forms and e.at < forms[e.visitor]),
        "anonymous_page_views": sum(1 for e in views if e.visitor not in forms),
    }


def _limited(times: list[datetime], per: timedelta) -> list[datetime]:
    """The times a `once per <per>` rule scores, events taken in time order."""
    scored: list[datetime] = []
    for at in sorted(times):
        if not any(abs(at - t) < per for t in scored):
            scored.append(at)
    return scored


def test_the_demos_visitors_page_views_before_a_form_join_its_lead_scored_once_in_time_order(
    db: Engine, tmp_path: Path
) -> None:
    personas = crowd(random.Random(7), 40, START)
    sim = Simulation(_settings(), START, tmp_path, engine=db)
    try:
        sim.run([e for p in personas for e in p.events], UNTIL, resolution=timedelta(hours=1))
        with sim.app.sessions() as s:
            counted = (
                s.scalar(select(func.count()).select_from(Event)),
                s.scalar(select(func.count()).select_from(ScoreEntry)),
            )
            figures = website_figures(s)
        sim.visit(_on_site(personas, UNTIL))  # every beacon and form post sent again
        with sim.app.sessions() as s:
            assert website_figures(s) == figures
            assert counted == (
                s.scalar(select(func.count()).select_from(Event)),
                s.scalar(select(func.count()).select_from(ScoreEntry)),
            )
            visitors = {v.id: v for v in s.scalars(select(Visitor))}
            waiting = s.execute(select(VisitorEvent.visitor_id, VisitorEvent.occurred_at)).all()
            leads = {lead.email: lead.id for lead in s.scalars(select(Lead))}
            snippet = s.execute(
                select(Event.lead_id, Event.occurred_at, Event.properties)
                .where(Event.source == SNIPPET)
                .order_by(Event.occurred_at)
            ).all()
            pricing = s.execute(
                select(ScoreEntry.lead_id, ScoreEntry.occurred_at)
                .where(ScoreEntry.rule == "pricing_page_view")
                .order_by(ScoreEntry.occurred_at)
            ).all()
    finally:
        sim.close()

    assert figures == _expected(personas, UNTIL)
    assert figures["joined"] > 0 and figures["anonymous_page_views"] > 0
    identified = [p for p in personas if p.visitor is not None and p.lead]
    assert identified and any(p.kind == "browser" for p in personas)
    joined = stitched_points = 0
    for person in identified:
        assert person.visitor is not None
        lead_id = leads[person.lead["email"]]
        assert visitors[person.visitor].lead_id == lead_id
        assert not [row for row in waiting if row.visitor_id == person.visitor]
        views = [e for e in person.events if not e.lead and e.at <= UNTIL]
        form = min(e.at for e in person.events if e.lead and e.visitor is not None)
        on_lead = [row for row in snippet if row.lead_id == lead_id]
        assert [row.occurred_at for row in on_lead] == sorted(e.at for e in views)
        joined += sum(1 for row in on_lead if row.occurred_at < form)
        prices = [e.at for e in views if e.properties["path"] == "/pricing"]
        scored = [row.occurred_at for row in pricing if row.lead_id == lead_id]
        assert scored == _limited(prices, DAY)  # once a day, stitched views among the rest
        stitched_points += sum(1 for at in scored if at < form)
    assert joined == figures["joined"] and stitched_points > 0
    never = {p.visitor for p in personas if p.kind == "browser"}
    assert {row.visitor_id for row in waiting} <= never
    assert all(visitors[v].lead_id is None for v in never if v in visitors)


def test_the_demo_prints_the_websites_figures_read_from_its_database(tmp_path: Path) -> None:
    bundled = examples()
    out = tmp_path / "demo"
    args = ["--workflows", str(bundled.workflows), "--templates", str(bundled.templates), "demo"]
    args += ["--leads", "30", "--days", "20", "--seed", "3", "--out", str(out)]
    shown = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    website = json.loads(shown.stdout)["website"]
    engine = make_engine(f"sqlite:///{out / 'nurture.db'}")
    try:
        with make_sessionmaker(engine)() as s:
            assert website == website_figures(s)
    finally:
        engine.dispose()
    personas = crowd(random.Random(3), 30, START)
    assert website == _expected(personas, START + timedelta(days=20))
    assert website["identified"] > 0 and website["joined"] > 0 and website["anonymous"] > 0

    printed = CliRunner().invoke(main, args, catch_exceptions=False)
    assert printed.exit_code == 0, printed.output
    line = " ".join(printed.stdout.split())  # as one line, however the terminal wrapped it
    assert (
        f"Website: {website['page_views']:,} page views from {website['visitors']:,} visitors; "
        f"{website['identified']:,} identified, and their {website['joined']:,} earlier page "
        f"views joined their leads; {website['anonymous']:,} still anonymous"
    ) in line



def test_every_demo_lead_up_to_100k_has_a_number_of_its_own_that_its_plan_knows() -> None:
    leads = [lead_of(random.Random(i), i, "warm") for i in range(0, 100_000, 3)]
    numbers = [
        check_lead({k: v for k, v in lead.items() if v is not None})["phone"]  # refuses bad ones
        for lead in leads
        if lead["phone"]
    ]
    assert len(set(numbers)) == len(numbers) > 10_000
    international = [lead for lead in leads if "country" in lead]
    assert {lead["country"] for lead in international} == {"PL", "RU", "DK"}
    assert {lead["first_name"] for lead in international} == {"Zofia", "Дмитрий", "Søren", "Łukasz"}
