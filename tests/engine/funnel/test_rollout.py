"""Living sequences: leads stay pinned to their version until `apply` moves them by step id."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.funnel.rollout import StrandedError, apply, make_plan
from engine.funnel.service import track
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Event,
    EventStatus,
    Lead,
    ScoreEntry,
    VersionMove,
    WorkflowVersion,
)
from engine.read.timeline import timeline
from engine.runner.inline import run_due
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from engine.workflow.versions import store_all
from tests.engine.conftest import EMAIL_TEMPLATES, SHIPPED, SMS_TEMPLATES

ANA = {"email": "ana@northwind.test"}
Edit = Callable[[str], str]


def runtime(folder: Path, clock: FrozenClock, edit: Edit | None = None) -> Runtime:
    """The shipped workflows, with lead-nurture.yml edited, as a freshly started process."""
    folder.mkdir(exist_ok=True)
    for path in SHIPPED.glob("*.yml"):
        shutil.copy(path, folder)
    if edit is not None:
        nurture = folder / "lead-nurture.yml"
        text = nurture.read_text()
        edited = edit(text)
        assert edited != text, "the edit changed nothing"
        nurture.write_text(edited)
    return Runtime(load_workflows(folder, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)


def enrolment(session: Session) -> Enrolment:
    query = select(Enrolment).where(Enrolment.sequence == "lead-nurture")
    return session.scalars(query.order_by(Enrolment.id.desc())).one()


def templates(session: Session) -> list[tuple[str, str]]:
    rows = session.scalars(select(Delivery).order_by(Delivery.planned_at, Delivery.id))
    return [(d.template, d.status) for d in rows]


def enrolled_after_welcome(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    """Ana fills a form: welcome is planned, she waits 2 days before case_study."""
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert templates(s) == [("welcome", "planned")]
        assert enrolment(s).next_run_at == clock.now() + timedelta(days=2)


RENAME = ("  - id: awareness\n", "  - id: discovery\n")


def rename(text: str) -> str:
    text = text.replace(*RENAME)
    return text.replace("goto: awareness", "goto: discovery")


def test_a_renamed_milestone_keeps_its_leads_running_and_their_events_stored_until_apply(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    enrolled_after_welcome(sessions, old, clock)
    new = runtime(tmp_path / "v2", clock, rename)  # the marketer renames it and restarts

    with sessions.begin() as s:
        outcome = track(s, new, ANA, "content_downloaded")
    with sessions.begin() as s:
        event = s.get_one(Event, outcome.event_id)
        assert event.status == EventStatus.PROCESSED
        assert s.scalars(select(Lead)).one().engagement == 18  # 10 + 8: scored
        assert enrolment(s).milestone == "awareness"  # pinned: still running version 1
    clock.advance(timedelta(days=2))
    run_due(sessions, new)
    with sessions.begin() as s:
        assert templates(s)[-1] == ("case_study", "planned")  # keeps moving
        plan = make_plan(s, new)
    assert plan.stranded == [("lead-nurture", "awareness after wait#2", 1)]
    with pytest.raises(StrandedError, match="awareness after wait#2"):
        apply(sessions, new)
    with sessions.begin() as s:
        assert enrolment(s).sequence_version == old.workflows.sequences["lead-nurture"].version


def test_renamed_from_moves_the_lead_to_the_renamed_milestone_at_the_same_step(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    enrolled_after_welcome(sessions, old, clock)

    def declared(text: str) -> str:
        return rename(text).replace(
            "  - id: discovery\n", "  - id: discovery\n    renamed_from: awareness\n"
        )

    new = runtime(tmp_path / "v2", clock, declared)
    moved_from = old.workflows.sequences["lead-nurture"].version
    with sessions.begin() as s:
        plan = make_plan(s, new)
    [entry] = plan.sequences
    assert "milestone awareness renamed to discovery" in entry.changes
    assert [(g.place, g.to, g.leads) for g in entry.groups] == [
        ("awareness after wait", "discovery after wait", 1)
    ]
    done = apply(sessions, new)
    assert (done.moved, done.exited) == (1, 0)
    with sessions.begin() as s:
        moved = enrolment(s)
        assert (moved.milestone, moved.sequence_version) == (
            "discovery",
            new.workflows.sequences["lead-nurture"].version,
        )
        assert moved.next_run_at == clock.now() + timedelta(days=2)  # the wait unchanged
        move = s.scalars(select(VersionMove)).one()
        assert (move.from_place, move.to_place) == ("awareness after wait", "discovery after wait")
        lines = [e.text for e in timeline(s, moved.lead_id) if e.kind == "version"]
        assert lines == [
            f"lead-nurture: awareness after wait (version {moved_from}) ->"
            f" discovery after wait (version {moved.sequence_version})"
        ]
    assert apply(sessions, new).moved == 0  # applied once: a second run finds nothing
    clock.advance(timedelta(days=2))
    run_due(sessions, new)
    with sessions.begin() as s:
        assert templates(s)[-1] == ("case_study", "planned")


def test_a_step_inserted_ahead_of_the_lead_is_sent_and_one_behind_it_is_not(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    enrolled_after_welcome(sessions, old, clock)

    def insert(text: str) -> str:
        text = text.replace(
            "      - email: welcome\n", "      - email: whats_new\n      - email: welcome\n"
        )
        return text.replace(
            "      - wait: 2d\n      - email: case_study\n",
            "      - wait: 2d\n      - email: last_chance\n      - email: case_study\n",
        )

    new = runtime(tmp_path / "v2", clock, insert)
    with sessions.begin() as s:
        [entry] = make_plan(s, new).sequences
    assert "milestone awareness: step email:whats_new added" in entry.changes
    assert "milestone awareness: step email:last_chance added" in entry.changes
    apply(sessions, new)
    clock.advance(timedelta(days=2))
    run_due(sessions, new)
    with sessions.begin() as s:
        sent = [t for t, _ in templates(s)]
    # planned at one moment, so compared without order; not whats_new: it lies behind
    assert sorted(sent) == ["case_study", "last_chance", "welcome"]


def test_a_step_the_lead_got_that_moves_ahead_of_it_is_not_sent_again(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    enrolled_after_welcome(sessions, old, clock)

    def reorder(text: str) -> str:
        text = text.replace("      - email: welcome\n      - wait: 2d\n", "      - wait: 2d\n", 1)
        return text.replace(
            "      - email: case_study\n", "      - email: welcome\n      - email: case_study\n", 1
        )

    new = runtime(tmp_path / "v2", clock, reorder)
    with sessions.begin() as s:
        [entry] = make_plan(s, new).sequences
    assert "milestone awareness: steps reordered" in entry.changes
    apply(sessions, new)
    clock.advance(timedelta(days=2))
    run_due(sessions, new)
    with sessions.begin() as s:
        assert [t for t, _ in templates(s)] == ["welcome", "case_study"]


def test_a_removed_step_is_not_sent_and_the_lead_goes_on_to_the_next_one(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    with sessions.begin() as s:
        track(s, old, ANA, "form_submitted")
    run_due(sessions, old)
    clock.advance(timedelta(days=2))
    run_due(sessions, old)  # case_study planned, now waiting 3d before the branch
    with sessions.begin() as s:
        assert templates(s) == [("welcome", "planned"), ("case_study", "planned")]

    def remove(text: str) -> str:
        return text.replace("      - email: case_study\n      - wait: 3d\n", "", 1)

    new = runtime(tmp_path / "v2", clock, remove)
    with sessions.begin() as s:
        [entry] = make_plan(s, new).sequences
    assert [(g.place, g.to, g.note) for g in entry.groups] == [
        ("awareness after wait#2", "awareness after wait", "due now")
    ]
    apply(sessions, new)
    with sessions.begin() as s:
        assert templates(s)[1] == ("case_study", DeliveryStatus.SKIPPED)
        assert "step removed" in (
            s.scalars(select(Delivery.detail).where(Delivery.template == "case_study")).one() or ""
        )
    run_due(sessions, new)  # due now: the branch runs, welcome was not opened: the SMS step
    with sessions.begin() as s:
        assert ("quick_question", DeliveryStatus.PLANNED) in templates(s)


def test_a_changed_wait_counts_from_when_the_lead_began_it(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    enrolled_after_welcome(sessions, old, clock)
    began = clock.now()
    clock.advance(timedelta(hours=12))
    new = runtime(
        tmp_path / "v2", clock, lambda t: t.replace("      - wait: 2d\n", "      - wait: 3d\n", 1)
    )
    with sessions.begin() as s:
        [entry] = make_plan(s, new).sequences
    assert "milestone awareness: step wait 2d -> 3d" in entry.changes
    assert entry.groups[0].note == "wait 2d -> 3d, counted from when it began"
    apply(sessions, new)
    with sessions.begin() as s:
        assert enrolment(s).next_run_at == began + timedelta(days=3)


def test_on_change_pin_lets_leads_finish_the_version_they_started(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    enrolled_after_welcome(sessions, old, clock)
    new = runtime(
        tmp_path / "v2",
        clock,
        lambda t: rename(t).replace("milestones:\n", "on_change: pin\nmilestones:\n"),
    )
    with sessions.begin() as s:
        plan = make_plan(s, new)
    assert plan.stranded == [] and plan.moves == 0
    assert plan.sequences[0].groups[0].note.startswith("pinned")
    assert apply(sessions, new).moved == 0
    with sessions.begin() as s:
        assert enrolment(s).milestone == "awareness"


def test_exit_stranded_ends_the_stranded_enrolments_with_a_reason(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    enrolled_after_welcome(sessions, old, clock)
    new = runtime(tmp_path / "v2", clock, rename)
    done = apply(sessions, new, exit_stranded=True)
    assert (done.moved, done.exited) == (0, 1)
    with sessions.begin() as s:
        ended = enrolment(s)
        assert (ended.status, ended.exit_reason) == (EnrolmentStatus.EXITED, "sequence changed")
        assert templates(s) == [("welcome", DeliveryStatus.SKIPPED)]


def test_every_pinned_version_is_stored_with_its_source_once(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    enrolled_after_welcome(sessions, old, clock)
    with sessions.begin() as s:
        track(s, old, {"email": "bo@northwind.test"}, "form_submitted")
        rows = s.scalars(select(WorkflowVersion)).all()
        assert [(r.kind, r.name) for r in rows] == [("sequence", "lead-nurture")]
        assert rows[0].source == (tmp_path / "v1" / "lead-nurture.yml").read_text()
        steps = [step["id"] for step in rows[0].spec["milestones"][0]["steps"]]
        assert steps == ["email:welcome", "wait", "email:case_study", "wait#2", "branch"]


def test_an_edited_scoring_file_scores_new_events_and_keeps_the_ledger_whole(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    old = runtime(tmp_path / "v1", clock)
    lead = {**ANA, "title": "VP Marketing"}
    with sessions.begin() as s:
        track(s, old, lead, "form_submitted")
        store_all(s, old.workflows, clock.now())
    runtime(tmp_path / "v2", clock)
    scoring = tmp_path / "v2" / "scoring.yml"
    text = scoring.read_text().replace("    points: 8\n", "    points: 12\n", 1)  # downloads
    senior = text.index("  - id: senior_title")
    text = text[:senior] + text[text.index("  - id: company_size") :]  # a fit rule removed
    scoring.write_text(text)
    new = Runtime(load_workflows(tmp_path / "v2", EMAIL_TEMPLATES, SMS_TEMPLATES), clock)
    with sessions.begin() as s:
        [note] = make_plan(s, new).notes
        assert "scoring.yml changed" in note and "`nurture rescore`" in note
        track(s, new, {**lead, "company": "Northwind"}, "content_downloaded")
    with sessions.begin() as s:
        row = s.scalars(select(Lead)).one()
        ledger = s.scalars(select(ScoreEntry).where(ScoreEntry.lead_id == row.id)).all()
        assert sum(e.points for e in ledger) == row.score
        assert {(e.rule, e.points) for e in ledger} >= {
            ("form_submission", 10),  # given under the old rules: kept
            ("content_download", 12),  # the new points for the new event
            ("senior_title", -10),  # the removed fit rule gives its points back
        }
