"""Winners: the group-sequential test decides once, on a known answer, rarely on equal variants;
the scheduler records the decision and later leads get the winner; a pick by hand overrides."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.errors import UnknownExperimentError, UnknownSequenceError
from engine.funnel.experiments import choose_variant
from engine.models import Event, Lead, VariantPick
from engine.read.significance import MAX_LOOKS, judge, proportion_p
from engine.read.variants import Place
from engine.runner.actors import Tasks
from engine.runner.winners import JUDGE_EVERY, decide_winners, pick_variant
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Send
from tests.apps import outbox_app
from tests.conftest import START
from tests.engine import rows
from tests.engine.conftest import EMAIL_TEMPLATES, FIXTURES, SMS_TEMPLATES

TRIAL = """\
name: trial
enrol: {on: {event: [form_submitted]}}
send: {from: "Acme <hello@acme.test>"}
milestones:
  - id: awareness
    steps:
      - email: welcome
        variants: [{id: a}, {id: b, template: customer_story}]
        winner: {metric: clicked, within: 2d, after: 100, confidence: 0.95}
"""


def history(rng: random.Random, rates: dict[str, float], n: int) -> dict[str, list[bool]]:
    return {v: [rng.random() < p for _ in range(n)] for v, p in rates.items()}


def test_a_known_difference_wins_at_the_first_look_whose_test_says_so() -> None:
    outcomes = history(random.Random(7), {"a": 0.10, "b": 0.20}, 1000)
    verdict = judge(outcomes, after=100, confidence=0.95)
    assert verdict is not None and verdict.variant == "b"
    for look in range(1, verdict.look + 1):  # by hand: the first look under its alpha
        n = look * 100
        p = proportion_p(sum(outcomes["b"][:n]), n, sum(outcomes["a"][:n]), n)
        assert (p < 0.05 / 2**look) == (look == verdict.look)
    assert verdict.sends == {"a": verdict.look * 100, "b": verdict.look * 100}
    assert judge(outcomes, 100, 0.95) == verdict  # judged again: the same decision


def test_no_look_is_judged_before_every_variant_has_enough_sends() -> None:
    outcomes = {"a": [False] * 99, "b": [True] * 500}
    assert judge(outcomes, after=100, confidence=0.95) is None


def test_equal_variants_give_a_false_winner_no_more_often_than_the_error_rate() -> None:
    """400 experiments of two equal variants, each looked at ten times: the looks together
    may spend alpha = 0.05, so about 20 false winners are allowed; more than 34 has a chance
    under 0.1% if the test keeps its promise."""
    rng = random.Random(11)
    false_winners = sum(
        judge(history(rng, {"a": 0.2, "b": 0.2}, 1000), after=100, confidence=0.95) is not None
        for _ in range(400)
    )
    assert false_winners <= 34


def test_three_variants_need_the_leader_to_beat_both_others() -> None:
    outcomes = history(random.Random(3), {"a": 0.1, "b": 0.3, "c": 0.3}, 600)
    assert judge(outcomes, after=100, confidence=0.95) is None  # b and c are not told apart
    outcomes = history(random.Random(3), {"a": 0.1, "b": 0.3, "c": 0.1}, 600)
    verdict = judge(outcomes, after=100, confidence=0.95)
    assert verdict is not None and verdict.variant == "b" and set(verdict.p_values) == {"a", "c"}


@pytest.fixture
def trial(tmp_path: Path, clock: FrozenClock) -> Runtime:
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(FIXTURES / "scoring.yml", folder)
    (folder / "trial.yml").write_text(TRIAL)
    return Runtime(load_workflows(folder, EMAIL_TEMPLATES, SMS_TEMPLATES), clock)


def send_history(session: Session, rates: dict[str, float], per_variant: int) -> None:
    """Sent deliveries of the trial step, one lead each, an hour apart in rounds, with clicks."""
    rng = random.Random(5)
    for i in range(per_variant):
        for variant, rate in rates.items():
            lead = rows.lead(session, f"{variant}{i}@northwind.test")
            sent_at = START + timedelta(hours=i)
            delivery = rows.sent(
                session,
                rows.enrolment(session, lead, sequence="trial", at=START),
                step="email:welcome",
                variant=variant,
                at=sent_at,
                delivery_id=f"{variant}-{i}",
            )
            if rng.random() < rate:  # a click a day later: inside the 2-day window
                rows.feedback(session, delivery, "email_clicked", sent_at + timedelta(days=1))
            elif rng.random() < rate:  # a click three days later: outside it, not counted
                rows.feedback(session, delivery, "email_clicked", sent_at + timedelta(days=3))


def test_the_scheduler_decides_a_winner_once_and_later_leads_get_it(
    sessions: sessionmaker[Session], trial: Runtime
) -> None:
    with sessions.begin() as s:
        send_history(s, {"a": 0.08, "b": 0.30}, 300)
    # 51 sends of each have had their two days by then: too few for the first look.
    early = START + timedelta(days=2, hours=50)
    with sessions.begin() as s:
        assert decide_winners(s, trial, early) == []
    later = START + timedelta(days=20)
    with sessions.begin() as s:
        assert len(decide_winners(s, trial, later)) == 1
    with sessions.begin() as s:
        picks = s.scalars(select(VariantPick)).all()
        assert len(picks) == 1 and picks[0].variant == "b" and picks[0].kind == "auto"
        figures = picks[0].figures
        assert figures["metric"] == "clicked" and figures["variants"]["b"]["rate"] > 0.2
        assert "b won on clicked at look" in picks[0].reason
        assert decide_winners(s, trial, later + timedelta(days=30)) == []
        newcomer = Lead(email="new@northwind.test", created_at=START, updated_at=START)
        s.add(newcomer)
        s.flush()
        sequence = trial.workflows.sequences["trial"]
        step = sequence.milestones[0].steps[0]
        assert isinstance(step, Send)
        assert choose_variant(s, newcomer, sequence, "awareness", step).id == "b"


def test_equal_variants_leave_the_experiment_running(
    sessions: sessionmaker[Session], trial: Runtime
) -> None:
    with sessions.begin() as s:
        send_history(s, {"a": 0.2, "b": 0.2}, 250)
        judged: dict[Place, int] = {}
        assert decide_winners(s, trial, START + timedelta(days=20), judged) == []
        assert s.scalar(select(VariantPick.id)) is None
    place = ("trial", "awareness", "email:welcome")
    assert judged == {place: 2}  # 250 sends each: two looks of 100, judged without a winner
    # Judged again with no new look, the step is skipped: were it read, 'b' would win now.
    with sessions.begin() as s:
        s.execute(
            update(Event)
            .values(type="email_opened")
            .where(Event.lead_id.in_(select(Lead.id).where(Lead.email.like("a%"))))
        )
        assert decide_winners(s, trial, START + timedelta(days=20), judged) == []
        assert len(decide_winners(s, trial, START + timedelta(days=20))) == 1


def test_no_look_past_the_last_is_judged() -> None:
    late = [False] * (MAX_LOOKS * 10) + [True] * 500  # the difference comes after look 20
    assert judge({"a": [False] * len(late), "b": late}, after=10, confidence=0.95) is None
    early = [True] * 500 + [False] * (MAX_LOOKS * 10)
    verdict = judge({"a": [False] * len(early), "b": early}, after=10, confidence=0.95)
    assert verdict is not None and verdict.look == 1


def test_a_pick_by_hand_overrides_the_decision_and_bad_names_are_refused(
    sessions: sessionmaker[Session], trial: Runtime
) -> None:
    with sessions.begin() as s:
        send_history(s, {"a": 0.08, "b": 0.30}, 300)
        decide_winners(s, trial, START + timedelta(days=20))
    with sessions.begin() as s:
        pick = pick_variant(s, trial, "trial", "awareness/email:welcome", "a", START)
        assert pick.reason == "picked by hand (was b, auto)" and pick.kind == "manual"
    with sessions.begin() as s:
        assert [(p.variant, p.kind) for p in s.scalars(select(VariantPick))] == [("a", "manual")]
        with pytest.raises(UnknownExperimentError, match="variants: a, b"):
            pick_variant(s, trial, "trial", "email:welcome", "c", START)
        with pytest.raises(
            UnknownExperimentError, match="steps with variants: awareness/email:welcome"
        ):
            pick_variant(s, trial, "trial", "welcome", "a", START)
        with pytest.raises(UnknownSequenceError, match="sequences: trial"):
            pick_variant(s, trial, "nurture", "email:welcome", "a", START)


def test_a_scheduler_pass_judges_experiments_at_most_every_six_hours(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(FIXTURES / "scoring.yml", folder)
    (folder / "trial.yml").write_text(TRIAL)
    app = outbox_app(db, clock, tmp_path, folder)
    tasks = Tasks(StubBroker(), app)
    with app.sessions.begin() as s:
        send_history(s, {"a": 0.08, "b": 0.30}, 300)
    clock.set(START + timedelta(days=2, hours=98))  # 99 judged sends each: one too few
    tasks.scheduler_pass()
    clock.advance(JUDGE_EVERY - timedelta(minutes=1))  # enough now, but judged too recently
    tasks.scheduler_pass()
    with app.sessions() as s:
        assert s.scalar(select(VariantPick.id)) is None
    clock.advance(timedelta(minutes=1))
    tasks.scheduler_pass()
    with app.sessions() as s:
        assert s.scalars(select(VariantPick.variant)).all() == ["b"]


def test_processes_start_without_loading_scipy_until_a_test_runs() -> None:
    """SciPy costs 0.6 s and 80 MiB to load: the API, workers and CLI load it only to judge."""
    code = (
        "import sys, engine.cli.main, engine.http.api, engine.runner.actors\n"
        "assert 'scipy' not in sys.modules\n"
        "from engine.read.significance import proportion_p\n"
        "proportion_p(1, 10, 5, 10)\n"
        "assert 'scipy' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


def test_small_counts_are_judged_by_fishers_exact_test() -> None:
    """5 of 10 against 0 of 10: the chi-square says p = 0.0098, claiming more than ten sends
    hold; Fisher's exact p is 2 x C(10,5)C(10,0)/C(20,5) = 0.0325."""
    assert proportion_p(5, 10, 0, 10) == pytest.approx(2 * math.comb(10, 5) / math.comb(20, 5))
    outcomes = {"a": [True] * 5 + [False] * 5, "b": [False] * 10}
    assert judge(outcomes, after=10, confidence=0.95) is None  # 0.0325 > 0.025 at look 1
