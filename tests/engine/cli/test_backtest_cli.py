"""`nurture backtest`, run as a marketer would on a database with a few weeks of history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from engine.cli.main import main
from engine.runner.simulation import ScriptedEvent, Simulation
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def nurture(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A database where 10 leads downloaded a report 20 days ago and the nurture ran since."""
    environ = {
        "NURTURE_DATABASE_URL": f"sqlite:///{tmp_path / 'live.db'}",
        "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
        "NURTURE_TEMPLATES": str(ROOT / "templates"),
        "NURTURE_OUTBOX_DIR": str(tmp_path / "outbox"),
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    now = datetime.now(UTC)
    start = now - timedelta(days=20)
    sim = Simulation(Settings.from_env(environ), start, tmp_path, database="live.db")
    report = {"title": "Report"}
    history = [
        ScriptedEvent(start, {"email": f"lead{i}@northwind.test"}, "content_downloaded", report)
        for i in range(10)
    ]
    try:
        sim.run(history, now, resolution=timedelta(hours=1))
    finally:
        sim.close()
    return tmp_path


def test_backtest_prints_the_backtest_beside_the_live_run_as_tables_and_as_json(
    project: Path,
) -> None:
    shown = nurture("backtest", "lead-nurture", "--since", "30d")
    assert shown.exit_code == 0, shown.output
    assert "all 10 leads with events in the period" in shown.output
    assert "email:welcome" in shown.output
    assert "10 / 10" in shown.output  # the welcome: would send / did

    result = nurture("backtest", "lead-nurture", "--since", "30d", "--leads", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["eligible"], report["leads"]) == (10, 3)
    welcome = [
        (mine["sent"], theirs["sent"])
        for mine, theirs in zip(report["backtest"]["steps"], report["live"]["steps"], strict=True)
        if mine["step"] == "awareness/email:welcome"
    ]
    assert welcome == [(3, 3)]


def test_backtest_of_an_unknown_sequence_exits_2_naming_the_known_ones(project: Path) -> None:
    result = nurture("backtest", "lead-nurtur")
    assert result.exit_code == 2
    assert "unknown sequence 'lead-nurtur' (sequences: lead-nurture, re-engagement)" in (
        result.output
    )


@pytest.mark.parametrize("args", [["--since", "a month"], ["--leads", "0"]])
def test_backtest_refuses_a_period_or_sample_it_cannot_use_with_exit_2(
    project: Path, args: list[str]
) -> None:
    result = nurture("backtest", "lead-nurture", *args)
    assert result.exit_code == 2
    assert "error: --" in result.output
