"""`track_clicks` in sequence YAML: off unless said, true or false only, and a change is planned."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.workflow.changes import describe
from tests.engine.workflow.test_step_ids import sequence
from tests.engine.workflow.test_workflows import TRIAL, problems


def test_click_tracking_is_off_unless_the_sequence_turns_it_on(tmp_path: Path) -> None:
    assert sequence(tmp_path / "plain", TRIAL).track_clicks is False
    assert sequence(tmp_path / "on", TRIAL + "track_clicks: true\n").track_clicks is True
    assert sequence(tmp_path / "off", TRIAL + "track_clicks: false\n").track_clicks is False


@pytest.mark.parametrize("value", ["yes please", "1", "'true'", "[true]"])
def test_track_clicks_that_is_not_true_or_false_is_located_by_file_line_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    text = TRIAL + f"track_clicks: {value}\n"
    line = text.count("\n")
    found = problems(tmp_path, monkeypatch, {"trial.yml": text})
    assert found == [f"workflows/trial.yml:{line}: track_clicks: expected true or false"]


def test_a_misspelt_track_clicks_is_told_the_right_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = problems(tmp_path, monkeypatch, {"trial.yml": TRIAL + "track_click: true\n"})
    assert any("unknown key 'track_click' (did you mean 'track_clicks'?)" in p for p in found)


def test_the_plan_says_when_click_tracking_is_turned_on_or_off(tmp_path: Path) -> None:
    old = sequence(tmp_path / "old", TRIAL)
    new = sequence(tmp_path / "new", TRIAL + "track_clicks: true\n")
    assert "click tracking on: applies to emails sent after apply" in describe(old, new)
    assert "click tracking off: applies to emails sent after apply" in describe(new, old)
    assert not any("click tracking" in line for line in describe(old, old))
