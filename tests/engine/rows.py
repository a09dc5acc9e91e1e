"""Database rows built by hand for tests that read what the engine wrote: a lead, its
enrolment, a sent delivery with its variant, feedback naming that delivery, a stage change."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from engine.models import Delivery, DeliveryStatus, Enrolment, Event, Lead, Stage, StageChange
from tests.conftest import START


def lead(
    session: Session, email: str, *, stage: Stage = Stage.LEAD, at: datetime = START, **fields: Any
) -> Lead:
    """A lead created (and last updated) `at`, flushed so that its id can be used."""
    row = Lead(email=email, stage=stage, created_at=at, updated_at=at, **fields)
    session.add(row)
    session.flush()
    return row


def enrolment(
    session: Session,
    lead: Lead,
    *,
    sequence: str,
    milestone: str = "awareness",
    at: datetime,
    holdout: bool = False,
    version: str = "v1",
) -> Enrolment:
    """The lead enrolled in `sequence` (entering `milestone`) `at`, flushed for its id."""
    row = Enrolment(
        lead_id=lead.id,
        sequence=sequence,
        sequence_version=version,
        milestone=milestone,
        enrolled_at=at,
        milestone_entered_at=at,
        trigger="form_submitted",
        holdout=holdout,
    )
    session.add(row)
    session.flush()
    return row


def sent(
    session: Session,
    enrolment: Enrolment,
    *,
    step: str,
    variant: str | None,
    at: datetime,
    delivery_id: str | None = None,
    template: str = "welcome",
    channel: str = "email",
) -> Delivery:
    """A delivery sent `at` (planned and due then too), which an experiment counts for `variant`."""
    row = Delivery(
        id=delivery_id or str(uuid.uuid4()),
        enrolment_id=enrolment.id,
        lead_id=enrolment.lead_id,
        sequence=enrolment.sequence,
        milestone=enrolment.milestone,
        step=step,
        pass_no=1,
        channel=channel,
        template=template,
        variant=variant,
        status=DeliveryStatus.SENT,
        planned_at=at,
        due_at=at,
        sent_at=at,
    )
    session.add(row)
    return row


def feedback(session: Session, delivery: Delivery, kind: str, at: datetime) -> Event:
    """An event `kind` naming `delivery`, as feedback does, so it credits the delivery's variant."""
    row = Event(
        lead_id=delivery.lead_id,
        type=kind,
        properties={"delivery_id": delivery.id},
        occurred_at=at,
        received_at=at,
    )
    session.add(row)
    return row


def stage_change(
    session: Session, lead: Lead, at: datetime, from_stage: Stage, to_stage: Stage
) -> StageChange:
    """The lead's move from one stage to another `at`, as a holdout report reads its history."""
    row = StageChange(
        lead_id=lead.id, from_stage=from_stage, to_stage=to_stage, reason="test", changed_at=at
    )
    session.add(row)
    return row
