"""Stable step ids: given or derived from content, never from position; renames checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import WorkflowError
from engine.workflow.changes import check_against, describe
from engine.workflow.loading import load_previous
from engine.workflow.spec import Branch, Sequence, Step
from tests.engine.workflow.test_workflows import SHIPPED, TRIAL, load, problems, trial


def sequence(tmp_path: Path, text: str) -> Sequence:
    folder = tmp_path / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED / "scoring.yml", folder)
    (folder / "trial.yml").write_text(text)
    return load(folder).sequences["trial"]


def ids(milestone_steps: tuple[Step, ...]) -> list[str]:
    return [step.id for step in milestone_steps]


def test_derived_ids_name_kind_and_template_and_count_repeats(tmp_path: Path) -> None:
    text = TRIAL.replace(
        "      - email: case_study\n",
        "      - email: case_study\n      - wait: 1d\n      - email: pricing_guide\n",
    )
    consideration = sequence(tmp_path, text).milestones[1]
    assert ids(consideration.steps) == [
        "email:pricing_guide",
        "wait",
        "email:case_study",
        "wait#2",
        "email:pricing_guide#2",
    ]


def test_inserting_a_step_in_front_leaves_the_other_ids_unchanged(tmp_path: Path) -> None:
    before = sequence(tmp_path, TRIAL).milestones[0]
    text = TRIAL.replace(
        "      - email: welcome\n", "      - sms: quick_question\n      - email: welcome\n"
    )
    after = sequence(tmp_path, text).milestones[0]
    assert ids(after.steps) == ["sms:quick_question", *ids(before.steps)]


def test_an_explicit_id_and_renamed_from_sit_beside_the_step(tmp_path: Path) -> None:
    text = TRIAL.replace(
        "      - email: welcome\n",
        "      - email: welcome\n        id: hello\n        renamed_from: email:welcome\n",
    )
    step = sequence(tmp_path, text).milestones[0].steps[0]
    assert (step.id, step.renamed_from) == ("hello", ("email:welcome",))


def test_branches_and_the_steps_inside_them_get_ids(tmp_path: Path) -> None:
    nurture = load(SHIPPED).sequences["lead-nurture"]
    branch = nurture.milestones[0].steps[-1]
    assert isinstance(branch, Branch)
    assert (branch.id, ids(branch.then), ids(branch.otherwise)) == (
        "branch",
        ["email:customer_story"],
        ["sms:quick_question"],
    )


def test_two_steps_with_one_id_are_reported_with_their_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = problems(
        tmp_path,
        monkeypatch,
        trial(
            "      - wait: 2d\n  - id: consideration",
            "      - wait: 2d\n        id: nap\n"
            "      - email: case_study\n        id: nap\n  - id: consideration",
        ),
    )
    assert found == [
        "workflows/trial.yml:14: milestones[0].steps[2]: two steps of milestone 'awareness'"
        " resolve to the id 'nap': give one an explicit id"
    ]


def test_renamed_from_naming_a_step_that_is_still_there_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = problems(
        tmp_path,
        monkeypatch,
        trial(
            "      - wait: 2d\n  - id: consideration",
            "      - wait: 2d\n        renamed_from: email:welcome\n  - id: consideration",
        ),
    )
    assert len(found) == 1 and "'email:welcome' is still a step of this milestone" in found[0]


def test_on_change_takes_migrate_or_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sequence(tmp_path / "pin", TRIAL + "on_change: pin\n").on_change == "pin"
    found = problems(tmp_path, monkeypatch, {"trial.yml": TRIAL + "on_change: freeze\n"})
    assert len(found) == 1 and "on_change" in found[0]


def test_describe_names_renames_additions_and_changed_waits(tmp_path: Path) -> None:
    old = sequence(tmp_path, TRIAL)
    text = TRIAL.replace(
        "  - id: consideration\n", "  - id: evaluation\n    renamed_from: consideration\n"
    )
    text = text.replace(
        "      - wait: 2d\n      - email: case_study\n",
        "      - wait: 5d\n      - email: demo_invite\n",
    )
    new = sequence(tmp_path, text)
    assert describe(old, new) == [
        "milestone consideration renamed to evaluation",
        "milestone evaluation: step email:case_study removed",
        "milestone evaluation: step email:demo_invite added",
        "milestone evaluation: step wait 2d -> 5d",
    ]


def test_validate_against_flags_an_undeclared_rename_and_a_rename_of_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "trial.yml").write_text(TRIAL)
    previous = load_previous(tmp_path / "old")["trial"]
    undeclared = sequence(
        tmp_path, TRIAL.replace("  - id: consideration\n", "  - id: evaluation\n")
    )
    [problem] = check_against(previous, undeclared)
    assert "trial.yml:12: renamed_from: milestone(s) consideration are gone" in str(problem)
    wrong = sequence(
        tmp_path,
        TRIAL.replace(
            "  - id: consideration\n", "  - id: evaluation\n    renamed_from: considration\n"
        ),
    )
    found = [str(p) for p in check_against(previous, wrong)]
    assert any(
        "renamed_from: 'considration' names no milestone of the previous version"
        " (did you mean 'consideration'?)" in p
        for p in found
    )
    assert check_against(previous, sequence(tmp_path, TRIAL)) == []


def test_a_previous_version_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    (tmp_path / "trial.yml").write_text("name: [\n")
    with pytest.raises(WorkflowError):
        load_previous(tmp_path / "trial.yml")
