"""`nurture leads import`: stream a CSV or JSON-lines file into leads, keep every good row and
report every bad one by its row number.

The file is read one record at a time (`engine.funnel.lead_files`) and written in batches of
BATCH rows, one transaction each; a batch the database or the engine refuses is written again
row by row, so one bad row costs its batch a second pass, never the other rows. Problems are
printed as each batch is written, in row order; with --json they wait in a temporary file,
so memory stays flat however many there are.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import click
from rich.progress import Progress, TextColumn
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError

from engine.app import App
from engine.cli.commands import EXIT_FOUND, EXIT_USAGE, fail, open_app
from engine.cli.output import console, errors, quiet_engine_logs
from engine.errors import InvalidLeadError, NurtureError
from engine.funnel.lead_files import LeadFile, Rejected, Row
from engine.funnel.service import upsert_lead, upsert_leads

BATCH = 500  # rows per transaction
_REFUSED = (NurtureError, IntegrityError, DataError)  # what one row can cause
# A batch is also written again row by row after an OperationalError (a deadlock with another
# writer); a row that meets one again stops the import, as a database that is down would.
_BATCH_REFUSED = (*_REFUSED, OperationalError)


class Report:
    """Counts, and the problems: printed as they come, or kept for one JSON document."""

    def __init__(self, path: Path, as_json: bool) -> None:
        self.path = path
        self.imported = 0
        self.rejected = 0
        self._spool: TextIO | None = (
            tempfile.TemporaryFile("w+", encoding="utf-8") if as_json else None
        )

    def reject(self, problem: Rejected) -> None:
        """Count a refused row and say which and why."""
        self.rejected += 1
        if self._spool is not None:
            entry = {"row": problem.number, "field": problem.field, "error": problem.error}
            self._spool.write(json.dumps(entry) + "\n")
            return
        field = f"{problem.field}: " if problem.field else ""
        click.echo(f"{self.path}:{problem.number}: {field}{problem.error}", err=True)

    def finish(self) -> None:
        """The summary line, or the JSON report {imported, rejected, problems}."""
        if self._spool is None:
            console.print(
                f"{self.imported} lead(s) imported, {self.rejected} row(s) rejected",
                highlight=False,
            )
            return
        out = sys.stdout
        out.write(f'{{\n  "imported": {self.imported},\n  "rejected": {self.rejected},\n')
        out.write('  "problems": [')
        self._spool.seek(0)
        for index, line in enumerate(self._spool):
            out.write(("," if index else "") + "\n    " + line.rstrip("\n"))
        out.write("\n  ]\n}\n" if self.rejected else "]\n}\n")
        self._spool.close()


def write(app: App, window: Sequence[Row | Rejected], report: Report) -> None:
    """Upsert the rows of `window` (one transaction; row by row if it fails) and report the
    problems of the window in row order."""
    rows = [item for item in window if isinstance(item, Row)]
    problems = [item for item in window if isinstance(item, Rejected)]
    try:
        with app.sessions.begin() as session:
            upsert_leads(session, app.rt, [row.lead for row in rows], "import")
        report.imported += len(rows)
    except _BATCH_REFUSED:
        for row in rows:
            problem = _write_one(app, row)
            if problem is None:
                report.imported += 1
            else:
                problems.append(problem)
    for problem in sorted(problems, key=lambda item: item.number):
        report.reject(problem)


def _write_one(app: App, row: Row) -> Rejected | None:
    """Upsert one row in its own transaction; why it was refused, or None."""
    try:
        with app.sessions.begin() as session:
            upsert_lead(session, app.rt, row.lead, "import")
    except InvalidLeadError as error:
        return Rejected.of(row.number, error)
    except NurtureError as error:
        return Rejected(row.number, None, str(error))
    except (IntegrityError, DataError) as error:
        reason = "conflicts with another lead" if isinstance(error, IntegrityError) else "refused"
        return Rejected(row.number, None, f"{reason} by the database: {error.orig}")
    return None


@click.group("leads")
def leads_group() -> None:
    """Work with many leads."""


@leads_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def import_command(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Upsert leads from CSV (header row first) or JSON lines (.jsonl, .ndjson, .json).

    Every row is checked as the API checks a lead; bad rows (a bad email, phone or time zone,
    an oversized field, a duplicate of an earlier row) are reported by number and skipped,
    every good row is kept. Exit 1 when any row was rejected.
    """
    app = open_app(ctx)
    report = Report(file, as_json)
    window: list[Row | Rejected] = []
    columns = (*Progress.get_default_columns(), TextColumn("{task.fields[rows]} rows"))
    try:
        with (
            quiet_engine_logs(),
            LeadFile(file) as leads,
            Progress(*columns, console=errors, disable=as_json) as progress,
        ):
            task = progress.add_task(f"importing {file.name}", total=leads.size, rows=0)
            for item in leads:
                window.append(item)
                if len(window) >= BATCH:
                    write(app, window, report)
                    window.clear()
                progress.update(task, completed=leads.position, rows=item.number)
            write(app, window, report)
            progress.update(task, completed=leads.size)
    except InvalidLeadError as error:  # the CSV header: nothing read, nothing written
        fail(f"{file}: {error}", EXIT_USAGE)
    except SQLAlchemyError as error:
        first = window[0].number if window else "?"
        fail(
            f"the database failed writing from row {first} on ({error.__class__.__name__}: "
            f"{error}); {report.imported} lead(s) were imported before it"
        )
    report.finish()
    if report.rejected:
        sys.exit(EXIT_FOUND)


def register(group: click.Group) -> None:
    """Attach `nurture leads` to the `nurture` group."""
    group.add_command(leads_group)
