"""Variants, winner rules and holdouts in sequence YAML: read with stable ids, mistakes located."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from engine.app import load
from engine.errors import WorkflowError
from engine.settings import Settings
from engine.workflow.changes import describe
from engine.workflow.spec import Metric, Send, Variant, Winner
from tests.engine.workflow.test_step_ids import sequence
from tests.engine.workflow.test_workflows import TRIAL, problems, trial

ROOT = Path(__file__).resolve().parents[3]
VARIANTS = """\
      - email: pricing_guide
        variants:
          - {weight: 2}
          - {template: case_study}
          - {id: short-subject, subject: "Prices, {{ lead.first_name }}?", weight: 0.5}
        winner: {metric: clicked, within: 3d, after: 200, confidence: 0.9}
"""


def with_variants(text: str = VARIANTS) -> str:
    return TRIAL.replace("      - email: pricing_guide\n", text)


def test_variants_take_their_template_subject_weight_and_a_stable_id(tmp_path: Path) -> None:
    step = sequence(tmp_path, with_variants()).milestones[1].steps[0]
    assert isinstance(step, Send) and step.id == "email:pricing_guide"
    assert step.variants == (
        Variant("pricing_guide", "pricing_guide", 2.0),
        Variant("case_study", "case_study", 1.0),
        Variant("short-subject", "pricing_guide", 0.5, "Prices, {{ lead.first_name }}?"),
    )
    assert step.winner == Winner(Metric.CLICKED, timedelta(days=3), 200, 0.9)
    assert step.variant("case_study") == step.variants[1] and step.variant("gone") is None


def test_a_winner_rule_has_defaults_and_a_holdout_is_a_share(tmp_path: Path) -> None:
    text = with_variants(
        VARIANTS.replace(
            "{metric: clicked, within: 3d, after: 200, confidence: 0.9}", "{metric: sql}"
        )
    )
    loaded = sequence(tmp_path, text + "holdout: 12.5%\n")
    step = loaded.milestones[1].steps[0]
    assert isinstance(step, Send)
    assert step.winner == Winner(Metric.SQL, timedelta(days=7), 500, 0.95)
    assert loaded.holdout == 0.125
    assert [(m, s.id) for m, s in loaded.experiments()] == [("consideration", step.id)]
    assert sequence(tmp_path / "none", TRIAL).holdout == 0.0


@pytest.mark.parametrize(
    ("edit", "line", "field", "message"),
    [
        ("- {weight: 0}", 17, "variants[0].weight", "a weight must be more than 0"),
        ("- {weight: lots}", 17, "variants[0].weight", "expected a number"),
        ("- {template: casestudy}", 17, "variants[0].template", "unknown template 'casestudy'"),
        (
            "- {template: case_study, weight: 2}",
            18,
            "variants[1]",
            "two variants resolve to the id 'case_study': give one an explicit id",
        ),
        ("- {subject: Hi}", 17, "variants[0]", "a variant with its own subject needs an id"),
    ],
)
def test_a_bad_variant_is_named_with_its_line_and_field(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    edit: str,
    line: int,
    field: str,
    message: str,
) -> None:
    text = VARIANTS.replace("- {weight: 2}", edit)
    found = problems(tmp_path, monkeypatch, {"trial.yml": with_variants(text)})
    assert any(
        p.startswith(f"workflows/trial.yml:{line}") and field in p and message in p for p in found
    ), found


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "metric: clicked",
            "metric: replied",
            "an email step cannot measure 'replied': use clicked, opened, mql, sql",
        ),
        (
            "metric: clicked",
            "metric: clikced",
            "unknown metric 'clikced' (did you mean 'clicked'?)",
        ),
        ("confidence: 0.9", "confidence: 95", "expected a confidence from 0.5 to 0.999"),
        ("after: 200", "after: 3", "expected a whole number of at least 10"),
        ("within: 3d", "within: soon", "within"),
    ],
)
def test_a_bad_winner_rule_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str, message: str
) -> None:
    found = problems(
        tmp_path, monkeypatch, {"trial.yml": with_variants(VARIANTS.replace(old, new))}
    )
    assert any("winner" in p and message in p for p in found), found


def test_variants_belong_to_sends_and_need_two_and_sms_has_no_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = problems(
        tmp_path,
        monkeypatch,
        trial(
            "      - wait: 2d\n  - id: consideration",
            "      - wait: 2d\n        variants: [{weight: 1}, {weight: 2}]\n"
            "      - sms: quick_question\n        variants:\n          - {id: a, subject: Hi}\n"
            "      - email: case_study\n        variants: [{weight: 1}]\n"
            "      - email: demo_invite\n        winner: {metric: clicked}\n"
            "  - id: consideration",
        ),
    )
    assert any("steps[1].variants: only email and sms steps have variants" in p for p in found)
    assert any("variants[0].subject: only emails have a subject" in p for p in found)
    assert any("variants need at least two entries to compare" in p for p in found)
    assert any("a winner needs variants to choose from" in p for p in found)


@pytest.mark.parametrize("share", ["5", "100%", "-1%", "five percent", "no"])
def test_a_holdout_must_be_a_percentage_under_100(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share: str
) -> None:
    found = problems(tmp_path, monkeypatch, {"trial.yml": TRIAL + f"holdout: {share}\n"})
    assert any("holdout: expected a share of leads from 0% to under 100%" in p for p in found)


def test_a_holdout_written_as_a_fraction_is_told_how_to_write_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = problems(tmp_path, monkeypatch, {"trial.yml": TRIAL + "holdout: 0.05\n"})
    assert any("like 5% (for 0.05 write 5%)" in p for p in found), found


def test_variants_that_are_not_mappings_are_reported_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = with_variants("      - email: pricing_guide\n        variants: [a, {weight: nope}]\n")
    found = problems(tmp_path, monkeypatch, {"trial.yml": text})
    assert [p.split(": ", 1)[1] for p in found] == [
        "milestones[1].steps[0].variants[0]: expected a mapping",
        "milestones[1].steps[0].variants[1].weight: expected a number",
    ]


def test_a_variant_subject_that_does_not_render_fails_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "workflows"
    sequence(tmp_path, with_variants(VARIANTS.replace("lead.first_name", "lead.frist_name")))
    settings = Settings.from_env(
        {"NURTURE_WORKFLOWS": str(folder), "NURTURE_TEMPLATES": str(ROOT / "templates")}
    )
    with pytest.raises(WorkflowError) as caught:
        load(settings)
    [problem] = caught.value.problems
    assert problem.line == 19 and problem.field.endswith("variants[2].subject")
    assert "frist_name" in problem.message


def test_describe_says_what_changed_in_variants_and_holdout(tmp_path: Path) -> None:
    old = sequence(tmp_path / "old", with_variants())
    edited = VARIANTS.replace("- {weight: 2}", "- {weight: 3}\n          - {template: demo_invite}")
    new = sequence(tmp_path / "new", with_variants(edited) + "holdout: 5%\n")
    lines = describe(old, new)
    assert any(
        "variants: pricing_guide weight 2 -> 3, added demo_invite" in line for line in lines
    ), lines
    assert any("holdout 0% -> 5%" in line for line in lines), lines
