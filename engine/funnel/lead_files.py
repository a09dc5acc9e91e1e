"""Lead files read as a stream: CSV or JSON lines, one checked record at a time.

Iterating a `LeadFile` yields a `Row` (a lead as stored) for each good record and a `Rejected`
(row number, field, reason) for each bad one, holding one record at a time, so a file of a
million rows reads in flat memory. Rows are numbered as a person counts them: in a CSV the
header is row 1 and each record the next (a record whose quoted fields hold newlines is one
row; a blank line is a row too); in JSON lines, the line.

Every record goes through `check_lead`, the rule the API applies. A record naming a lead an
earlier good row of the file named (same email, phone or external id) is refused as a
duplicate of that row, so the first one wins; the identities seen wait in a temporary SQLite
file, not in memory. A CSV field too large for the csv module is read all the same (up to
FIELD_LIMIT) and refused by the rule of its column; bytes that are not UTF-8 reach the rule
as lone surrogates and are refused as not Unicode text.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from engine.errors import InvalidLeadError
from engine.funnel.lead_fields import (
    CONSENTS,
    check_field_name,
    check_lead,
    identity_keys,
    shown,
)
from engine.models import IDENTITY_FIELDS, STANDARD_FIELDS

JSON_LINES = (".jsonl", ".ndjson", ".json")
FIELD_LIMIT = 64 * 1024 * 1024  # characters of one CSV field; larger ones end the record unread
_COLUMNS = frozenset({*IDENTITY_FIELDS, *STANDARD_FIELDS, *CONSENTS, "stage"})
_BOOLEAN = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class Row:
    """A good record: its row number and the lead as `upsert_lead` takes it."""

    number: int
    lead: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    """A record refused: its row number, the field at fault (None for the record) and why."""

    number: int
    field: str | None
    error: str

    @classmethod
    def of(cls, number: int, error: InvalidLeadError) -> Rejected:
        """The refusal of row `number` for `error`."""
        return cls(number, error.field, error.reason)


class LeadFile:
    """A CSV or JSON-lines file of leads, opened for one pass; `position` is the bytes read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.json_lines = path.suffix.lower() in JSON_LINES
        self._binary: BinaryIO | None = None

    def __enter__(self) -> LeadFile:
        self._binary = self.path.open("rb")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._binary is not None:
            self._binary.close()

    @property
    def position(self) -> int:
        """Bytes read so far (by whole buffers), for a progress bar."""
        return self._binary.tell() if self._binary is not None else 0

    def __iter__(self) -> Iterator[Row | Rejected]:
        """Each record checked, in file order; InvalidLeadError for a CSV header it cannot use."""
        if self._binary is None:
            raise RuntimeError("open the LeadFile with `with` first")
        text = io.TextIOWrapper(
            self._binary, encoding="utf-8-sig", errors="surrogateescape", newline=""
        )
        try:
            records = _json_records(text) if self.json_lines else _csv_records(text)
            with _seen_identities() as seen:
                for number, record in records:
                    yield _checked(number, record, seen)
        finally:
            text.detach()  # the file stays ours to close


def _checked(number: int, record: Mapping[str, Any] | str, seen: _Seen) -> Row | Rejected:
    """The record as a Row, or why it is refused (unreadable, invalid, a duplicate)."""
    if isinstance(record, str):
        return Rejected(number, None, record)
    try:
        lead = check_lead(_consents(record))
    except InvalidLeadError as error:
        return Rejected.of(number, error)
    keys = identity_keys(lead)
    first = seen.first(keys)
    if first is not None:
        field, row = first
        return Rejected(number, field, f"duplicate of row {row}")
    seen.add(keys, number)
    return Row(number, lead)


def _consents(record: Mapping[str, Any]) -> dict[str, Any]:
    """Consent written as yes/no, true/false or 1/0 read as a boolean."""
    lead = dict(record)
    for name in CONSENTS:
        value = lead.get(name)
        if isinstance(value, str):
            consent = _BOOLEAN.get(value.strip().lower())
            if consent is None:
                raise InvalidLeadError(f"{shown(value)} is not true/false or yes/no", name)
            lead[name] = consent
    return lead


def _json_records(text: io.TextIOWrapper) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, object or why it is unreadable) for each line that is not blank."""
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            yield number, f"not JSON: {error}"
            continue
        yield number, record if isinstance(record, dict) else "not a JSON object"


def _csv_records(text: io.TextIOWrapper) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(row number, the non-empty cells by column or why the row is unreadable) per record."""
    with _field_limit(FIELD_LIMIT):
        reader = csv.reader(text)
        try:
            header = next(reader, None)
        except csv.Error as error:
            raise InvalidLeadError(f"the header (row 1) is unreadable: {error}") from error
        if header is None:
            return
        columns = _columns(header)
        number = 1
        while True:
            number += 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield number, f"unreadable: {error}"
                continue
            if not cells:
                continue  # a blank line: a row, and nothing in it
            if len(cells) > len(columns):
                yield number, f"{len(cells)} columns, the header has {len(columns)}"
                continue
            yield (
                number,
                {  # cells trimmed: `a, b` in a hand-written file means "a" and "b"
                    name: value.strip()
                    for name, value in zip(columns, cells, strict=False)
                    if name and value.strip()
                },
            )


def _columns(header: list[str]) -> list[str]:
    """The header's names, trimmed ("" for an unnamed column, which is ignored)."""
    columns = [name.strip() for name in header]
    named = [name for name in columns if name]
    for name in named:
        if name not in _COLUMNS:
            try:
                check_field_name(name)
            except InvalidLeadError as error:
                raise InvalidLeadError(f"column {shown(name)} in the header: {error}") from error
        if named.count(name) > 1:
            raise InvalidLeadError(f"the header names column {shown(name)} twice")
    return columns


@contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    """The csv module's field size limit raised while a file is read (it is per process)."""
    previous = csv.field_size_limit(max(limit, csv.field_size_limit()))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class _Seen:
    """Identity keys met in one file, with the row of each, in a temporary SQLite file."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def first(self, keys: list[tuple[str, str]]) -> tuple[str, int] | None:
        """(field, row) of the first key an earlier row had, or None."""
        for name, value in keys:
            found = self._db.execute(
                "SELECT number FROM seen WHERE key = ?", (f"{name}:{value}",)
            ).fetchone()
            if found is not None:
                return name, int(found[0])
        return None

    def add(self, keys: list[tuple[str, str]], number: int) -> None:
        """Remember that row `number` named these keys."""
        self._db.executemany(
            "INSERT INTO seen (key, number) VALUES (?, ?)",
            [(f"{name}:{value}", number) for name, value in keys],
        )


@contextmanager
def _seen_identities() -> Iterator[_Seen]:
    """An empty `_Seen` whose file (SQLite's private temporary one) goes when it closes."""
    db = sqlite3.connect("", isolation_level=None)
    try:
        db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -2048;"
            "CREATE TABLE seen (key TEXT PRIMARY KEY, number INTEGER NOT NULL) WITHOUT ROWID;"
            "BEGIN;"
        )
        yield _Seen(db)
    finally:
        db.close()
