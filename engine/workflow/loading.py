"""Load workflows/*.yml into engine.workflow.spec objects, with every problem's file and line.

Reading never stops at the first problem: each reader notes what is wrong and falls back to a
placeholder so that the rest of the file is still checked; the placeholders never escape, because
any problem at all raises WorkflowError at the end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from engine.errors import Problem, WorkflowError
from engine.workflow.forms import FORMS_FILE, load_forms
from engine.workflow.reader import content_hash, display
from engine.workflow.scoring_rules import load_scoring
from engine.workflow.sequences import load_sequence
from engine.workflow.sources import SOURCES_FILE, load_sources
from engine.workflow.spec import (
    Form,
    Scoring,
    SegmentMapping,
    Sequence,
    Source,
    TemplateUse,
    Workflows,
)

SCORING_FILE = "scoring.yml"
OTHER_FILES = ("sending.yml",)


def _version(files: Iterable[tuple[str, bytes]]) -> str:
    """A short content hash, so a stored position names the exact workflow it came from."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def _workflow_files(directory: Path) -> list[Path]:
    """The YAML files of a workflows folder in name order; hidden files are not workflows."""
    return sorted(
        path
        for path in directory.glob("*")
        if path.suffix in (".yml", ".yaml") and path.is_file() and not path.name.startswith(".")
    )


def load_workflows(
    directory: Path, email_templates: set[str], sms_templates: set[str]
) -> Workflows:
    """Read and check every workflow file, raising one WorkflowError that lists all problems."""
    paths = _workflow_files(directory)
    problems: list[Problem] = []
    if directory / SCORING_FILE not in paths:
        missing = "file not found: the workflows folder needs scoring.yml with the thresholds"
        problems.append(Problem(display(directory / SCORING_FILE), 1, "", missing))
    templates = {"email": email_templates, "sms": sms_templates}
    names: dict[str, str] = {}
    scoring: Scoring | None = None
    sequences: dict[str, Sequence] = {}
    uses: list[TemplateUse] = []
    segment = SegmentMapping()
    forms: dict[str, Form] = {}
    for path in paths:
        file, data = display(path), path.read_bytes()
        try:
            if path.name in OTHER_FILES:
                continue  # read by their own modules (sending.yml: sending_rules.py)
            if path.name == SCORING_FILE:
                scoring = load_scoring(file, data, problems)
            elif path.name == SOURCES_FILE:
                segment = load_sources(file, data, problems)
            elif path.name == FORMS_FILE:
                forms = load_forms(file, data, problems, email_templates)
            elif path.stem == SCORING_FILE.removesuffix(".yml"):
                problems.append(Problem(file, 1, "", f"name this file {SCORING_FILE}"))
            elif sequence := load_sequence(file, data, templates, names, problems, uses):
                sequences[sequence.name] = sequence
        except RecursionError:
            problems.append(Problem(file, 1, "", "nested too deeply, or an alias inside itself"))
    if problems or scoring is None:
        raise WorkflowError(sorted(problems, key=lambda p: (p.file, p.line)))
    contents = [(path.name, path.read_bytes()) for path in paths]
    sources = tuple(
        Source(
            name.removesuffix(".yml"),
            name.removesuffix(".yml"),
            display(directory / name),
            content_hash(data),
            data.decode("utf-8", errors="replace"),
        )
        for name, data in contents
        if name in (SCORING_FILE, *OTHER_FILES)
    )
    return Workflows(
        scoring=scoring,
        sequences=sequences,
        version=_version(contents),
        template_uses=tuple(uses),
        sources=sources,
        segment=segment,
        forms=forms,
    )


def load_previous(path: Path) -> dict[str, Sequence]:
    """Sequences of an earlier version (a file or a folder), for `validate --against`.

    Their templates are not checked: they may have left the disk since.
    """
    files = [path] if path.is_file() else _workflow_files(path)
    problems: list[Problem] = []
    found: dict[str, Sequence] = {}
    for file in files:
        if file.name in (SCORING_FILE, SOURCES_FILE, FORMS_FILE, *OTHER_FILES):
            continue
        if sequence := load_sequence(display(file), file.read_bytes(), None, {}, problems, []):
            found[sequence.name] = sequence
    if problems:
        raise WorkflowError(problems)
    return found
