"""Simulated time through the real pipeline: scheduler, Dramatiq worker, channels, on a clock
that jumps from one due moment to the next, so weeks of nurture run in seconds."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, select

from engine.app import App
from engine.clock import FrozenClock
from engine.contacts import email_key
from engine.db import make_engine
from engine.errors import UnknownSequenceError
from engine.funnel.visitors import FORM, SNIPPET, Hit, take
from engine.migrations import stamp
from engine.models import (
    Base,
    Delivery,
    DeliveryStatus,
    Lead,
)
from engine.runner.actors import Tasks
from engine.runner.scheduler import Horizon
from engine.settings import QUEUES, Settings
from engine.workflow.spec import Sequence, Workflows


@dataclass(order=True)
class ScriptedEvent:
    """Something a simulated lead does at a moment; `of` names the template of the email it
    opens or clicks, which the lead does only if that email was sent to it.

    With a `visitor` (its browser's anonymous id) it happens on the website and comes in as
    the snippet and hosted forms send it, through `take`: a form fill names `lead` and so
    identifies the visitor; a page view leaves `lead` empty and goes to the visitor's lead
    once it has one, or waits for it unscored.
    """

    at: datetime
    lead: dict[str, Any] = field(compare=False)
    type: str = field(compare=False)
    properties: dict[str, Any] = field(default_factory=dict, compare=False)
    of: str | None = field(default=None, compare=False)
    visitor: str | None = field(default=None, compare=False)


class Simulation:
    """An App on a throwaway SQLite database with an in-process broker and worker."""

    def __init__(
        self,
        settings: Settings,
        start: datetime,
        workdir: Path | None = None,
        channels: Mapping[str, Any] | None = None,
        threads: int = 1,
        engine: Engine | None = None,
        database: str = "simulation.db",
    ) -> None:
        """A fresh SQLite file `database` in `workdir`, unless `engine` names a migrated empty
        database."""
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="nurture-sim-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clock = FrozenClock(start)
        if engine is None:
            path = self.workdir / database
            path.unlink(missing_ok=True)
            engine = make_engine(f"sqlite:///{path}")
            Base.metadata.create_all(engine)
            stamp(engine)  # made from the models, at head: `nurture run` can open it
        environ = {"NURTURE_OUTBOX_DIR": str(self.workdir / "outbox")}
        # Unpaced: provider rates are wall-clock limits, and simulated time has no wall clock.
        self.app = App.create(
            settings,
            clock=self.clock,
            environ=environ,
            engine=engine,
            channels=channels,
            paced=False,
        )
        self.loaded = self.app.rt.workflows  # what `only` chooses from
        self.broker = StubBroker()
        self.tasks = Tasks(self.broker, self.app)
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=50)
        self.worker.start()

    def only(self, names: Collection[str]) -> None:
        """Run just these of the loaded sequences (none: scoring and stages alone), so what a
        marketer sees is exactly what they do; UnknownSequenceError names the loaded ones."""
        kept = sequences_named(self.loaded, names)
        only = replace(self.loaded, sequences=kept)
        self.app.rt = replace(self.app.rt, workflows=only, _programs={})

    def close(self) -> None:
        """Stop the worker and release the database."""
        self.worker.stop()
        self.app.engine.dispose()

    def settle(self) -> Horizon:
        """Run what is queued, then scheduler passes and their work until a pass finds nothing
        due; the horizon that pass saw (when the next work falls due)."""
        while True:
            self._join()
            enqueued, seen = self.tasks.scheduler_pass()
            if not enqueued:
                return seen

    def _join(self) -> None:
        for queue in QUEUES:
            self.broker.join(queue)
        self.worker.join()

    def post(self, events: list[ScriptedEvent], batch: int = 500) -> None:
        """Record scripted events the way a busy source does: in batches through the events
        queue, each event with its own payload as the API would take it; what happens on the
        website first, as the collect and forms endpoints take it (`visit`).

        The lookups of clicked emails and the website's calls run first, so they never wait
        for the write lock of a worker busy with the events posted before them.
        """
        sent = self._sent_of([event for event in events if event.of])
        self.visit([event for event in events if event.visitor is not None], batch)
        # Nobody opens or clicks an email they never got (held out, skipped, not yet sent).
        payloads = [
            self._payload(event, sent)
            for event in events
            if event.visitor is None and (not event.of or (_email(event.lead), event.of) in sent)
        ]
        for offset in range(0, len(payloads), batch):
            self.tasks.process_events.send(payloads[offset : offset + batch])

    def visit(self, events: list[ScriptedEvent], batch: int = 500) -> None:
        """Record what visitors do on the website as `/t/collect` and hosted forms do: their
        calls through `take` in batches, each batch one transaction, and then the follow-up
        work it made due handed to the workers."""
        for offset in range(0, len(events), batch):
            hits = [_hit(event) for event in events[offset : offset + batch]]
            with self.app.sessions.begin() as session:
                taken = take(session, self.app.rt, hits)
            self.tasks.follow_up(*(outcome for each in taken for outcome in each.outcomes))

    @staticmethod
    def _payload(
        event: ScriptedEvent, sent: Mapping[tuple[str, str], dict[str, str]]
    ) -> dict[str, Any]:
        properties = dict(event.properties)
        if event.of:  # the delivery clicked, named as a provider webhook names it
            properties |= sent[(_email(event.lead), event.of)]
        return {
            "lead": event.lead,
            "type": event.type,
            "properties": properties,
            "occurred_at": event.at.isoformat(),
            "source": "simulation",
        }

    def _sent_of(self, clicks: list[ScriptedEvent]) -> dict[tuple[str, str], dict[str, str]]:
        """The latest sent delivery of each clicked template to each clicking lead."""
        if not clicks:
            return {}
        emails = sorted({_email(event.lead) for event in clicks})
        templates = sorted({event.of for event in clicks if event.of})
        latest: dict[tuple[str, str], dict[str, str]] = {}
        with self.app.sessions() as s:
            rows = s.execute(
                select(Lead.email_key, Delivery.template, Delivery.id, Delivery.sequence)
                .join(Lead, Lead.id == Delivery.lead_id)
                .where(
                    Lead.email_key.in_(emails),
                    Delivery.template.in_(templates),
                    Delivery.status == DeliveryStatus.SENT,
                )
                .order_by(Delivery.sent_at)
            )
            for email, template, delivery_id, sequence in rows:
                latest[(email or "", template)] = {  # later ones win
                    "delivery_id": delivery_id,
                    "template": template,
                    "sequence": sequence,
                }
        return latest

    @staticmethod
    def _round_up(moment: datetime, step: timedelta) -> datetime:
        """The next multiple of `step` since the epoch at or after `moment`."""
        epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
        steps = -((epoch - moment) // step)
        return epoch + steps * step

    def run(
        self,
        script: Iterable[ScriptedEvent],
        until: datetime,
        progress: Callable[[datetime], None] | None = None,
        resolution: timedelta | None = None,
    ) -> None:
        """Play the script and everything it causes up to `until`, jumping between due moments.

        With a `resolution` (say one hour) the clock moves in steps of it, so everything due
        within a step runs together: far fewer passes for thousands of leads, at the price of
        sends happening up to one step late. Events keep their exact times.
        """
        pending = sorted(script, reverse=True)
        seen = self.settle()
        while True:
            now = self.clock.now()
            due = seen.earliest()
            if due is not None and due <= now:
                due = now + timedelta(seconds=1)  # due but leased: come back shortly
            candidates = [m for m in (due, pending[-1].at if pending else None) if m is not None]
            moment = min([*candidates, until])
            if resolution is not None and moment < until:
                moment = self._round_up(moment, resolution)
            if moment > now:
                self.clock.set(moment)
            due_now = []
            while pending and pending[-1].at <= self.clock.now():
                due_now.append(pending.pop())
            self.post(due_now)
            seen = self.settle()
            if progress is not None:
                progress(self.clock.now())
            if self.clock.now() >= until:
                return


def sequences_named(workflows: Workflows, names: Collection[str]) -> dict[str, Sequence]:
    """The loaded sequences of these names; UnknownSequenceError for the first one missing."""
    for name in names:
        if name not in workflows.sequences:
            raise UnknownSequenceError(name, sorted(workflows.sequences))
    return {name: workflows.sequences[name] for name in names}


def _hit(event: ScriptedEvent) -> Hit:
    """A website call: a page view of the visitor (source `snippet`), or a form fill naming
    the lead (source `form`); its id stands for the snippet's or the form's own, so a replay
    counts once."""
    assert event.visitor is not None
    event_id = f"sim:{event.visitor}:{event.type}:{event.at.isoformat()}"
    source = FORM if event.lead else SNIPPET
    return Hit(
        event.visitor, event.lead or None, event.type, event.properties, event.at, event_id, source
    )


def _email(lead: Mapping[str, Any]) -> str:
    """A scripted lead's email as the leads table looks it up."""
    return email_key(str(lead.get("email", "")))
