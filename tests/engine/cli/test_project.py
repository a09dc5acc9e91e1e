"""`nurture init` makes a ready project anywhere; `demo` and `validate` work from any folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from dotenv import dotenv_values
from sqlalchemy import create_engine, inspect

from engine.cli.main import main
from engine.safety import unsafe_settings
from engine.starter import ENV_EXAMPLE

ROOT = Path(__file__).resolve().parents[3]
NURTURE_VARIABLES = (
    "NURTURE_DATABASE_URL",
    "NURTURE_WORKFLOWS",
    "NURTURE_TEMPLATES",
    "NURTURE_SECRET_KEY",
    "NURTURE_API_KEYS",
    "NURTURE_REDIS_URL",
)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder outside the repository, with no nurture settings at all."""
    for name in NURTURE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def nurture(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def settings_in(path: Path) -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(path).items()}


def test_init_creates_a_ready_project_with_its_own_secrets_and_database(folder: Path) -> None:
    result = nurture("init", "acme")
    assert result.exit_code == 0, result.output
    project = folder / "acme"
    assert (project / "workflows" / "scoring.yml").is_file()
    assert (project / "workflows" / "lead-nurture.yml").is_file()
    assert (project / "templates" / "email" / "welcome.j2").is_file()
    assert (project / "templates" / "sms" / "demo_nudge.j2").is_file()
    assert "nurture demo" in (project / "README.md").read_text()
    assert ".env" in (project / ".gitignore").read_text().split()
    secrets = settings_in(project / ".env")
    assert unsafe_settings(secrets) == []
    assert (project / ".env").stat().st_mode & 0o077 == 0
    assert secrets != settings_in(folder / "acme" / ".env.example")
    tables = inspect(create_engine(f"sqlite:///{project / 'nurture.db'}")).get_table_names()
    assert "leads" in tables


def test_two_projects_get_different_secrets(folder: Path) -> None:
    nurture("init", "one")
    nurture("init", "two")
    one, two = settings_in(folder / "one" / ".env"), settings_in(folder / "two" / ".env")
    assert one["NURTURE_SECRET_KEY"] != two["NURTURE_SECRET_KEY"]
    assert one["NURTURE_API_KEYS"] != two["NURTURE_API_KEYS"]


def test_the_env_example_carries_no_usable_secret() -> None:
    for text in (ENV_EXAMPLE, (ROOT / ".env.example").read_text()):
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        values = dict(line.split("=", 1) for line in lines)
        assert values["NURTURE_SECRET_KEY"] == ""
        assert values["NURTURE_API_KEYS"] == ""
    assert (ROOT / ".env.example").read_text() == ENV_EXAMPLE


def test_init_overwrites_nothing_and_fills_in_what_is_missing(folder: Path) -> None:
    project = folder / "acme"
    (project / "workflows").mkdir(parents=True)
    (project / "workflows" / "scoring.yml").write_text("# ours\n")
    (project / "README.md").write_text("our own readme\n")
    result = nurture("init", "acme")
    assert result.exit_code == 0, result.output
    assert (project / "workflows" / "scoring.yml").read_text() == "# ours\n"
    assert not (project / "workflows" / "lead-nurture.yml").exists()
    assert (project / "README.md").read_text() == "our own readme\n"
    assert "kept acme/workflows" in result.output
    assert (project / "templates" / "email" / "welcome.j2").is_file()
    assert (project / ".gitignore").is_file()
    assert unsafe_settings(settings_in(project / ".env")) == []


def test_init_force_writes_the_examples_over_the_workflows_but_keeps_the_projects_files(
    folder: Path,
) -> None:
    nurture("init", "acme")
    project = folder / "acme"
    secrets = (project / ".env").read_text()
    scoring = project / "workflows" / "scoring.yml"
    original = scoring.read_text()
    scoring.write_text("# edited\n")
    (project / "README.md").write_text("our own readme\n")
    result = nurture("init", "acme", "--force")
    assert result.exit_code == 0, result.output
    assert scoring.read_text() == original
    assert (project / ".env").read_text() == secrets
    assert (project / "README.md").read_text() == "our own readme\n"


def test_init_in_a_project_keeps_its_workflows_and_upgrades_the_database(folder: Path) -> None:
    (folder / "workflows").mkdir()
    (folder / "workflows" / "scoring.yml").write_text("# ours\n")
    result = nurture("init")
    assert result.exit_code == 0, result.output
    assert (folder / "workflows" / "scoring.yml").read_text() == "# ours\n"
    assert "leads" in inspect(create_engine("sqlite:///nurture.db")).get_table_names()
    assert unsafe_settings(settings_in(folder / ".env")) == []


def test_init_writes_no_env_where_the_secret_comes_from_the_environment(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_SECRET_KEY", "x" * 40)
    result = nurture("init")
    assert result.exit_code == 0, result.output
    assert not (folder / ".env").exists()
    assert (folder / "workflows" / "scoring.yml").is_file()


def test_validate_without_a_workflows_folder_says_to_run_init(folder: Path) -> None:
    result = nurture("validate")
    assert result.exit_code == 1
    assert "workflows folder not found" in result.output
    assert "nurture init" in result.output


def test_a_missing_templates_folder_is_one_problem_naming_init(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(ROOT / "workflows"))
    result = nurture("validate")
    assert result.exit_code == 1
    assert "templates folder not found" in result.output
    assert "1 problem(s) found" in result.output


def test_demo_runs_the_bundled_examples_from_an_empty_folder(folder: Path) -> None:
    result = nurture("demo", "--leads", "30", "--days", "7", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["outbox"]["email"] > 0
    assert not (folder / "workflows").exists()
    experiment = data["experiment"]  # the examples hold 10% of re-engagement out
    assert experiment["sequence"] == "re-engagement" and experiment["holdout_share"] == 0.1
    assert experiment["summary"].startswith("Holdout of re-engagement (10% sent nothing), MQL: ")


def test_demo_plays_the_projects_own_workflows_when_present(folder: Path) -> None:
    nurture("init", "acme")
    project = folder / "acme"
    nurture_yml = project / "workflows" / "lead-nurture.yml"
    nurture_yml.write_text(nurture_yml.read_text().replace("name: lead-nurture", "name: ours"))
    (project / "workflows" / "re-engagement.yml").unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        result = nurture("demo", "--leads", "20", "--days", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert list(data["sequences"]) == ["ours"]
    # No holdout left: the demo reports the pricing guide's two subject lines instead.
    summary = data["experiment"]["summary"]
    assert summary.startswith("Experiment ours consideration/email:pricing_guide (clicked): guide ")
    assert ", question " in summary


def test_preview_renders_each_variant_of_a_step(folder: Path) -> None:
    nurture("init", "acme")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder / "acme")
        result = nurture("preview", "lead-nurture", "--out", "preview")
    assert result.exit_code == 0, result.output
    assert "lead-nurture: 10 message(s)" in result.output  # nine steps, one with two variants
    written = sorted(p.name for p in (folder / "acme" / "preview").glob("*pricing_guide*"))
    assert written == [
        "lead-nurture-consideration-pricing_guide.html",
        "lead-nurture-consideration-question-pricing_guide.html",
    ]
