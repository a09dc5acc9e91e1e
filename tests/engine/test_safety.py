"""Production processes refuse public or weak secrets, naming the variable; strong ones start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli.main import main
from engine.safety import PLACEHOLDERS, new_secret, unsafe_settings

ROOT = Path(__file__).resolve().parents[2]
STRONG = new_secret()
PRODUCTION = (["serve"], ["worker"], ["scheduler"], ["run", "--host", "0.0.0.0"])


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No secrets set, no Redis (so a process that passes the check stops right after it)."""
    for name in (
        "NURTURE_SECRET_KEY",
        "NURTURE_API_KEYS",
        "NURTURE_CRM_WEBHOOK_SECRET",
        "NURTURE_REDIS_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'safety.db'}")
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(ROOT / "workflows"))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    return tmp_path


@pytest.mark.parametrize("command", PRODUCTION, ids=lambda c: " ".join(c))
def test_a_production_process_refuses_the_development_secret(
    environment: Path, command: list[str]
) -> None:
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2
    assert "NURTURE_SECRET_KEY is not set" in result.output


@pytest.mark.parametrize("placeholder", sorted(PLACEHOLDERS))
@pytest.mark.parametrize("command", PRODUCTION, ids=lambda c: " ".join(c))
def test_a_production_process_refuses_a_published_placeholder(
    environment: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], placeholder: str
) -> None:
    monkeypatch.setenv("NURTURE_SECRET_KEY", placeholder)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2
    assert "NURTURE_SECRET_KEY is a placeholder" in result.output


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("NURTURE_SECRET_KEY", "x" * 31, "NURTURE_SECRET_KEY is 31 characters"),
        ("NURTURE_CRM_WEBHOOK_SECRET", "short-crm-secret", "NURTURE_CRM_WEBHOOK_SECRET is 16"),
        ("NURTURE_API_KEYS", f"{STRONG},too-short-key", "NURTURE_API_KEYS (key 2 of 2) is 13"),
    ],
)
def test_a_short_secret_is_refused_naming_its_variable(
    environment: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv("NURTURE_SECRET_KEY", STRONG)
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 2
    assert named in result.output


def test_strong_secrets_pass_and_the_process_goes_on_to_its_next_check(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_SECRET_KEY", STRONG)
    monkeypatch.setenv("NURTURE_API_KEYS", f"{new_secret()},{new_secret()}")
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 2
    assert "a worker needs NURTURE_REDIS_URL" in result.output
    assert "NURTURE_SECRET_KEY" not in result.output


def _nurture(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `nurture` executable in a process of its own, in `folder`."""
    command = [sys.executable, "-m", "engine.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)


def test_a_projects_env_file_supplies_the_secrets(environment: Path) -> None:
    (environment / ".env").write_text(f"NURTURE_SECRET_KEY={STRONG}\n")
    result = _nurture(environment, "scheduler")
    assert "a scheduler needs NURTURE_REDIS_URL" in result.stderr


def test_the_environment_wins_over_the_env_file(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (environment / ".env").write_text(f"NURTURE_SECRET_KEY={STRONG}\n")
    monkeypatch.setenv("NURTURE_SECRET_KEY", "change-me-to-a-long-random-string")
    result = _nurture(environment, "scheduler")
    assert "NURTURE_SECRET_KEY is a placeholder" in result.stderr


def test_calling_the_command_in_process_leaves_the_environment_alone(
    environment: Path,
) -> None:
    (environment / ".env").write_text(f"NURTURE_SECRET_KEY={STRONG}\n")
    result = CliRunner().invoke(main, ["scheduler"])
    assert "NURTURE_SECRET_KEY is not set" in result.output
    assert "NURTURE_SECRET_KEY" not in os.environ


def test_every_problem_is_listed_at_once() -> None:
    problems = unsafe_settings(
        {"NURTURE_API_KEYS": "short", "NURTURE_CRM_WEBHOOK_SECRET": "changeme"}
    )
    assert [p.split(" ")[0] for p in problems] == [
        "NURTURE_SECRET_KEY",
        "NURTURE_CRM_WEBHOOK_SECRET",
        "NURTURE_API_KEYS",
    ]
