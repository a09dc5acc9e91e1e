"""Experiment reports: each variant's sends and successes, and a holdout's leads, eligibility,
conversions, days to SQL and lift, against figures worked out by hand."""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.errors import UnknownSequenceError
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    ExperimentStatus,
    Lead,
    PickKind,
    Stage,
    VariantPick,
)
from engine.read.experiments import experiments_overview, sequence_experiments
from engine.read.holdouts import holdout_report
from engine.runner.winners import pick_variant
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Metric
from engine.workflow.versions import as_version, store
from tests.engine import rows
from tests.engine.conftest import EMAIL_TEMPLATES, FIXTURES, SMS_TEMPLATES

# A sequence with two experiments (an email with a winner rule, an SMS without) and a holdout.
TRIAL = """\
name: trial
enrol: {on: {event: [form_submitted]}}
send: {from: "Acme <hello@acme.test>", sms_from: "+15005550006"}
holdout: 10%
milestones:
  - id: awareness
    steps:
      - email: welcome
        variants:
          - {weight: 1}
          - {template: case_study}
        winner: {metric: clicked, within: 3d, after: 10, confidence: 0.9}
      - {wait: 2d}
      - sms: quick_question
        variants: [{template: quick_question}, {template: demo_nudge}]
exit_when: ["unsubscribed"]
"""
EMAIL_STEP, SMS_STEP = "email:welcome", "sms:quick_question"
NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def at(day: int, hour: int = 0) -> datetime:
    """A UTC moment in March 2026."""
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def write_workflows(folder: Path) -> Path:
    """The test scoring and sequences plus `trial.yml`, in `folder`."""
    shutil.copytree(FIXTURES, folder)
    (folder / "trial.yml").write_text(TRIAL)
    return folder


@pytest.fixture
def trial_rt(tmp_path: Path, clock: FrozenClock) -> Runtime:
    workflows = load_workflows(
        write_workflows(tmp_path / "workflows"), EMAIL_TEMPLATES, SMS_TEMPLATES
    )
    return Runtime(workflows, clock)


def lead(s: Session, name: str, stage: Stage = Stage.LEAD) -> Lead:
    """A lead created on day 1, so that it is there before any enrolment."""
    return rows.lead(s, f"{name}@x.test", stage=stage, at=at(1))


ENROLLED = at(2)


def enrol(
    s: Session, who: Lead, when: datetime = ENROLLED, held: bool = False, sequence: str = "trial"
) -> Enrolment:
    """The lead enrolled in `trial` on day 2 unless told otherwise, as most leads here are."""
    return rows.enrolment(s, who, sequence=sequence, at=when, holdout=held)


def send(
    s: Session,
    delivery_id: str,
    variant: str | None,
    sent: datetime,
    status: DeliveryStatus = DeliveryStatus.SENT,
) -> Delivery:
    """The email step sent to a lead of its own (or skipped, as for a held-out lead)."""
    delivery = rows.sent(
        s,
        enrol(s, lead(s, delivery_id)),
        step=EMAIL_STEP,
        variant=variant,
        at=sent,
        delivery_id=delivery_id,
        template=variant or "welcome",
    )
    if status != DeliveryStatus.SENT:
        delivery.status, delivery.sent_at = status, None
    return delivery


def test_the_overview_counts_each_variants_sends_matured_sends_and_successes(
    sessions: sessionmaker[Session], trial_rt: Runtime
) -> None:
    with sessions.begin() as s:
        d1 = send(s, "d1", "welcome", at(1))
        rows.feedback(s, d1, "email_clicked", at(2))  # a success: inside its 3 days
        d2 = send(s, "d2", "welcome", at(1))
        rows.feedback(s, d2, "email_clicked", at(5))  # after its window: a failure
        send(s, "d3", "welcome", at(2))  # matured, nothing happened
        send(s, "d4", "welcome", at(8))  # still inside its window at NOW
        send(s, "d5", None, at(2), status=DeliveryStatus.SKIPPED)  # held out: no send
        d6 = send(s, "d6", "case_study", at(1))
        rows.feedback(s, d6, "email_clicked", at(1, 5))
        d7 = send(s, "d7", "case_study", at(3))
        rows.feedback(s, d7, "email_opened", at(3, 5))  # an open is not a click

    with sessions() as s:
        found = experiments_overview(s, trial_rt, NOW)

    [email, sms] = [e for e in found.experiments if e.sequence == "trial"]
    assert (email.milestone, email.step, email.channel) == ("awareness", EMAIL_STEP, "email")
    assert (email.metric, email.within, email.after, email.confidence) == ("clicked", "3d", 10, 0.9)
    assert (email.status, email.pick) == (ExperimentStatus.RUNNING, None)
    figures = {
        v.id: (v.template, v.weight, v.sends, v.matured, v.successes) for v in email.variants
    }
    assert figures == {
        "welcome": ("welcome", 1.0, 4, 3, 1),
        "case_study": ("case_study", 1.0, 2, 2, 1),
    }
    assert [v.rate for v in email.variants] == [pytest.approx(1 / 3), 0.5]
    # Without a winner rule an SMS is measured on replies within a week, and has no sends yet.
    assert (sms.step, sms.metric, sms.within, sms.after, sms.confidence) == (
        SMS_STEP,
        "replied",
        "1w",
        None,
        None,
    )
    assert [(v.id, v.sends, v.rate) for v in sms.variants] == [
        ("quick_question", 0, None),
        ("demo_nudge", 0, None),
    ]
    assert [(h.sequence, h.share) for h in found.holdouts] == [("trial", 0.1)]
    assert found.as_dict()["experiments"][0]["variants"][0]["id"] == "welcome"


def test_a_decision_and_a_pick_by_hand_show_as_decided_and_picked(
    sessions: sessionmaker[Session], trial_rt: Runtime
) -> None:
    figures = {"look": 1, "variants": {"case_study": {"sends": 10, "successes": 6}}}
    with sessions.begin() as s:
        s.add(
            VariantPick(
                sequence="trial",
                milestone="awareness",
                step=EMAIL_STEP,
                variant="case_study",
                kind=PickKind.AUTO,
                figures=figures,
                reason="case_study won on clicked at look 1",
                picked_at=at(5),
            )
        )
        pick_variant(s, trial_rt, "trial", SMS_STEP, "demo_nudge", at(6))

    with sessions() as s:
        found = sequence_experiments(s, trial_rt, "trial", NOW)

    email, sms = found.experiments
    assert email.status == ExperimentStatus.DECIDED and email.pick is not None
    assert (email.pick.variant, email.pick.kind, email.pick.figures) == (
        "case_study",
        "auto",
        figures,
    )
    assert email.pick.picked_at == at(5).isoformat()
    assert sms.status == ExperimentStatus.PICKED and sms.pick is not None
    assert (sms.pick.variant, sms.pick.kind, sms.pick.reason) == (
        "demo_nudge",
        "manual",
        "picked by hand",
    )
    assert found.holdout_share == 0.1


def test_an_unknown_sequence_is_refused_naming_the_loaded_ones(
    sessions: sessionmaker[Session], trial_rt: Runtime
) -> None:
    with sessions() as s, pytest.raises(UnknownSequenceError) as raised:
        sequence_experiments(s, trial_rt, "nope", NOW)
    assert raised.value.known == ["drip", "trial", "winback"]


def test_a_sequence_that_never_held_a_lead_out_has_no_holdout_report(
    sessions: sessionmaker[Session], trial_rt: Runtime
) -> None:
    with sessions.begin() as s:
        enrol(s, lead(s, "sent"), sequence="drip")
    with sessions() as s:
        assert sequence_experiments(s, trial_rt, "drip", NOW).holdout is None
    with sessions.begin() as s:  # held out by an earlier version that had a holdout
        enrol(s, lead(s, "held"), held=True, sequence="drip")
    with sessions() as s:
        report = sequence_experiments(s, trial_rt, "drip", NOW).holdout
    assert report is not None and (report.sent.leads, report.held_out.leads) == (1, 1)


def _fisher(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact p of [[a, b], [c, d]], summed by hand from the hypergeometric."""
    row, col, n = a + b, a + c, a + b + c + d

    def p(x: int) -> float:
        return math.comb(col, x) * math.comb(n - col, row - x) / math.comb(n, row)

    seen = p(a)
    return sum(
        p(x) for x in range(max(0, row + col - n), min(row, col) + 1) if p(x) <= seen * (1 + 1e-7)
    )


@pytest.fixture
def arms(sessions: sessionmaker[Session]) -> None:
    """Seven sent and five held-out leads; each comment gives the lead's stage at enrolment
    (day 2) and what it reached after, by NOW (day 9)."""
    with sessions.begin() as s:
        s1 = lead(s, "s1", Stage.SUBSCRIBER)  # subscriber; MQL day 3, SQL day 5 (3 days)
        enrol(s, s1)
        rows.stage_change(s, s1, at(3), Stage.SUBSCRIBER, Stage.MQL)
        rows.stage_change(s, s1, at(5), Stage.MQL, Stage.SQL)
        s2 = lead(s, "s2", Stage.SQL)  # mql (day 1): SQL only; SQL day 4 noon (2.5 days)
        enrol(s, s2)
        rows.stage_change(s, s2, at(1), Stage.LEAD, Stage.MQL)
        rows.stage_change(s, s2, at(4, 12), Stage.MQL, Stage.SQL)
        enrol(s, lead(s, "s3"))  # lead, no change: eligible for both, reached neither
        s4 = lead(s, "s4", Stage.SQL)  # sql already: eligible for neither
        enrol(s, s4)
        rows.stage_change(s, s4, at(1), Stage.LEAD, Stage.SQL)
        s5 = lead(s, "s5", Stage.MQL)  # lead (its first change's from); MQL day 6
        enrol(s, s5)
        rows.stage_change(s, s5, at(6), Stage.LEAD, Stage.MQL)
        s6 = lead(s, "s6", Stage.SQL)  # subscriber; straight to SQL day 3 (1 day): both
        enrol(s, s6)
        enrol(s, s6, at(4), held=True)  # enrolled again: counted once, at its first enrolment
        rows.stage_change(s, s6, at(3), Stage.SUBSCRIBER, Stage.SQL)
        s7 = lead(s, "s7", Stage.MQL)  # recycled: both; its MQL on day 10 is after NOW
        enrol(s, s7)
        rows.stage_change(s, s7, at(1), Stage.MQL, Stage.RECYCLED)
        rows.stage_change(s, s7, at(10), Stage.RECYCLED, Stage.MQL)

        h1 = lead(s, "h1", Stage.SUBSCRIBER)  # subscriber, no change: both, neither reached
        enrol(s, h1, held=True)
        enrol(s, h1, at(1), sequence="drip")  # another sequence's enrolment does not count
        h2 = lead(s, "h2", Stage.MQL)  # lead; MQL day 4
        enrol(s, h2, held=True)
        rows.stage_change(s, h2, at(4), Stage.LEAD, Stage.MQL)
        h3 = lead(s, "h3", Stage.SQL)  # lead; MQL day 3, SQL day 7 (5 days)
        enrol(s, h3, held=True)
        rows.stage_change(s, h3, at(3), Stage.LEAD, Stage.MQL)
        rows.stage_change(s, h3, at(7), Stage.MQL, Stage.SQL)
        h4 = lead(s, "h4", Stage.MQL)  # mql (day 1): SQL only, not reached
        enrol(s, h4, held=True)
        rows.stage_change(s, h4, at(1), Stage.SUBSCRIBER, Stage.MQL)
        h5 = lead(s, "h5", Stage.MQL)  # mql at the very moment of enrolment: SQL only
        enrol(s, h5, held=True)
        rows.stage_change(s, h5, at(2), Stage.LEAD, Stage.MQL)
        enrol(s, lead(s, "late"), at(10), held=True)  # enrolled after NOW: not yet counted


def test_a_holdout_report_counts_leads_eligibility_conversions_and_days_to_sql(
    sessions: sessionmaker[Session], arms: None
) -> None:
    with sessions() as s:
        report = holdout_report(s, "trial", NOW)

    sent, held = report.sent, report.held_out
    assert (sent.leads, held.leads) == (7, 5)
    # MQL: sent s1, s3, s5, s6, s7 eligible, s1, s5, s6 reached; held h1-h3, h2 and h3 reached.
    assert (sent.mql.eligible, sent.mql.converted, sent.mql.rate) == (5, 3, 0.6)
    assert (held.mql.eligible, held.mql.converted) == (3, 2)
    # SQL: sent all but s4 eligible, s1, s2, s6 reached; held all eligible, h3 reached.
    assert (sent.sql.eligible, sent.sql.converted, sent.sql.rate) == (6, 3, 0.5)
    assert (held.sql.eligible, held.sql.converted, held.sql.rate) == (5, 1, 0.2)
    assert (sent.median_days_to_sql, held.median_days_to_sql) == (2.5, 5.0)


def test_a_holdout_reports_the_lift_its_interval_and_p_value(
    sessions: sessionmaker[Session], arms: None
) -> None:
    with sessions() as s:
        report = holdout_report(s, "trial", NOW, confidence=0.9)

    assert report.mql_lift is not None and report.sql_lift is not None
    assert report.mql_lift.lift == pytest.approx((3 / 5) / (2 / 3) - 1)  # -10%
    assert report.mql_lift.p_value == pytest.approx(_fisher(3, 2, 2, 1))
    sql = report.sql_lift
    assert sql.lift == pytest.approx(0.5 / 0.2 - 1)  # +150%
    # Katz's log interval of the risk ratio, at 90%: z = 1.6449.
    spread = 1.6448536 * math.sqrt(1 / 3 - 1 / 6 + 1 / 1 - 1 / 5)
    assert sql.low == pytest.approx(2.5 * math.exp(-spread) - 1, rel=1e-4)
    assert sql.high == pytest.approx(2.5 * math.exp(spread) - 1, rel=1e-4)
    assert sql.p_value == pytest.approx(_fisher(3, 3, 1, 4))
    assert report.sentence(Metric.SQL) == (
        f"3 of 6 sent leads reached SQL (50.0%) vs 1 of 5 held out (20.0%): lift +150% (90% CI "
        f"{sql.low:+.0%} to {sql.high:+.0%}), p = {sql.p_value:.2g}"
    )


def test_a_holdout_with_nobody_held_out_or_no_held_out_conversion_has_no_lift_value(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        sent = lead(s, "sent")
        enrol(s, sent)
        rows.stage_change(s, sent, at(3), Stage.LEAD, Stage.MQL)
    with sessions() as s:
        alone = holdout_report(s, "trial", NOW)
    assert alone.mql_lift is None and alone.sql_lift is None
    assert alone.sentence(Metric.MQL).startswith("no lift to measure yet: no held-out lead")

    with sessions.begin() as s:
        enrol(s, lead(s, "held"), held=True)
    with sessions() as s:
        both = holdout_report(s, "trial", NOW)
    assert both.mql_lift is not None
    assert (both.mql_lift.lift, both.mql_lift.low, both.mql_lift.high) == (None, None, None)
    assert both.sentence(Metric.MQL) == (
        "1 of 1 sent leads reached MQL (100.0%) vs 0 of 1 held out (0.0%):"
        " no lift figure yet: no held-out lead reached it, p = 1"
    )


def test_a_holdout_of_more_leads_than_one_query_takes_counts_each_once(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        for n in range(1203):
            row = lead(s, f"bulk{n}")
            enrol(s, row, held=n % 3 == 0)
            if n % 2 == 0:
                rows.stage_change(s, row, at(4), Stage.LEAD, Stage.MQL)
    with sessions() as s:
        report = holdout_report(s, "trial", NOW)
    assert (report.sent.leads, report.held_out.leads) == (802, 401)
    # Even n reached MQL: of n % 3 == 0 (held), those with n % 6 == 0.
    assert report.held_out.mql.converted == len(range(0, 1203, 6))
    assert report.sent.mql.converted == 602 - len(range(0, 1203, 6))


def test_a_step_whose_every_look_was_taken_without_a_winner_is_inconclusive(
    sessions: sessionmaker[Session], trial_rt: Runtime
) -> None:
    """The email step's rule looks every 10 sends: after 20 looks (200 each) it is over."""
    with sessions.begin() as s:
        for n in range(200):
            for variant in ("welcome", "case_study"):
                send(s, f"{variant}-{n}", variant, at(1))
    with sessions() as s:
        found = sequence_experiments(s, trial_rt, "trial", NOW)
    assert [e.status for e in found.experiments] == [
        ExperimentStatus.INCONCLUSIVE,  # no clicks at all: no look could name a winner
        ExperimentStatus.RUNNING,  # the SMS step has no winner rule
    ]


def test_a_holdout_compares_only_enrolments_of_versions_that_held_leads_out(
    sessions: sessionmaker[Session], trial_rt: Runtime, tmp_path: Path
) -> None:
    """Leads enrolled before the holdout existed had months more to convert: left out."""
    before = tmp_path / "before"
    write_workflows(before)
    (before / "trial.yml").write_text(TRIAL.replace("holdout: 10%\n", ""))
    old = load_workflows(before, EMAIL_TEMPLATES, SMS_TEMPLATES).sequences["trial"]
    new = trial_rt.workflows.sequences["trial"]
    with sessions.begin() as s:
        store(s, [as_version(old), as_version(new)], NOW)
        early = lead(s, "early")
        rows.enrolment(s, early, sequence="trial", at=at(1), version=old.version)
        rows.stage_change(s, early, at(3), Stage.LEAD, Stage.SQL)
        for name, held in (("sent", False), ("held", True)):
            who = lead(s, name)
            rows.enrolment(s, who, sequence="trial", at=at(5), version=new.version, holdout=held)
    with sessions() as s:
        report = holdout_report(s, "trial", NOW)
    assert (report.sent.leads, report.held_out.leads) == (1, 1)
    assert report.sent.sql.converted == 0  # the early lead's SQL is not the holdout's to count
