"""`nurture privacy export`, `erase` and `retention` on a SQLite project: JSON out, a question
before anything is erased unless --yes, errors that name the key, retention's dry run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from engine.cli.main import main
from engine.db import make_engine, make_sessionmaker
from engine.migrations import upgrade
from engine.models import Erasure, Lead
from tests.apps import FIXTURES, ROOT
from tests.engine import rows

NOW = datetime.now(UTC)


class Project:
    """A SQLite database with the test workflows, and `nurture ARGS`."""

    def __init__(self, folder: Path) -> None:
        self.url = f"sqlite:///{folder / 'privacy.db'}"
        engine = make_engine(self.url)
        upgrade(engine)
        self.sessions = make_sessionmaker(engine)
        self.runner = CliRunner()

    def __call__(self, *args: str, answer: str | None = None) -> Result:
        return self.runner.invoke(main, list(args), input=answer, env={"COLUMNS": "120"})

    def lead(self, email: str, *, idle_days: float = 0) -> int:
        with self.sessions.begin() as session:
            return rows.lead(session, email, at=NOW - timedelta(days=idle_days)).id

    def erased(self) -> list[int]:
        with self.sessions() as session:
            return list(session.scalars(select(Erasure.lead_id).order_by(Erasure.id)))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    nurture = Project(tmp_path)
    monkeypatch.setenv("NURTURE_DATABASE_URL", nurture.url)
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(FIXTURES))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    monkeypatch.delenv("NURTURE_RETENTION_MONTHS", raising=False)
    return nurture


def test_export_prints_json_or_writes_it_to_a_file(project: Project, tmp_path: Path) -> None:
    project.lead("dee@x.test")

    printed = project("privacy", "export", "dee@x.test")
    written = project("privacy", "export", "dee@x.test", "--output", str(tmp_path / "dee.json"))

    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["lead"]["email"] == "dee@x.test"
    assert written.exit_code == 0, written.output
    assert json.loads((tmp_path / "dee.json").read_text())["lead"]["email"] == "dee@x.test"


def test_erase_asks_first_and_a_no_erases_nothing(project: Project) -> None:
    lead_id = project.lead("eve@x.test")

    declined = project("privacy", "erase", "eve@x.test", answer="n\n")
    assert declined.exit_code == 1 and "Erase the personal data of eve@x.test" in declined.output
    assert project.erased() == []

    accepted = project("privacy", "erase", "eve@x.test", answer="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert project.erased() == [lead_id]
    with project.sessions() as session:
        assert session.get_one(Lead, lead_id).email is None


def test_erase_with_yes_asks_nothing_and_a_second_erase_is_an_error(project: Project) -> None:
    lead_id = project.lead("fay@x.test")

    done = project("privacy", "erase", "fay@x.test", "--yes", "--json")
    again = project("privacy", "erase", str(lead_id), "--yes")
    unknown = project("privacy", "erase", "fay@x.test", "--yes")

    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["via"] == "cli"
    assert again.exit_code == 1 and f"lead {lead_id} was already erased" in again.output
    assert unknown.exit_code == 1 and "fay@x.test" in unknown.output
    assert project.erased() == [lead_id]


def test_retention_lists_idle_leads_on_a_dry_run_and_erases_them_when_asked(
    project: Project,
) -> None:
    idle = project.lead("old@x.test", idle_days=400)
    project.lead("new@x.test", idle_days=10)

    unset = project("privacy", "retention", "--dry-run")
    dry = project("privacy", "retention", "--dry-run", "--months", "12")
    assert project.erased() == []
    run = project("privacy", "retention", "--months", "12", "--yes")
    after = project("privacy", "retention", "--months", "12", "--yes")

    assert unset.exit_code == 2 and "NURTURE_RETENTION_MONTHS" in unset.output
    assert dry.exit_code == 0 and "old@x.test" in dry.output and "new@x.test" not in dry.output
    assert run.exit_code == 0 and "erased 1 idle lead(s)" in run.output
    assert after.exit_code == 0 and "no lead idle" in after.output
    assert project.erased() == [idle]
