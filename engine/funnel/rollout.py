"""Plan and apply: move enrolments in flight to the sequences on disk, like a schema migration.

`plan` reads which versions active enrolments are pinned to and says, per sequence, what
changed and where each group of leads goes; `apply` does exactly that, in batches of one
transaction each, and can be run again to finish what an interrupted run left.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import NurtureError
from engine.funnel.journey import exit_enrolment, lock_enrolment
from engine.funnel.leads import lock_lead
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    VersionKind,
    VersionMove,
    WorkflowVersion,
)
from engine.workflow.changes import Landing, MilestoneMap, describe, milestone_map, place_of
from engine.workflow.runtime import Runtime
from engine.workflow.spec import OnChange, Sequence, Wait
from engine.workflow.versions import store_all

STRANDED_EXIT = "sequence changed"


class StrandedError(NurtureError):
    """Raised when apply would leave leads in a milestone the new version no longer has."""

    def __init__(self, plan: Plan, message: str = "") -> None:
        if not message:
            groups = "; ".join(f"{s}: {n} lead(s) at {p}" for s, p, n in plan.stranded)
            message = (
                f"stranded leads, nothing applied: {groups}. Add renamed_from to the milestone"
                " that replaces theirs, or run apply --exit-stranded to let them exit"
            )
        super().__init__(message)
        self.plan = plan


class Move(StrEnum):
    """What apply did with one enrolment."""

    MOVED = "moved"
    EXITED = "exited"
    STRANDED = "stranded"  # became stranded after the plan: refuse
    UNCHANGED = "unchanged"  # ended or already moved meanwhile


@dataclass
class Group:
    """Leads resting at one place of one old version, and where they go (None: stranded)."""

    place: str
    leads: int
    to: str | None
    note: str = ""


@dataclass
class SequencePlan:
    """One sequence whose in-flight leads run an older version than the file on disk."""

    name: str
    from_version: str
    to_version: str | None  # None: the file is gone
    pinned: bool = False  # on_change: pin, leads finish the version they started on
    changes: list[str] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)

    @property
    def stranded(self) -> int:
        """Leads with nowhere to go in the new version."""
        return 0 if self.pinned else sum(g.leads for g in self.groups if g.to is None)


@dataclass
class Plan:
    """Everything `apply` would do, and what changed in scoring.yml and sending.yml."""

    sequences: list[SequencePlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def stranded(self) -> list[tuple[str, str, int]]:
        """(sequence, place, leads) of every stranded group."""
        return [
            (s.name, g.place, g.leads)
            for s in self.sequences
            if not s.pinned
            for g in s.groups
            if g.to is None
        ]

    @property
    def moves(self) -> int:
        """Leads `apply` would move to a new version."""
        return sum(
            g.leads for s in self.sequences if not s.pinned for g in s.groups if g.to is not None
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data for --json."""
        data = asdict(self)
        data["stranded"] = [{"sequence": s, "place": p, "leads": n} for s, p, n in self.stranded]
        data["moves"] = self.moves
        return data


class Planner:
    """Maps places of old versions to the sequences on disk, each map built once."""

    def __init__(self, session: Session, rt: Runtime) -> None:
        self.session, self.rt = session, rt
        self.maps: dict[tuple[str, str, str], MilestoneMap | None] = {}

    def old(self, name: str, version: str) -> Sequence | None:
        """The pinned version (or, made before versions were stored, the file's own)."""
        return self.rt.pinned(self.session, name, version)

    def current(self, name: str) -> Sequence | None:
        """The sequence on disk now."""
        return self.rt.workflows.sequences.get(name)

    def landing(
        self, name: str, version: str, milestone: str, position: int, exhausted: bool
    ) -> tuple[str, Landing | None]:
        """The old place in words, and where it lands (None: stranded)."""
        old, new = self.old(name, version), self.current(name)
        if old is None or milestone not in {m.id for m in old.milestones}:
            return f"{milestone} (unknown)", None
        program = self.rt.program(old, milestone)
        place = place_of(program, milestone, position, exhausted)
        key = (name, version, milestone)
        if key not in self.maps:
            target = milestone_map(old, new).get(milestone) if new is not None else None
            self.maps[key] = (
                MilestoneMap(old.milestone(milestone), new.milestone(target))
                if new is not None and target is not None
                else None
            )
        mapping = self.maps[key]
        if mapping is None:
            return str(place), None
        waited = program[position - 1] if 0 < position <= len(program) else None
        old_wait = waited.duration if isinstance(waited, Wait) and not exhausted else None
        return str(place), mapping.land(place, old_wait)


def _pending(session: Session, rt: Runtime) -> Iterator[tuple[str, str]]:
    """(sequence, version) pairs that active enrolments run and the disk no longer holds."""
    rows = session.execute(
        select(Enrolment.sequence, Enrolment.sequence_version)
        .where(Enrolment.status == EnrolmentStatus.ACTIVE)
        .group_by(Enrolment.sequence, Enrolment.sequence_version)
        .order_by(Enrolment.sequence, Enrolment.sequence_version)
    ).all()
    for name, version in rows:
        current = rt.workflows.sequences.get(name)
        if current is None or current.version != version:
            yield name, version


def make_plan(session: Session, rt: Runtime) -> Plan:
    """What apply would do now; reads only."""
    planner = Planner(session, rt)
    plan = Plan(notes=_file_notes(session, rt))
    for name, version in _pending(session, rt):
        old, new = planner.old(name, version), planner.current(name)
        entry = SequencePlan(name, version, new.version if new is not None else None)
        entry.pinned = new is not None and new.on_change == OnChange.PIN
        if new is None:
            entry.changes.append(f"sequence {name} removed from the workflows folder")
        elif old is not None and old.version == version:
            entry.changes.extend(describe(old, new))
        else:
            entry.changes.append("version unknown (enrolled before versions were stored)")
        rows = session.execute(
            select(Enrolment.milestone, Enrolment.position, Enrolment.exhausted, func.count())
            .where(
                Enrolment.status == EnrolmentStatus.ACTIVE,
                Enrolment.sequence == name,
                Enrolment.sequence_version == version,
            )
            .group_by(Enrolment.milestone, Enrolment.position, Enrolment.exhausted)
            .order_by(Enrolment.milestone, Enrolment.position)
        ).all()
        grouped: dict[tuple[str, str | None, str], int] = {}
        for milestone, position, exhausted, count in rows:
            place, landing = planner.landing(name, version, milestone, position, exhausted)
            if entry.pinned:
                to, note = place, f"pinned: finishes version {version}"
            elif landing is None:
                to, note = None, _stranded_note(new is None, milestone)
            else:
                to, note = str(landing.place), landing.note()
            grouped[(place, to, note)] = grouped.get((place, to, note), 0) + int(count)
        entry.groups = [Group(p, n, to, note) for (p, to, note), n in grouped.items()]
        plan.sequences.append(entry)
    return plan


def _stranded_note(removed: bool, milestone: str) -> str:
    if removed:
        return "stranded: the sequence was removed"
    return f"stranded: milestone {milestone} was removed; add renamed_from or --exit-stranded"


def _file_notes(session: Session, rt: Runtime) -> list[str]:
    """scoring.yml and sending.yml: said when they differ from the last stored version."""
    notes = []
    for source in rt.workflows.sources:
        last = session.scalar(
            select(WorkflowVersion.hash)
            .where(
                WorkflowVersion.kind == VersionKind(source.kind),
                WorkflowVersion.name == source.name,
            )
            .order_by(WorkflowVersion.first_seen_at.desc(), WorkflowVersion.id.desc())
            .limit(1)
        )
        if last is None or last == source.hash:
            continue
        if source.kind == VersionKind.SCORING:
            notes.append(
                f"{source.file} changed ({last} -> {source.hash}): the new rules score new events;"
                " `nurture rescore` brings the ledger of the past in line with them"
            )
        else:
            notes.append(
                f"{source.file} changed ({last} -> {source.hash}): applies to every send from now"
            )
    return notes


@dataclass
class Applied:
    """What one apply did, and the plan it followed."""

    plan: Plan
    moved: int = 0
    exited: int = 0


def apply(
    sessions: sessionmaker[Session],
    rt: Runtime,
    *,
    exit_stranded: bool = False,
    batch: int = 500,
) -> Applied:
    """Move every in-flight enrolment to the version on disk as the plan says, batch by batch.

    Refuses (StrandedError with the plan, nothing changed) while leads are stranded, unless
    told to exit them with reason 'sequence changed'. Sequences with `on_change: pin` are left
    alone. The files on disk are stored as versions, so the next plan compares with them.
    """
    with sessions.begin() as session:
        plan = make_plan(session, rt)
        if plan.stranded and not exit_stranded:
            raise StrandedError(plan)
        store_all(session, rt.workflows, rt.clock.now())
    done = Applied(plan)
    movable = [s.name for s in plan.sequences if not s.pinned]
    after = 0
    while movable:
        with sessions.begin() as session:
            ids = list(
                session.scalars(
                    select(Enrolment.id)
                    .where(
                        Enrolment.id > after,
                        Enrolment.status == EnrolmentStatus.ACTIVE,
                        Enrolment.sequence.in_(movable),
                    )
                    .order_by(Enrolment.id)
                    .limit(batch)
                )
            )
            if not ids:
                break
            planner = Planner(session, rt)
            for enrolment_id in ids:
                move = _move(session, rt, planner, enrolment_id, exit_stranded)
                if move == Move.STRANDED:
                    message = (
                        f"enrolment {enrolment_id} became stranded after the plan: apply again"
                    )
                    raise StrandedError(plan, message)
                if move == Move.MOVED:
                    done.moved += 1
                elif move == Move.EXITED:
                    done.exited += 1
            after = ids[-1]
    return done


def _move(
    session: Session, rt: Runtime, planner: Planner, enrolment_id: int, exit_stranded: bool
) -> Move:
    """Move one enrolment under its locks (lead first, as every writer takes them)."""
    lead_id = session.scalar(select(Enrolment.lead_id).where(Enrolment.id == enrolment_id))
    if lead_id is None:
        return Move.UNCHANGED
    lock_lead(session, lead_id)
    enrolment = lock_enrolment(session, enrolment_id)
    if enrolment is None or enrolment.status != EnrolmentStatus.ACTIVE:
        return Move.UNCHANGED
    new = planner.current(enrolment.sequence)
    if new is not None and new.version == enrolment.sequence_version:
        return Move.UNCHANGED
    old_version, milestone = enrolment.sequence_version, enrolment.milestone
    place, landing = planner.landing(
        enrolment.sequence, old_version, milestone, enrolment.position, enrolment.exhausted
    )
    now = rt.clock.now()
    if landing is None or new is None:
        if not exit_stranded:
            return Move.STRANDED
        exit_enrolment(session, rt, enrolment, STRANDED_EXIT)
        _record(session, enrolment, old_version, new, place, "exited", STRANDED_EXIT, now)
        return Move.EXITED
    old = planner.old(enrolment.sequence, old_version)
    assert old is not None
    _retime(enrolment, landing, old, new, now)
    enrolment.sequence_version = new.version
    enrolment.milestone = landing.place.milestone
    enrolment.position = landing.position
    enrolment.exhausted = landing.exhausted
    mapping = planner.maps[(enrolment.sequence, old_version, milestone)]
    assert mapping is not None
    _carry_planned(session, enrolment, mapping, new.version)
    _record(session, enrolment, old_version, new, place, str(landing.place), landing.note(), now)
    return Move.MOVED


def _retime(
    enrolment: Enrolment, landing: Landing, old: Sequence, new: Sequence, now: datetime
) -> None:
    """The new due time: the new wait from when the old began, now, or the new timeout."""
    due = enrolment.next_run_at
    if landing.wait is not None and due is not None:
        began = due - landing.wait[0]
        enrolment.next_run_at = max(now, began + landing.wait[1])
    elif landing.due_now:
        enrolment.next_run_at = now
    elif landing.exhausted and enrolment.exhausted:
        was = old.milestone(enrolment.milestone).when_done.after
        will = new.milestone(landing.place.milestone).when_done.after
        began = due - was if due is not None and was is not None else now
        enrolment.next_run_at = max(now, began + will) if will is not None else None


def _carry_planned(
    session: Session, enrolment: Enrolment, mapping: MilestoneMap, version: str
) -> None:
    """Planned sends follow their step to its new id; a step the edit removed is not sent."""
    planned = session.scalars(
        select(Delivery).where(
            Delivery.enrolment_id == enrolment.id, Delivery.status == DeliveryStatus.PLANNED
        )
    )
    for delivery in planned:
        new_id = mapping.names.get(delivery.step)
        if new_id is None:
            delivery.status = DeliveryStatus.SKIPPED
            delivery.detail = f"step removed by an edit (version {version})"
        else:
            delivery.step, delivery.milestone = new_id, mapping.new.id


def _record(
    session: Session,
    enrolment: Enrolment,
    old_version: str,
    new: Sequence | None,
    place: str,
    to: str,
    note: str,
    now: datetime,
) -> None:
    """Put the move on the enrolment's timeline."""
    session.add(
        VersionMove(
            enrolment_id=enrolment.id,
            from_version=old_version,
            to_version=new.version if new is not None else "",
            from_place=place,
            to_place=to,
            note=note,
            moved_at=now,
        )
    )
