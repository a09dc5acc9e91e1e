"""What every engine function needs besides a session: the loaded workflows and a clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.orm import Session

from engine.clock import Clock
from engine.models import MergeMode
from engine.workflow.spec import Assignment, Instruction, SendPolicy, Sequence, Workflows
from engine.workflow.versions import as_version, load_version, store


@dataclass(frozen=True)
class Runtime:
    """Workflows and sending rules validated once, plus the clock all time comes from."""

    workflows: Workflows
    clock: Clock
    assignment: Assignment = field(default_factory=Assignment)
    send: SendPolicy = field(default_factory=SendPolicy)
    merge: MergeMode = MergeMode.ASK  # one call naming two leads: merge them, or list it
    _programs: dict[tuple[str, str, str], list[Instruction]] = field(default_factory=dict)
    _versions: dict[tuple[str, str], Sequence] = field(default_factory=dict)

    def program(self, sequence: Sequence, milestone_id: str) -> list[Instruction]:
        """The compiled steps of a milestone, compiled once per process and version."""
        key = (sequence.name, sequence.version, milestone_id)
        if key not in self._programs:
            self._programs[key] = sequence.milestone(milestone_id).program
        return self._programs[key]

    @cached_property
    def sequences(self) -> list[Sequence]:
        """Sequences in file-name order, so enrolment order is stable."""
        return sorted(self.workflows.sequences.values(), key=lambda s: s.file)

    def pin(self, session: Session, sequence: Sequence) -> str:
        """The version a new enrolment runs on, stored in its transaction so any process reads it.

        Stored every time (a no-op once there), never remembered here: a transaction that
        rolls back takes the row with it.
        """
        store(session, [as_version(sequence)], self.clock.now())
        return sequence.version

    def pinned(self, session: Session, name: str, version: str) -> Sequence | None:
        """The version of a sequence an enrolment is pinned to, whatever the disk holds now.

        Enrolments made before versions were stored fall back to the sequence on disk.
        """
        current = self.workflows.sequences.get(name)
        if current is not None and current.version == version:
            return current
        key = (name, version)
        if key not in self._versions:
            stored = load_version(session, name, version)
            if stored is None:
                return current
            self._versions[key] = stored  # versions are immutable: keep it for good
        return self._versions[key]
