"""Rescore: the past replayed under changed scoring rules, planned first, then written to the
ledger as rescore rows, with SQL handoffs only when asked for."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.db import make_engine, make_sessionmaker
from engine.funnel.lifecycle import StageMove
from engine.funnel.rescore import plan_rescore, rescore
from engine.funnel.service import recycle_lead, track
from engine.models import Base, Handoff, Lead, LedgerKind, ScoreEntry, Stage
from engine.read.timeline import score_series
from engine.runner.inline import run_due
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from engine.workflow.versions import store_all
from tests.conftest import START
from tests.engine.conftest import EMAIL_TEMPLATES, SHIPPED, SMS_TEMPLATES

PRICING = {"url": "https://acme.test/pricing"}
ANA = {"email": "ana@northwind.test", "title": "Analyst"}
BEN = {"email": "ben@contoso.test", "title": "Analyst"}


def _edited(root: Path, clock: FrozenClock, **rules: dict[str, Any]) -> Runtime:
    """The shipped workflows with scoring.yml edited: per rule id, new `points` or `limit`;
    `thresholds` replaces the MQL and SQL thresholds."""
    folder = root / f"workflows-{len(list(root.glob('workflows-*')))}"
    shutil.copytree(SHIPPED, folder)
    text = (folder / "scoring.yml").read_text()
    for rule, change in rules.items():
        if rule == "thresholds":
            text = re.sub(r"  mql: .*\n", f"  mql: {change['mql']}\n", text)
            text = re.sub(r"  sql: .*\n", f"  sql: {change['sql']}\n", text)
            continue
        start = text.index(f"- id: {rule}\n")
        end = text.find("\n  - id:", start)
        end = len(text) if end < 0 else end
        block = text[start:end]
        if "points" in change:
            block = re.sub(r"points: -?\d+", f"points: {change['points']}", block)
        if "limit" in change:
            block = re.sub(r"\n\s+limit: [^\n]*", "", block)
            if change["limit"] is not None:
                block += f"\n    limit: {change['limit']}"
        text = text[:start] + block + text[end:]
    (folder / "scoring.yml").write_text(text)
    return Runtime(load_workflows(folder, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)


def _ledger_sums_to_scores(session: Session) -> None:
    for lead in session.scalars(select(Lead)):
        total = session.scalar(
            select(func.sum(ScoreEntry.points)).where(ScoreEntry.lead_id == lead.id)
        )
        assert abs(float(total or 0) - lead.score) < 1e-6, lead.key
        assert abs(lead.fit - sum(lead.fit_rules.values())) < 1e-6, lead.key


def _rescore_rows(session: Session) -> list[tuple[str, str, float, str]]:
    rows = session.execute(
        select(Lead.email, ScoreEntry.rule, ScoreEntry.points, ScoreEntry.reason)
        .join(Lead, Lead.id == ScoreEntry.lead_id)
        .where(ScoreEntry.kind == LedgerKind.RESCORE)
        .order_by(ScoreEntry.id)
    )
    return [(email or "", rule, points, reason) for email, rule, points, reason in rows]


def test_unchanged_rules_replay_an_in_order_history_to_exactly_its_ledger(
    sessions: sessionmaker[Session], shipped_rt: Runtime, clock: FrozenClock
) -> None:
    """Limits, negative points, decay after a quiet spell and a recycle by sales: the replay
    runs the live rules, so a history that came in order needs no rescore at all."""
    with sessions.begin() as s:
        for _ in range(2):
            track(s, shipped_rt, ANA, "page_viewed", PRICING)
            track(s, shipped_rt, ANA, "content_downloaded")
            clock.advance(timedelta(hours=5))
        track(s, shipped_rt, ANA, "form_submitted")
        track(s, shipped_rt, BEN, "email_clicked")
        track(s, shipped_rt, BEN, "unsubscribed")
        ana = s.scalars(select(Lead).where(Lead.email == ANA["email"])).one()
        recycle_lead(s, shipped_rt, ana.id, "not now")
        clock.advance(timedelta(days=2))
        track(s, shipped_rt, ANA, "page_viewed", PRICING)
        track(s, shipped_rt, ANA, "email_opened")
    clock.advance(timedelta(days=30))
    run_due(sessions, shipped_rt)  # decay of the quiet month
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).where(ScoreEntry.kind == LedgerKind.DECAY))
        assert s.scalar(select(func.count()).where(ScoreEntry.kind == LedgerKind.RESET))
    with sessions() as s:
        plan = plan_rescore(s, shipped_rt)
    assert (plan.leads, plan.changed, sum(plan.moves.values())) == (2, 0, 0), plan.movers
    done = rescore(sessions, shipped_rt)
    assert (done.leads, done.changed) == (2, 0)
    with sessions() as s:
        assert _rescore_rows(s) == []


def test_more_points_for_pricing_make_new_mqls_with_one_rescore_row_naming_both_versions(
    sessions: sessionmaker[Session], shipped_rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    with sessions.begin() as s:
        store_all(s, shipped_rt.workflows, clock.now())
        track(s, shipped_rt, ANA, "content_downloaded")
        track(s, shipped_rt, ANA, "page_viewed", PRICING)
        track(s, shipped_rt, BEN, "content_downloaded")
    clock.advance(timedelta(days=1))
    new = _edited(tmp_path, clock, pricing_page_view={"points": 15})
    with sessions.begin() as s:
        store_all(s, new.workflows, clock.now())  # as `nurture run` does with the new file
        plan = plan_rescore(s, new)
    assert (plan.changed, plan.moves[StageMove.MQL], plan.moves[StageMove.SQL]) == (1, 1, 0)
    [mover] = plan.movers
    assert (mover.key, mover.before, mover.after, mover.rules) == (
        ANA["email"],
        15,
        23,
        {"pricing_page_view": 8},
    )
    assert (plan.before[1], plan.after[2]) == (1, 1)  # Ana's bar moves from 10..19 to 20..29

    done = rescore(sessions, new)
    assert (done.changed, done.moves[StageMove.MQL], done.handed_off) == (1, 1, [])
    old_hash, new_hash = (
        next(f.hash for f in rt.workflows.sources if f.kind == "scoring")
        for rt in (shipped_rt, new)
    )
    with sessions() as s:
        [(email, rule, points, reason)] = _rescore_rows(s)
        assert (email, rule, points) == (ANA["email"], "pricing_page_view", 8)
        assert reason.startswith(f"rescore {old_hash} -> {new_hash}: Viewed the pricing page")
        ana = s.scalars(select(Lead).where(Lead.email == ANA["email"])).one()
        assert (ana.score, ana.stage) == (23, Stage.MQL)
        _ledger_sums_to_scores(s)

    again = rescore(sessions, new)
    assert (again.changed, sum(again.moves.values())) == (0, 0)
    with sessions() as s:
        assert len(_rescore_rows(s)) == 1


def test_a_new_sql_is_only_listed_without_handoff_and_handed_off_once_with_it(
    sessions: sessionmaker[Session], shipped_rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    with sessions.begin() as s:
        track(s, shipped_rt, BEN, "form_submitted")
        track(s, shipped_rt, BEN, "content_downloaded")
        track(s, shipped_rt, BEN, "page_viewed", PRICING)  # 25 points: an MQL
        track(s, shipped_rt, ANA, "content_downloaded")
    new = _edited(tmp_path, clock, thresholds={"mql": 20, "sql": 25})
    with sessions() as s:
        plan = plan_rescore(s, new)
    assert (plan.changed, plan.moves[StageMove.SQL], plan.sql) == (0, 1, [BEN["email"]])

    held = rescore(sessions, new)
    assert (held.held, held.handed_off, held.moves[StageMove.SQL]) == ([BEN["email"]], [], 1)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Handoff)) == 0
        ben = s.scalars(select(Lead).where(Lead.email == BEN["email"])).one()
        assert ben.stage == Stage.MQL

    handed = rescore(sessions, new, handoff=True)
    assert (handed.handed_off, handed.held) == ([BEN["email"]], [])
    assert rescore(sessions, new, handoff=True).handed_off == []
    with sessions() as s:
        [handoff] = s.scalars(select(Handoff))
        assert handoff.reasons["cause"].startswith("rescore ")
        assert s.get(Lead, handoff.lead_id).stage == Stage.SQL  # type: ignore[union-attr]


def test_a_removed_fit_rule_and_a_tighter_limit_take_their_points_back(
    sessions: sessionmaker[Session], shipped_rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    with sessions.begin() as s:
        for _ in range(3):
            track(s, shipped_rt, ANA | {"title": "VP Marketing"}, "content_downloaded")
            clock.advance(timedelta(hours=1))
    folder = tmp_path / "workflows-removed"
    shutil.copytree(SHIPPED, folder)
    text = (folder / "scoring.yml").read_text()
    start = text.index("  - id: senior_title")
    text = text[:start] + text[text.index("  - id: company_size") :]
    text = text.replace("limit: 3 per 7d", "limit: once")
    (folder / "scoring.yml").write_text(text)
    new = Runtime(load_workflows(folder, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)
    rescore(sessions, new)
    with sessions() as s:
        ana = s.scalars(select(Lead).where(Lead.email == ANA["email"])).one()
        assert (ana.fit, ana.engagement, ana.fit_rules) == (0, 8, {})
        assert sorted((rule, points) for _, rule, points, _ in _rescore_rows(s)) == [
            ("content_download", -16),
            ("senior_title", -10),
        ]
        _ledger_sums_to_scores(s)
        fit_rules = [rule.id for rule in new.workflows.scoring.fit]
        # the score chart puts the removed fit rule's rescore row on the fit half
        assert score_series(s, ana.id, fit_rules)[-1][1:] == (8, 0, 8)


def test_a_recycle_at_zero_engagement_still_zeroes_what_came_before_it(
    sessions: sessionmaker[Session], shipped_rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    """Recycling a lead whose engagement is 0 leaves no ledger row, yet under rules that
    gave it points the recycle takes them: the replay reads recycles from the stage moves."""
    with sessions.begin() as s:
        track(s, shipped_rt, BEN, "form_submitted")
        track(s, shipped_rt, BEN, "bounced")  # 10 - 10: engagement 0
        ben = s.scalars(select(Lead).where(Lead.email == BEN["email"])).one()
        ben.stage = Stage.MQL  # as if sales had it
        recycle_lead(s, shipped_rt, ben.id, "not now")
        assert s.scalar(select(func.count()).where(ScoreEntry.kind == LedgerKind.RESET)) == 0
    clock.advance(timedelta(hours=1))
    new = _edited(tmp_path, clock, form_submission={"points": 30})
    with sessions() as s:
        plan = plan_rescore(s, new)
    assert (plan.changed, plan.movers) == (0, [])
    assert rescore(sessions, new).changed == 0


KINDS = [
    ("page_viewed", PRICING),
    ("content_downloaded", {}),
    ("form_submitted", {}),
    ("email_clicked", {}),
    ("demo_requested", {}),
    ("unsubscribed", {}),
]
LIMITS = [None, "once", "once per day", "2 per 1d", "3 per 7d"]
RULES = {
    "pricing_page_view": "page_viewed",
    "content_download": "content_downloaded",
    "form_submission": "form_submitted",
    "email_click": "email_clicked",
    "demo_request": "demo_requested",
}
edits = st.dictionaries(
    st.sampled_from(sorted(RULES)),
    st.fixed_dictionaries(
        {}, optional={"points": st.integers(-10, 40).filter(bool), "limit": st.sampled_from(LIMITS)}
    ),
    max_size=4,
)
history = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, len(KINDS) - 1), st.integers(0, 24 * 40)),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=history, changes=edits, mql=st.integers(10, 40), sql=st.integers(30, 80))
def test_after_any_rule_change_the_ledger_sums_to_the_score_and_rescore_does_what_the_plan_said(
    tmp_path: Path,
    shipped_rt: Runtime,
    events: list[tuple[int, int, int]],
    changes: dict[str, dict[str, Any]],
    mql: int,
    sql: int,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'property.db'}")
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    clock = FrozenClock(START)
    live = replace(shipped_rt, clock=clock)
    titles = ["VP Marketing", "Analyst", "CTO", "Student"]
    for who, kind, hours in sorted(events, key=lambda e: e[2]):
        clock.set(START + timedelta(hours=hours))
        lead = {"email": f"lead{who}@example.test", "title": titles[who]}
        with sessions.begin() as s:
            track(s, live, lead, KINDS[kind][0], KINDS[kind][1])
    clock.set(START + timedelta(days=41))
    run_due(sessions, live)
    new = _edited(tmp_path, clock, thresholds={"mql": mql, "sql": sql}, **changes)
    with sessions() as s:
        plan = plan_rescore(s, new)
        rows = s.scalar(select(func.count()).select_from(ScoreEntry))
        handoffs = s.scalar(select(func.count()).select_from(Handoff))

    done = rescore(sessions, new, batch=2)
    assert (done.leads, done.changed) == (plan.leads, plan.changed)
    assert done.moves == plan.moves
    assert done.held == plan.sql and done.handed_off == []
    with sessions() as s:
        _ledger_sums_to_scores(s)
        assert s.scalar(select(func.count()).select_from(Handoff)) == handoffs
        after = s.scalar(select(func.count()).select_from(ScoreEntry))
        scores = dict(s.execute(select(Lead.id, Lead.fit + Lead.engagement)).all())

    again = rescore(sessions, new, batch=3)
    assert (again.changed, again.handed_off) == (0, [])
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ScoreEntry)) == after
        assert dict(s.execute(select(Lead.id, Lead.fit + Lead.engagement)).all()) == scores
    assert after is not None and rows is not None and after >= rows
    engine.dispose()
