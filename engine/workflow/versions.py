"""Workflow versions in the database: each content stored once, any pinned one read back.

An enrolment names the version of its sequence it runs on; a process whose YAML on disk has
moved on (a rolling deploy, an edit not yet applied) reads that version's text from here and
parses it again, so no process ever meets a milestone or step it does not know.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from engine.db import is_postgres
from engine.errors import Problem, WorkflowError
from engine.models import VersionKind, WorkflowVersion
from engine.workflow.durations import format_duration
from engine.workflow.sequences import load_sequence
from engine.workflow.spec import Branch, Goto, Send, Sequence, Source, Step, Wait, Workflows


def outline(sequence: Sequence) -> dict[str, Any]:
    """Milestones and steps by id, stored beside the source for plans and read models."""
    return {
        "name": sequence.name,
        "on_change": str(sequence.on_change),
        "milestones": [
            {
                "id": m.id,
                "renamed_from": list(m.renamed_from),
                "steps": [_step_outline(step) for step in m.steps],
            }
            for m in sequence.milestones
        ],
    }


def _step_outline(step: Step) -> dict[str, Any]:
    """One step as plain data, nested for branches."""
    common: dict[str, Any] = {"id": step.id, "renamed_from": list(step.renamed_from)}
    if isinstance(step, Send):
        return {"kind": step.channel, "template": step.template, **common}
    if isinstance(step, Wait):
        return {"kind": "wait", "duration": format_duration(step.duration), **common}
    if isinstance(step, Goto):
        return {"kind": "goto", "target": step.target, **common}
    assert isinstance(step, Branch)
    return {
        "kind": "branch",
        "if": step.condition.text,
        "then": [_step_outline(s) for s in step.then],
        "else": [_step_outline(s) for s in step.otherwise],
        **common,
    }


def as_version(sequence: Sequence) -> tuple[Source, dict[str, Any]]:
    """The sequence as a version to store: its text and its outline."""
    source = Source(
        VersionKind.SEQUENCE, sequence.name, sequence.file, sequence.version, sequence.source
    )
    return source, outline(sequence)


def store(session: Session, sources: list[tuple[Source, dict[str, Any]]], now: datetime) -> None:
    """Store each content unless it is already stored; safe when processes race to store it."""
    if not sources:
        return
    insert = pg_insert if is_postgres(session) else sqlite_insert
    rows = [
        {
            "kind": source.kind,
            "name": source.name,
            "hash": source.hash,
            "file": source.file,
            "source": source.text,
            "spec": spec,
            "first_seen_at": now,
        }
        for source, spec in sources
    ]
    session.execute(
        insert(WorkflowVersion)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["kind", "name", "hash"])
    )


def store_all(session: Session, workflows: Workflows, now: datetime) -> None:
    """Store every file of the loaded workflows as a version (plan, apply and start-up do)."""
    sources = [as_version(s) for s in workflows.sequences.values()]
    sources.extend((source, {}) for source in workflows.sources)
    store(session, sources, now)


def load_version(session: Session, name: str, version: str) -> Sequence | None:
    """Parse a stored version of a sequence again; None when it was never stored."""
    row = session.scalars(
        select(WorkflowVersion).where(
            WorkflowVersion.kind == VersionKind.SEQUENCE,
            WorkflowVersion.name == name,
            WorkflowVersion.hash == version,
        )
    ).one_or_none()
    if row is None:
        return None
    problems: list[Problem] = []
    sequence = load_sequence(row.file, row.source.encode(), None, {}, problems, [])
    if problems or sequence is None:
        raise WorkflowError(problems)
    return replace(sequence, version=version)
