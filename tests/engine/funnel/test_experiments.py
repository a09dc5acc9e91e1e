"""Experiments while leads run: variants drawn by lead and step, kept across edits, a picked
winner for later leads, and a holdout group that is sent nothing but scores and hands off."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.db import make_engine, make_sessionmaker
from engine.delivery.rendering import Renderer, sample_context
from engine.funnel.experiments import by_weight, choose_variant, draw
from engine.funnel.service import track
from engine.models import (
    Base,
    Delivery,
    DeliveryStatus,
    Enrolment,
    Handoff,
    Lead,
    Stage,
    VariantPick,
)
from engine.read.timeline import timeline
from engine.read.views import find_by_key, lead_detail
from engine.runner.inline import run_due
from engine.runner.winners import pick_variant
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Send, Sequence, Variant
from tests.conftest import START
from tests.engine import rows
from tests.engine.conftest import EMAIL_TEMPLATES, FIXTURES, SMS_TEMPLATES

ROOT = Path(__file__).resolve().parents[3]
TRIAL = """\
name: trial
enrol: {on: {event: [form_submitted]}, again: always}
send: {from: "Acme <hello@acme.test>"}
milestones:
  - id: awareness
    steps:
      - email: welcome
        variants:
          - {id: plain, weight: WEIGHT}
          - {id: story, template: customer_story}
      - wait: 1d
    when_done: exit
"""


def runtime(tmp_path: Path, clock: FrozenClock, text: str) -> Runtime:
    """A runtime of the test scoring and one sequence written as `text`."""
    folder = tmp_path / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "scoring.yml", folder)
    (folder / "trial.yml").write_text(text)
    return Runtime(load_workflows(folder, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)


def enrol_all(sessions: sessionmaker[Session], rt: Runtime, emails: list[str]) -> None:
    """Enrol these leads on a form submission and run what falls due."""
    with sessions.begin() as s:
        for email in emails:
            track(s, rt, {"email": email}, "form_submitted")
    run_due(sessions, rt)


def variants_of(session: Session) -> dict[str, list[str | None]]:
    """Each lead's variants of the welcome step, in the order they were planned."""
    rows = session.execute(
        select(Lead.email, Delivery.variant)
        .join(Lead, Lead.id == Delivery.lead_id)
        .order_by(Delivery.planned_at, Delivery.id)
    )
    found: dict[str, list[str | None]] = {}
    for email, variant in rows:
        found.setdefault(str(email), []).append(variant)
    return found


def test_the_split_matches_the_weights_within_a_chi_square_bound_over_10000_leads() -> None:
    variants = [Variant("a", "welcome", 5), Variant("b", "welcome", 3), Variant("c", "welcome", 2)]
    keys = [f"lead{i}@northwind.test" for i in range(10_000)]
    drawn = Counter(by_weight(variants, draw(k, "trial", "awareness", "s")).id for k in keys)
    assert chisquare([drawn["a"], drawn["b"], drawn["c"]], [5000, 3000, 2000]).pvalue > 0.001
    again = Counter(by_weight(variants, draw(k, "trial", "awareness", "s")).id for k in keys)
    assert again == drawn  # the same lead and step always draw the same variant
    other = Counter(by_weight(variants, draw(k, "trial", "awareness", "t")).id for k in keys)
    assert other != drawn  # another step draws independently


def test_a_lead_gets_its_drawn_variant_and_keeps_it_when_weights_change(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    rt = runtime(tmp_path / "before", clock, TRIAL.replace("WEIGHT", "1"))
    leads = [f"lead{i}@northwind.test" for i in range(40)]
    enrol_all(sessions, rt, leads)
    with sessions.begin() as s:
        first = variants_of(s)
        templates = dict(s.execute(select(Delivery.variant, Delivery.template)).all())
    assert set(templates.items()) == {("plain", "welcome"), ("story", "customer_story")}
    step = rt.workflows.sequences["trial"].milestones[0].steps[0]
    assert isinstance(step, Send)
    for email in leads:  # the draw, and nothing but the draw, chose each one
        expected = by_weight(step.variants, draw(email, "trial", "awareness", step.id)).id
        assert first[email] == [expected]
    # A marketer moves nearly all the weight to `plain` and enrols the leads again.
    edited = runtime(tmp_path / "after", clock, TRIAL.replace("WEIGHT", "1000"))
    clock.advance(timedelta(days=2))
    run_due(sessions, edited)
    newcomer = "late@northwind.test"
    enrol_all(sessions, edited, [*leads, newcomer])
    with sessions.begin() as s:
        second = variants_of(s)
    assert all(second[email] == first[email] * 2 for email in leads)
    assert second[newcomer] == ["plain"]  # drawn with the new weights: 1000 to 1


def test_a_picked_winner_goes_to_later_leads_only(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    rt = runtime(tmp_path, clock, TRIAL.replace("WEIGHT", "1"))
    early = [f"early{i}@northwind.test" for i in range(20)]
    enrol_all(sessions, rt, early)
    with sessions.begin() as s:
        before = variants_of(s)
        pick = pick_variant(s, rt, "trial", "email:welcome", "story", START)
        assert (pick.kind, pick.variant, pick.reason) == ("manual", "story", "picked by hand")
    late = [f"late{i}@northwind.test" for i in range(20)]
    enrol_all(sessions, rt, late)
    with sessions.begin() as s:
        after = variants_of(s)
        assert s.scalar(select(VariantPick.step)) == "email:welcome"
    assert {email: after[email] for email in early} == before
    assert {v for email in late for v in after[email]} == {"story"}
    assert {v for email in early for v in after[email]} == {"plain", "story"}


def test_a_held_out_lead_is_sent_nothing_but_scores_stages_and_hands_off(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    text = (FIXTURES / "drip.yml").read_text() + "holdout: 50%\n"
    rt = runtime(tmp_path, clock, text.replace("name: drip", "name: trial"))
    emails = [f"lead{i}@northwind.test" for i in range(12)]
    held = {e for e in emails if draw(e, "trial", "holdout") < 0.5}
    assert 0 < len(held) < len(emails)
    with sessions.begin() as s:
        for email in emails:
            track(s, rt, {"email": email, "title": "VP Sales"}, "form_submitted")
    run_due(sessions, rt)
    for _ in range(3):  # 10 + 3 x 8 points: MQL, then a demo request: SQL (fit 10)
        with sessions.begin() as s:
            for email in emails:
                track(s, rt, {"email": email}, "content_downloaded")
        clock.advance(timedelta(days=1))
        run_due(sessions, rt)
    with sessions.begin() as s:
        for email in emails:
            track(s, rt, {"email": email}, "demo_requested")
    run_due(sessions, rt)
    with sessions.begin() as s:
        enrolled = dict(s.execute(select(Lead.email, Enrolment.holdout).join(Enrolment)).all())
        assert {e for e, h in enrolled.items() if h} == held
        sends = s.execute(
            select(Lead.email, Delivery.status, Delivery.detail).join(
                Lead, Lead.id == Delivery.lead_id
            )
        ).all()
        assert sends and all(
            (status == DeliveryStatus.SKIPPED and detail.startswith("holdout:")) == (email in held)
            for email, status, detail in sends
        )
        assert {e for e, _, _ in sends} == set(emails)  # held-out leads' timelines show them
        stages = dict(s.execute(select(Lead.email, Lead.stage)).all())
        assert set(stages.values()) == {Stage.SQL}
        assert s.scalar(select(Handoff.id).join(Lead).where(Lead.email.in_(held))) is not None
        assert len(s.scalars(select(Handoff)).all()) == len(emails)


def test_a_variant_subject_replaces_the_template_subject_and_keeps_its_body() -> None:
    renderer = Renderer(ROOT / "templates")
    context = sample_context()
    plain = renderer.render_email("welcome", context)
    own = renderer.render_email("welcome", context, "Hi {{ lead.first_name }} & <team>\nthere")
    assert own.subject == f"Hi {context['lead']['first_name']} & <team> there"
    assert (own.html, own.text) == (plain.html, plain.text) and own.subject != plain.subject


weights = st.lists(st.floats(0.1, 10), min_size=2, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=weights, after=weights, picked=st.booleans())
def test_leads_keep_their_variant_through_any_edit_of_weights_and_variants(
    before: list[float], after: list[float], picked: bool
) -> None:
    """Property: whatever the weights before and after (variants added or dropped), a lead
    that got a variant still in the step keeps it; others draw under the new weights or get
    the pick."""
    engine = make_engine("sqlite://")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    rt = Runtime(load_workflows(FIXTURES, EMAIL_TEMPLATES, SMS_TEMPLATES), FrozenClock(START))
    sequence: Sequence = rt.workflows.sequences["drip"]
    old = Send(
        "email",
        "welcome",
        "s",
        variants=tuple(Variant(f"v{i}", "welcome", w) for i, w in enumerate(before)),
    )
    new = replace(old, variants=tuple(Variant(f"v{i}", "welcome", w) for i, w in enumerate(after)))
    with sessions.begin() as s:
        leads = [rows.lead(s, f"p{i}@x.test") for i in range(30)]
        got = {}
        for lead in leads[:20]:
            variant = choose_variant(s, lead, sequence, "awareness", old)
            got[lead.id] = variant.id
            enrolment = rows.enrolment(s, lead, sequence="drip", at=START)
            rows.sent(s, enrolment, step="s", variant=variant.id, at=START)
        if picked:
            s.add(
                VariantPick(
                    sequence="drip",
                    milestone="awareness",
                    step="s",
                    variant=new.variants[-1].id,
                    kind="manual",
                    figures={},
                    reason="r",
                    picked_at=START,
                )
            )
        s.flush()
        for lead in leads:
            now = choose_variant(s, lead, sequence, "awareness", new).id
            if lead.id in got and new.variant(got[lead.id]) is not None:
                assert now == got[lead.id]
            elif picked:
                assert now == new.variants[-1].id
            else:
                point = draw(lead.key, "drip", "awareness", "s")
                assert now == by_weight(new.variants, point).id
    engine.dispose()


def test_lead_show_and_the_timeline_name_the_variant_and_the_holdout(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    rt = runtime(tmp_path, clock, TRIAL.replace("WEIGHT", "1") + "holdout: 50%\n")
    emails = [f"lead{i}@northwind.test" for i in range(12)]
    held = next(e for e in emails if draw(e, "trial", "holdout") < 0.5)
    sent = next(e for e in emails if draw(e, "trial", "holdout") >= 0.5)
    enrol_all(sessions, rt, [held, sent])
    step = rt.workflows.sequences["trial"].milestones[0].steps[0]
    assert isinstance(step, Send)
    drawn = by_weight(step.variants, draw(sent, "trial", "awareness", step.id))
    with sessions() as s:
        shown = lead_detail(s, find_by_key(s, sent))
        assert [(d["variant"], d["template"]) for d in shown["deliveries"]] == [
            (drawn.id, drawn.template)
        ]
        assert [e["holdout"] for e in shown["enrolments"]] == [False]
        texts = [e.text for e in timeline(s, find_by_key(s, sent).id)]
        assert f"email {drawn.template} (variant {drawn.id})" in texts
        hidden = lead_detail(s, find_by_key(s, held))
        assert [e["holdout"] for e in hidden["enrolments"]] == [True]
        assert [(d["variant"], d["status"]) for d in hidden["deliveries"]] == [(None, "skipped")]
        reasons = [e.reason for e in timeline(s, find_by_key(s, held).id) if e.kind == "skipped"]
        assert reasons == ["holdout: held out of trial to measure its lift"]


def test_a_renamed_step_keeps_its_leads_variants_and_its_pick(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path: Path
) -> None:
    rt = runtime(tmp_path / "before", clock, TRIAL.replace("WEIGHT", "1"))
    early = [f"early{i}@northwind.test" for i in range(12)]
    enrol_all(sessions, rt, early)
    with sessions.begin() as s:
        before = variants_of(s)
        pick_variant(s, rt, "trial", "email:welcome", "story", START)
    renamed = (
        TRIAL.replace("WEIGHT", "1")
        .replace("  - id: awareness\n", "  - id: hello\n    renamed_from: awareness\n")
        .replace("      - email: welcome\n", "      - email: welcome\n        id: greeting\n"
                 "        renamed_from: email:welcome\n")
    )  # fmt: skip
    edited = runtime(tmp_path / "after", clock, renamed)
    clock.advance(timedelta(days=2))
    run_due(sessions, edited)
    late = [f"late{i}@northwind.test" for i in range(6)]
    enrol_all(sessions, edited, [*early, *late])
    with sessions.begin() as s:
        after = variants_of(s)
        steps = set(s.scalars(select(Delivery.step)))
    assert steps == {"email:welcome", "greeting"}
    assert all(after[email] == before[email] * 2 for email in early)  # kept across the rename
    assert {v for email in late for v in after[email]} == {"story"}  # the pick still holds
