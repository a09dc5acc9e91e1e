"""What every engine function needs besides a session: the loaded workflows and a clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from engine.clock import Clock
from engine.workflow.spec import Assignment, Instruction, SendPolicy, Sequence, Workflows


@dataclass(frozen=True)
class Runtime:
    """Workflows and sending rules validated once, plus the clock all time comes from."""

    workflows: Workflows
    clock: Clock
    assignment: Assignment = field(default_factory=Assignment)
    send: SendPolicy = field(default_factory=SendPolicy)
    _programs: dict[tuple[str, str], list[Instruction]] = field(default_factory=dict)

    def program(self, sequence: Sequence, milestone_id: str) -> list[Instruction]:
        """The compiled steps of a milestone, compiled once per process."""
        key = (sequence.name, milestone_id)
        if key not in self._programs:
            self._programs[key] = sequence.milestone(milestone_id).program
        return self._programs[key]

    @cached_property
    def sequences(self) -> list[Sequence]:
        """Sequences in file-name order, so enrolment order is stable."""
        return sorted(self.workflows.sequences.values(), key=lambda s: s.file)
