"""`nurture experiments list`, `report` and `pick`, run as a marketer would on a project whose
sequence tests two emails against each other and holds a share of its leads out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from engine.cli.main import main
from engine.clock import FrozenClock
from engine.db import make_engine, make_sessionmaker
from engine.models import Enrolment, Stage
from engine.runner.winners import decide_winners
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from tests.engine import rows
from tests.engine.conftest import EMAIL_TEMPLATES, SMS_TEMPLATES
from tests.engine.read.test_experiment_reports import EMAIL_STEP, SMS_STEP, write_workflows

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime.now(UTC)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


class Project:
    """A workflows folder with the `trial` sequence, a SQLite database, and `nurture ARGS`."""

    def __init__(self, folder: Path) -> None:
        self.workflows = write_workflows(folder / "workflows")
        self.database = f"sqlite:///{folder / 'cli.db'}"
        self.runner = CliRunner()

    def __call__(self, *args: str, columns: int = 120) -> Result:
        return self.runner.invoke(main, list(args), env={"COLUMNS": str(columns)})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    nurture = Project(tmp_path)
    monkeypatch.setenv("NURTURE_DATABASE_URL", nurture.database)
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(nurture.workflows))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    monkeypatch.setenv("NURTURE_OUTBOX_DIR", str(tmp_path / "outbox"))
    assert nurture("init").exit_code == 0
    return nurture


def _enrolled(s: Session, name: str, held: bool, sql_after: float | None) -> Enrolment:
    """A lead enrolled 20 days ago (at stage lead) that reached SQL `sql_after` days later."""
    lead = rows.lead(s, f"{name}@x.test", at=NOW)
    enrolment = rows.enrolment(s, lead, sequence="trial", at=days_ago(20), holdout=held)
    if sql_after is not None:
        rows.stage_change(s, lead, days_ago(20 - sql_after), Stage.LEAD, Stage.SQL)
    return enrolment


@pytest.fixture
def results(project: Project) -> Project:
    """Ten sends of each email variant, 19 days ago: 2 and 7 clicked, which the winner rule
    decides for case_study. Of those 20 sent leads every other one reached SQL (after 4 days);
    of 4 held-out leads one did (after 10 days)."""
    engine = make_engine(project.database)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        for variant, clicks in (("welcome", 1), ("case_study", 8)):
            for n in range(10):
                enrolment = _enrolled(s, f"{variant}{n}", False, 4 if n % 2 == 0 else None)
                delivery = rows.sent(
                    s,
                    enrolment,
                    step=EMAIL_STEP,
                    variant=variant,
                    at=days_ago(19) + timedelta(minutes=n),
                    delivery_id=f"{variant}-{n}",
                    template=variant,
                )
                if n < clicks:
                    rows.feedback(s, delivery, "email_clicked", days_ago(18))
        for n in range(4):
            _enrolled(s, f"held{n}", True, 10 if n == 0 else None)
    workflows = load_workflows(project.workflows, EMAIL_TEMPLATES, SMS_TEMPLATES)
    with sessions.begin() as s:
        [decided] = decide_winners(s, Runtime(workflows, FrozenClock(NOW)), NOW)
    engine.dispose()
    assert decided.variant == "case_study"
    return project


def test_list_shows_each_variants_rate_its_status_and_the_holdout(results: Project) -> None:
    result = results("experiments", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    [welcome] = [line for line in lines if "│ welcome " in line]
    assert "decided: case_study" in welcome and "10.0%" in welcome
    assert "│ 10 " in welcome  # sends
    [case_study] = [line for line in lines if "│ case_study " in line]
    assert "80.0%" in case_study
    assert any("running" in line and "quick_question" in line for line in lines)
    assert "trial: 10.0% of new leads held out" in result.output


def test_list_json_gives_every_experiment_with_its_variants_and_the_holdouts(
    results: Project,
) -> None:
    result = results("experiments", "list", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    email, sms = data["experiments"]
    assert (email["step"], email["status"], email["pick"]["variant"]) == (
        EMAIL_STEP,
        "decided",
        "case_study",
    )
    assert [(v["id"], v["sends"], v["successes"], v["rate"]) for v in email["variants"]] == [
        ("welcome", 10, 1, 0.1),
        ("case_study", 10, 8, 0.8),
    ]
    assert (sms["step"], sms["status"], sms["metric"]) == (SMS_STEP, "running", "replied")
    assert data["holdouts"] == [{"sequence": "trial", "share": 0.1}]


def test_report_shows_the_decision_its_figures_and_the_holdout_lift_in_words(
    results: Project,
) -> None:
    result = results("experiments", "report", "trial")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "clicked within 3d, winner after 10 sends each at 90% confidence" in out
    assert "decision: case_study (auto" in out and "case_study won on clicked at look 1" in out
    assert "welcome: 1 of 10 (10.0%), p = 0.0055 against it" in out  # Fisher: few sends
    assert "case_study: 8 of 10 (80.0%)" in out
    assert "leads: 20 sent, 4 held out" in out
    assert "SQL: 10 of 20 sent leads reached SQL (50.0%) vs" in out and "lift +100% (95% CI" in out
    assert "vs 1 of 4 held out (25.0%)" in out
    assert "median days from enrolment to SQL: 4 sent, 10 held out" in out


def test_report_text_does_not_depend_on_the_terminal_width(results: Project) -> None:
    narrow = results("experiments", "report", "trial", columns=40)
    wide = results("experiments", "report", "trial", columns=240)
    assert narrow.exit_code == wide.exit_code == 0
    assert narrow.output == wide.output
    assert (
        results("experiments", "list", columns=40).output
        == results("experiments", "list", columns=240).output
    )


def test_report_json_has_the_steps_and_the_holdout_figures(results: Project) -> None:
    result = results("experiments", "report", "trial", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["sequence"] == "trial" and data["holdout_share"] == 0.1
    holdout = data["holdout"]
    assert (holdout["sent"]["sql"], holdout["held_out"]["sql"]) == (
        {"eligible": 20, "converted": 10, "rate": 0.5},
        {"eligible": 4, "converted": 1, "rate": 0.25},
    )
    assert holdout["sql_lift"]["lift"] == pytest.approx(1.0)
    assert holdout["held_out"]["median_days_to_sql"] == 10.0


def test_pick_gives_a_variant_to_every_later_lead_and_says_what_it_overrode(
    results: Project,
) -> None:
    picked = results("experiments", "pick", "trial", EMAIL_STEP, "welcome")
    assert picked.exit_code == 0, picked.output
    assert picked.output == (
        f"trial awareness/{EMAIL_STEP}: every later lead gets welcome"
        " (picked by hand (was case_study, auto))\n"
    )
    sms = results("experiments", "pick", "trial", f"awareness/{SMS_STEP}", "demo_nudge")
    assert sms.exit_code == 0, sms.output
    listed = json.loads(results("experiments", "list", "--json").output)["experiments"]
    assert [(e["status"], e["pick"]["variant"]) for e in listed] == [
        ("picked", "welcome"),
        ("picked", "demo_nudge"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pick", "nope", "welcome", "welcome"), "unknown sequence 'nope'"),
        (("pick", "trial", "email:nope", "welcome"), "'email:nope' is no step with variants"),
        (("pick", "trial", EMAIL_STEP, "nope"), "unknown variant 'nope' (variants: welcome"),
        (("report", "nope"), "unknown sequence 'nope' (sequences: drip, trial, winback)"),
    ],
)
def test_an_unknown_sequence_step_or_variant_exits_1_with_the_reason(
    project: Project, args: tuple[str, ...], message: str
) -> None:
    result = project("experiments", *args)
    assert result.exit_code == 1
    assert f"error: {message}" in result.output


def test_list_with_no_experiments_says_so(project: Project) -> None:
    (project.workflows / "trial.yml").unlink()
    result = project("experiments", "list")
    assert result.exit_code == 0
    assert "no experiments" in result.output
