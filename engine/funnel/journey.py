"""The journey state machine: enrol, run steps, move between milestones, exit."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from engine.db import is_postgres
from engine.funnel.experiments import choose_variant, held_out
from engine.funnel.facts import LeadFacts
from engine.funnel.memo import memo_of
from engine.models import (
    OUT_OF_NURTURE,
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Lead,
    MilestoneVisit,
)
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Fired, Goto, Jump, Send, Sequence, Test, Wait
from engine.workflow.windows import deferral, open_slot

# A milestone may loop through gotos; past this many instructions in one run it is a bug.
MAX_INSTRUCTIONS = 500


_ACTIVE = (
    select(Enrolment)
    .where(Enrolment.lead_id == bindparam("lead"), Enrolment.status == EnrolmentStatus.ACTIVE)
    .order_by(Enrolment.id)
)
_LATEST_IN = (
    select(Enrolment)
    .where(Enrolment.lead_id == bindparam("lead"), Enrolment.sequence == bindparam("sequence"))
    .order_by(Enrolment.enrolled_at.desc())
    .limit(1)
)
_PLANNED_BEFORE = select(Delivery.id).where(
    Delivery.enrolment_id == bindparam("enrolment"),
    Delivery.step == bindparam("step"),
    Delivery.pass_no == bindparam("pass_no"),
)
_ENROLMENTS = (
    select(Enrolment)
    .where(Enrolment.id.in_(bindparam("ids", expanding=True)))
    .order_by(Enrolment.id)
)
_ENROLMENTS_LOCKED = _ENROLMENTS.with_for_update()
_SKIP_PLANNED = (
    update(Delivery)
    .where(
        Delivery.enrolment_id == bindparam("enrolment"),
        Delivery.status == DeliveryStatus.PLANNED,
    )
    .values(status=DeliveryStatus.SKIPPED, detail=bindparam("reason"))
    .execution_options(synchronize_session="fetch")
)


def active_enrolments(session: Session, lead: Lead) -> list[Enrolment]:
    """The lead's enrolments still running, oldest first.

    Checked again in memory: one that ended in this transaction may not be flushed yet.
    """
    remembered = _remembered(session, lead)
    rows = remembered if remembered is not None else session.scalars(_ACTIVE, {"lead": lead.id})
    return [e for e in rows if e.status == EnrolmentStatus.ACTIVE]


def _remembered(session: Session, lead: Lead) -> list[Enrolment] | None:
    """Every enrolment of the lead as the batch being recorded remembers it (None: no batch)."""
    memo = memo_of(session)
    return memo.enrolments_of(lead.id) if memo is not None else None


def enrol_on(session: Session, rt: Runtime, lead: Lead, fired: Fired) -> list[Enrolment]:
    """Enrol the lead in every sequence whose trigger matches and whose filters pass.

    Leads in sales' hands, and leads who withdrew consent on every channel, are never enrolled.
    """
    if lead.stage in OUT_OF_NURTURE or not (lead.email_consent or lead.sms_consent):
        return []
    now = rt.clock.now()
    facts = LeadFacts(session, lead, now)
    created = []
    for sequence in rt.sequences:
        if not any(
            t.kind == fired.kind and (not t.values or fired.value in t.values)
            for t in sequence.enrol.on
        ):
            continue
        if not _may_enrol(session, sequence, lead, now):
            continue
        if sequence.enrol.when is not None and not sequence.enrol.when.evaluate(facts):
            continue
        if sequence.enrol.unless is not None and sequence.enrol.unless.evaluate(facts):
            continue
        first = sequence.milestones[0].id
        enrolment = Enrolment(
            lead_id=lead.id,
            sequence=sequence.name,
            sequence_version=_pin(session, rt, sequence),
            status=EnrolmentStatus.ACTIVE,
            milestone=first,
            position=0,
            pass_no=1,
            exhausted=False,
            next_run_at=now,
            enrolled_at=now,
            milestone_entered_at=now,
            trigger=str(fired),
            holdout=held_out(lead, sequence),
        )
        session.add(enrolment)  # flushed with the rest of the batch; the visit follows it
        remembered = _remembered(session, lead)
        if remembered is not None:
            remembered.append(enrolment)
        session.add(
            MilestoneVisit(
                enrolment=enrolment,
                milestone=first,
                reason=f"enrolled on {fired}",
                entered_at=now,
            )
        )
        move_on_triggers(session, rt, enrolment, sequence, facts.since(now))
        created.append(enrolment)
    return created


def _pin(session: Session, rt: Runtime, sequence: Sequence) -> str:
    """`rt.pin`, once per version in a batch of events (the memo remembers what it stored)."""
    memo = memo_of(session)
    if memo is not None and sequence.version in memo.pinned.get(sequence.name, ()):
        return sequence.version
    version = rt.pin(session, sequence)
    if memo is not None:
        memo.pinned.setdefault(sequence.name, set()).add(version)
    return version


def _may_enrol(session: Session, sequence: Sequence, lead: Lead, now: datetime) -> bool:
    """Apply the re-enrolment policy: never twice at once, again only when the sequence allows."""
    remembered = _remembered(session, lead)
    if remembered is not None:
        mine = [e for e in remembered if e.sequence == sequence.name]
        previous = max(mine, key=lambda e: (e.enrolled_at, e.id)) if mine else None
    else:
        previous = session.scalars(_LATEST_IN, {"lead": lead.id, "sequence": sequence.name}).first()
    if previous is None:
        return True
    if previous.status == EnrolmentStatus.ACTIVE:
        return False
    if sequence.enrol.again_after is not None:
        return previous.enrolled_at + sequence.enrol.again_after <= now
    return sequence.enrol.again


def on_lead_changed(session: Session, rt: Runtime, lead: Lead) -> list[Enrolment]:
    """After events or score changes: apply exit rules, then score triggers, to every enrolment.

    A lead that left nurture (SQL, customer) leaves every sequence, with its stage as the reason.
    Returns the enrolments still running afterwards.
    """
    if lead.stage in OUT_OF_NURTURE:
        end_all(session, rt, lead, lead.stage)
        return []
    facts = LeadFacts(session, lead, rt.clock.now())
    running = []
    for enrolment in active_enrolments(session, lead):
        sequence = running_version(session, rt, enrolment)
        if sequence is None:
            continue
        since = facts.since(enrolment.enrolled_at)
        rule = next((c for c in sequence.exit_when if c.evaluate(since)), None)
        if rule is not None:
            exit_enrolment(session, rt, enrolment, f"exit_when: {rule.text}")
            continue
        move_on_triggers(session, rt, enrolment, sequence, since)
        running.append(enrolment)
    return running


def running_version(session: Session, rt: Runtime, enrolment: Enrolment) -> Sequence | None:
    """The version the enrolment is pinned to; None, and the enrolment ended, if it has none.

    Only enrolments made before versions were stored can lack one: they ran on the disk's
    sequence, and leave when it no longer holds their milestone.
    """
    sequence = rt.pinned(session, enrolment.sequence, enrolment.sequence_version)
    if sequence is None:
        exit_enrolment(session, rt, enrolment, "sequence removed")
    elif enrolment.milestone not in {m.id for m in sequence.milestones}:
        exit_enrolment(session, rt, enrolment, "sequence changed")
        return None
    return sequence


def move_on_triggers(
    session: Session, rt: Runtime, enrolment: Enrolment, sequence: Sequence, facts: LeadFacts
) -> bool:
    """Jump to the furthest later milestone whose enter_when holds; triggers only move forward."""
    current = sequence.index(enrolment.milestone)
    for milestone in reversed(sequence.milestones[current + 1 :]):
        if milestone.enter_when is not None and milestone.enter_when.evaluate(facts):
            enter_milestone(
                session, rt, enrolment, milestone.id, f"enter_when: {milestone.enter_when.text}"
            )
            return True
    return False


def enter_milestone(
    session: Session, rt: Runtime, enrolment: Enrolment, milestone: str, reason: str
) -> None:
    """Start a milestone's steps now; planned sends of the milestone left behind go stale."""
    now = rt.clock.now()
    if enrolment.id is not None:  # a new enrolment has no sends yet
        _skip_planned(session, enrolment, f"lead moved to milestone {milestone}")
    enrolment.milestone = milestone
    enrolment.position = 0
    enrolment.pass_no += 1
    enrolment.exhausted = False
    enrolment.milestone_entered_at = now
    enrolment.next_run_at = now
    session.add(
        MilestoneVisit(enrolment=enrolment, milestone=milestone, reason=reason, entered_at=now)
    )


def exit_enrolment(session: Session, rt: Runtime, enrolment: Enrolment, reason: str) -> None:
    """End an enrolment for good, with its reason; its planned sends are skipped."""
    _skip_planned(session, enrolment, f"enrolment ended: {reason}")
    enrolment.status = EnrolmentStatus.EXITED
    enrolment.exit_reason = reason
    enrolment.exited_at = rt.clock.now()
    enrolment.next_run_at = None


def end_all(session: Session, rt: Runtime, lead: Lead, reason: str) -> list[Enrolment]:
    """Exit every active enrolment of the lead (SQL handoff, customer)."""
    ended = active_enrolments(session, lead)
    for enrolment in ended:
        exit_enrolment(session, rt, enrolment, reason)
    return ended


def _skip_planned(session: Session, enrolment: Enrolment, reason: str) -> None:
    session.execute(_SKIP_PLANNED, {"enrolment": enrolment.id, "reason": reason})


def lock_enrolments(session: Session, enrolment_ids: Collection[int]) -> dict[int, Enrolment]:
    """Load enrolments holding their row locks (the caller holds their leads' locks first)."""
    query = _ENROLMENTS_LOCKED if is_postgres(session) else _ENROLMENTS
    rows = session.scalars(query, {"ids": sorted(set(enrolment_ids))})
    return {enrolment.id: enrolment for enrolment in rows}


def lock_enrolment(session: Session, enrolment_id: int) -> Enrolment | None:
    """Load an enrolment holding its row lock so two workers never advance it at once."""
    return lock_enrolments(session, [enrolment_id]).get(enrolment_id)


def advance(session: Session, rt: Runtime, enrolment: Enrolment, lead: Lead) -> list[Delivery]:
    """Run the enrolment's steps from where it stands until a wait, the end, or an exit;
    the caller holds the row locks of the enrolment and of its `lead`."""
    if enrolment.status != EnrolmentStatus.ACTIVE:
        return []
    sequence = running_version(session, rt, enrolment)
    if sequence is None:
        return []
    now = rt.clock.now()
    if enrolment.next_run_at is None or enrolment.next_run_at > now:
        return []  # not due: a duplicate message or a lead that already moved on
    enrolment.lease_until = None
    planned: list[Delivery] = []
    if enrolment.exhausted:
        _finish_milestone(session, rt, enrolment, sequence, timed_out=True)
    for _ in range(MAX_INSTRUCTIONS):
        if enrolment.status != EnrolmentStatus.ACTIVE or enrolment.exhausted:
            return planned
        program = rt.program(sequence, enrolment.milestone)
        if enrolment.position >= len(program):
            _finish_milestone(session, rt, enrolment, sequence, timed_out=False)
            continue
        step = program[enrolment.position]
        if isinstance(step, Send):
            delivery = _plan(session, rt, enrolment, lead, sequence, step, now)
            planned.extend([delivery] if delivery is not None else [])
            enrolment.position += 1
        elif isinstance(step, Wait):
            enrolment.position += 1
            enrolment.next_run_at = now + step.duration
            return planned
        elif isinstance(step, Test):
            facts = LeadFacts(session, lead, now, since=enrolment.milestone_entered_at)
            holds = step.condition.evaluate(facts)
            enrolment.position = enrolment.position + 1 if holds else step.otherwise
        elif isinstance(step, Jump):
            enrolment.position = step.target
        elif isinstance(step, Goto):
            _goto(session, rt, enrolment, step.target, f"goto from {enrolment.milestone}")
    raise RuntimeError(f"enrolment {enrolment.id} looped through {MAX_INSTRUCTIONS} steps")


def _goto(session: Session, rt: Runtime, enrolment: Enrolment, target: str, reason: str) -> None:
    if target == "exit":
        exit_enrolment(session, rt, enrolment, f"completed ({reason})")
    else:
        enter_milestone(session, rt, enrolment, target, reason)


def _finish_milestone(
    session: Session, rt: Runtime, enrolment: Enrolment, sequence: Sequence, *, timed_out: bool
) -> None:
    """A milestone whose steps are done waits for a trigger, times out to `goto`, or exits."""
    when_done = sequence.milestone(enrolment.milestone).when_done
    if timed_out or (when_done.goto is not None and when_done.after is None):
        reason = f"{enrolment.milestone} timed out" if timed_out else f"{enrolment.milestone} done"
        _goto(session, rt, enrolment, when_done.goto or "exit", reason)
        return
    enrolment.exhausted = True
    enrolment.next_run_at = rt.clock.now() + when_done.after if when_done.after else None


def _plan(
    session: Session,
    rt: Runtime,
    enrolment: Enrolment,
    lead: Lead,
    sequence: Sequence,
    step: Send,
    now: datetime,
) -> Delivery | None:
    """Create the delivery row for a send step, due at the first moment its window allows.

    None when this pass already planned the step: an edit that moved a step the lead had
    passed to ahead of it never sends it twice. The send-time guards check again (and add
    frequency caps); planning in the window keeps the queue free of sends that could only
    be deferred. A lead in the holdout group gets the row skipped (None: nothing to send),
    so its timeline shows what it was held out of.
    """
    key = (enrolment.id, step.id, enrolment.pass_no)
    memo = memo_of(session)
    if memo is not None and memo.planned is not None:
        if key in memo.planned:
            return None
        memo.planned.add(key)
    elif (
        session.scalar(_PLANNED_BEFORE, {"enrolment": key[0], "step": key[1], "pass_no": key[2]})
        is not None
    ):
        return None
    variant, status, due, detail = None, DeliveryStatus.SKIPPED, now, None
    if enrolment.holdout:
        detail = f"holdout: held out of {sequence.name} to measure its lift"
    else:
        window = sequence.send.window
        status = DeliveryStatus.PLANNED
        due = open_slot(rt.send, now, lead.zone, window, step.channel)
        if due > now:
            detail = deferral(rt.send, now, due, lead.zone, window, step.channel)
        if step.variants:
            variant = choose_variant(session, lead, sequence, enrolment.milestone, step)
    delivery = Delivery(
        id=str(uuid.uuid4()),
        enrolment_id=enrolment.id,
        lead_id=enrolment.lead_id,
        sequence=enrolment.sequence,
        milestone=enrolment.milestone,
        step=step.id,
        pass_no=enrolment.pass_no,
        channel=step.channel,
        template=variant.template if variant is not None else step.template,
        variant=variant.id if variant is not None else None,
        status=status,
        planned_at=now,
        due_at=due,
        attempts=0,
        detail=detail,
    )
    session.add(delivery)
    return None if enrolment.holdout else delivery
