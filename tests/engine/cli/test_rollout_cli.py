"""`nurture plan`, `apply`, `rescore` and `validate --against`, run as a marketer would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from engine.cli.main import main

ROOT = Path(__file__).resolve().parents[3]


class Project:
    """A workflows folder copied from the shipped one, a SQLite database, and `nurture ARGS`."""

    def __init__(self, folder: Path) -> None:
        self.workflows = folder / "workflows"
        shutil.copytree(ROOT / "workflows", self.workflows)
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(main, list(args), catch_exceptions=False)

    def edit(self, old: str, new: str, file: str = "lead-nurture.yml") -> None:
        path = self.workflows / file
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(tmp_path / "workflows"))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    monkeypatch.setenv("NURTURE_OUTBOX_DIR", str(tmp_path / "outbox"))
    nurture = Project(tmp_path)
    assert nurture("init").exit_code == 0
    assert nurture("track", "ana@northwind.test", "form_submitted").exit_code == 0
    return nurture


def test_plan_with_nothing_changed_says_so_and_exits_0(project: Project) -> None:
    result = project("plan")
    assert result.exit_code == 0
    assert "nothing to apply" in result.output


def test_plan_names_a_stranded_milestone_and_its_count_and_exits_1(project: Project) -> None:
    project.edit("  - id: awareness\n", "  - id: discovery\n")
    result = project("plan")
    assert result.exit_code == 1
    assert "~ milestone awareness removed" in result.output
    assert "~ milestone discovery added" in result.output
    assert "error: lead-nurture: 1 lead(s) stranded at awareness (start)" in result.output
    refused = project("apply")
    assert refused.exit_code == 1
    assert "stranded leads, nothing applied" in refused.output


def test_apply_moves_leads_as_the_plan_said_and_a_second_apply_finds_nothing(
    project: Project,
) -> None:
    project.edit("  - id: awareness\n", "  - id: discovery\n    renamed_from: awareness\n")
    planned = project("plan", "--json")
    assert planned.exit_code == 0
    plan = json.loads(planned.output)
    [entry] = plan["sequences"]
    assert entry["groups"] == [
        {"place": "awareness (start)", "leads": 1, "to": "discovery (start)", "note": ""}
    ]
    assert (plan["moves"], plan["stranded"]) == (1, [])
    applied = project("apply")
    assert applied.exit_code == 0
    assert "applied: 1 lead(s) moved, 0 exited" in applied.output
    assert "nothing to apply" in project("plan").output
    shown = project("lead", "show", "ana@northwind.test", "--json")
    assert "discovery" in shown.output


def test_apply_exit_stranded_lets_them_go_with_a_reason(project: Project) -> None:
    project.edit("  - id: awareness\n", "  - id: discovery\n")
    result = project("apply", "--exit-stranded", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["exited"] == 1


def test_apply_dry_run_only_plans(project: Project) -> None:
    project.edit("  - id: awareness\n", "  - id: discovery\n    renamed_from: awareness\n")
    assert project("apply", "--dry-run").exit_code == 0
    assert "1 lead(s) to move" in project("plan").output


def test_validate_against_a_previous_folder_flags_an_undeclared_rename(
    project: Project, tmp_path: Path
) -> None:
    shutil.copytree(project.workflows, tmp_path / "before")
    project.edit("  - id: awareness\n", "  - id: discovery\n")
    result = project("validate", "--against", str(tmp_path / "before"))
    assert result.exit_code == 1
    assert "renamed_from: milestone(s) awareness are gone and discovery new" in result.output
    project.edit("  - id: discovery\n", "  - id: discovery\n    renamed_from: awareness\n")
    assert project("validate", "--against", str(tmp_path / "before")).exit_code == 0


def test_plan_shows_what_new_points_do_to_the_past_and_rescore_does_it_once(
    project: Project,
) -> None:
    tracked = project("track", "ana@northwind.test", "page_viewed", "--prop", "url=/pricing")
    assert tracked.exit_code == 0
    project.edit("    points: 7\n", "    points: 15\n", "scoring.yml")  # pricing page views

    shown = project("plan")
    assert shown.exit_code == 0
    assert "1 lead(s) replayed, 1 would change score" in shown.output
    assert "new MQLs: 1" in shown.output
    assert "ana@northwind.test: 17 -> 25 (+8) pricing_page_view +8" in shown.output
    histogram = shown.output.splitlines()
    assert any(line.strip().startswith("10..19  #") for line in histogram)
    assert json.loads(project("plan", "--json").output)["rescore"]["new_mql"] == 1

    done = project("rescore")
    assert done.exit_code == 0
    assert "rescored: 1 of 1 lead(s) changed score; 1 new MQL(s)" in done.output
    lead = json.loads(project("lead", "show", "ana@northwind.test", "--json").output)
    assert (lead["score"]["total"], lead["lead"]["stage"]) == (25, "mql")
    assert [e["rule"] for e in lead["ledger"] if e["kind"] == "rescore"] == ["pricing_page_view"]
    again = json.loads(project("rescore", "--json").output)
    assert (again["plan"]["changed"], again["rescored"]["changed"]) == (0, 0)
