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
# For tables as wide as their cells whatever the terminal: scripts and tests read the same text.
_unwrapped = Console(width=1000, highlight=False)


def emit_json(data: Any) -> None:
    """Print JSON on stdout, one document, for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, wrap: bool = True
) -> None:
    """Print a table; empty cells for None, cell text shown as written (never rich markup).

    `wrap=False` never wraps a cell to the terminal's width: the same text at any width.
    """
    out = Table(title=title or None, title_justify="left")
    for column in columns:
        out.add_column(column, no_wrap=not wrap)
    for row in rows:
        out.add_row(*("" if cell is None else escape(str(cell)) for cell in row))
    (console if wrap else _unwrapped).print(out)


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
