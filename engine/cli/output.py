"""Terminal output for the CLI: rich tables for people, `--json` for scripts."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def emit_json(data: Any) -> None:
    """Print JSON on stdout, one document, for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table; empty cells for None, cell text shown as written (never rich markup)."""
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*("" if cell is None else escape(str(cell)) for cell in row))
    console.print(out)


@contextmanager
def quiet_engine_logs() -> Iterator[None]:
    """Keep the engine's log records (tracebacks for operators) off a person's terminal.

    Without logging configured, Python prints them to stderr; a command that reports the
    same failure in one line of its own wraps its engine call in this. Configured handlers
    (a process's log, pytest's caplog) still receive every record.
    """
    handler = logging.NullHandler()
    logger = logging.getLogger("engine")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
