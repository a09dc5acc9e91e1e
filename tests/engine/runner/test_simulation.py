"""The simulation: scripted leads through the real pipeline on a jumping clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from engine.models import Delivery, Event
from engine.runner.simulation import ScriptedEvent, Simulation
from engine.settings import Settings
from engine.starter import examples

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning


def test_a_scripted_click_names_the_email_sent_to_that_lead_and_an_email_never_sent_is_not_clicked(
    tmp_path: Path,
) -> None:
    bundled = examples()
    settings = replace(
        Settings.from_env({}), workflows_dir=bundled.workflows, templates_dir=bundled.templates
    )
    sim = Simulation(settings, START, tmp_path)
    ana = {"email": "Ana@Initech.test", "first_name": "Ana"}
    ben = {"email": "ben@initech.test", "first_name": "Ben"}
    script = [
        ScriptedEvent(START, ana, "content_downloaded", {"title": "Report"}),
        ScriptedEvent(START, ben, "content_downloaded", {"title": "Report"}),
        ScriptedEvent(START + timedelta(days=2), ana, "email_clicked", {"url": "/x"}, "welcome"),
        ScriptedEvent(START + timedelta(days=2), ben, "email_clicked", {}, "no_such_template"),
    ]
    try:
        sim.run(script, START + timedelta(days=3), resolution=timedelta(hours=1))
        with sim.app.sessions() as s:
            clicks = {
                e.lead_id: e.properties
                for e in s.scalars(select(Event).where(Event.type == "email_clicked"))
            }
            welcome = s.scalars(
                select(Delivery).where(Delivery.template == "welcome", Delivery.status == "sent")
            ).all()
    finally:
        sim.close()
    (anas,) = [d for d in welcome if d.lead_id in clicks and "delivery_id" in clicks[d.lead_id]]
    assert clicks[anas.lead_id] == {
        "url": "/x",
        "delivery_id": anas.id,
        "template": "welcome",
        "sequence": anas.sequence,
    }
    assert len(clicks) == 1  # Ben was never sent that email: he cannot click it
