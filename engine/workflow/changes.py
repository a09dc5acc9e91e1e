"""What changed between two versions of a sequence, and where a lead in the old one goes.

A lead rests at the start of a milestone, after a wait, or at its end (steps done). Moved to a
new version it continues right after the last step it had passed that still exists (found by
step id or `renamed_from`): steps inserted ahead of it run, steps removed behind it do not
matter, and a step it already got that moved ahead of it is not sent twice (deliveries are
unique per step id and pass). A lead waiting on a wait that still exists waits what the new
version says, counted from when its wait began.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from engine.errors import Problem
from engine.workflow.durations import format_duration
from engine.workflow.reader import did_you_mean
from engine.workflow.spec import (
    Branch,
    Goto,
    Instruction,
    Jump,
    Milestone,
    Send,
    Sequence,
    Step,
    Test,
    Wait,
    walk,
)

START = "start"
END = "end"


@dataclass(frozen=True)
class Place:
    """Where an enrolment rests in one version: a milestone and start, `after` a step, or end."""

    milestone: str
    after: str = START  # a step id, or START / END

    def __str__(self) -> str:
        if self.after == START:
            return f"{self.milestone} (start)"
        if self.after == END:
            return f"{self.milestone} (steps done)"
        return f"{self.milestone} after {self.after}"


@dataclass(frozen=True)
class Landing:
    """Where an enrolment goes in the new version: position, and how its due time changes.

    `wait` is (old, new) duration of the wait the lead is on when that wait survives;
    `due_now` says its timer no longer applies (its wait was removed, or steps now follow).
    """

    place: Place
    position: int
    exhausted: bool
    wait: tuple[timedelta, timedelta] | None = None
    due_now: bool = False

    def note(self) -> str:
        """How the due time changes, in words, for plans and timelines."""
        if self.wait is not None and self.wait[0] != self.wait[1]:
            old, new = (format_duration(w) for w in self.wait)
            return f"wait {old} -> {new}, counted from when it began"
        return "due now" if self.due_now else ""


# A place to fall back to when the step a lead had passed is gone: after a step, at the start
# of a branch's arm, or at the milestone's start.
_Anchor = tuple[str, str, str]  # ("after", step id, "") | ("arm", branch id, "then"/"else")
_START: _Anchor = ("start", "", "")


def place_of(program: list[Instruction], milestone: str, position: int, exhausted: bool) -> Place:
    """The place an enrolment rests at, from its position in its version's program."""
    if exhausted or position >= len(program):
        return Place(milestone, END)
    if position == 0:
        return Place(milestone, START)
    for instruction in reversed(program[:position]):
        if not isinstance(instruction, (Jump, Test)):
            return Place(milestone, instruction.id)
    return Place(milestone, START)


def _fallbacks(steps: tuple[Step, ...], outer: list[_Anchor]) -> dict[str, list[_Anchor]]:
    """For each step id, the anchors to try, nearest first: itself, earlier steps, the arm."""
    chains: dict[str, list[_Anchor]] = {}
    for i, step in enumerate(steps):
        before = [("after", s.id, "") for s in reversed(steps[:i])] + outer
        chains[step.id] = [("after", step.id, ""), *before]
        if isinstance(step, Branch):
            chains.update(_fallbacks(step.then, [("arm", step.id, "then"), *before]))
            chains.update(_fallbacks(step.otherwise, [("arm", step.id, "else"), *before]))
    chains[END] = [("after", s.id, "") for s in reversed(steps)] + outer
    return chains


def _step_names(milestone: Milestone) -> dict[str, str]:
    """Each id a step of the milestone has or had (`renamed_from`), to its id now."""
    return {name: s.id for s in walk(milestone.steps) for name in (s.id, *s.renamed_from)}


class MilestoneMap:
    """Finds an old milestone's steps in its new counterpart, by id or `renamed_from`."""

    def __init__(self, old: Milestone, new: Milestone) -> None:
        self.old, self.new = old, new
        self.program = new.program
        self.names = _step_names(new)
        self.index: dict[str, int] = {}
        for n, instruction in enumerate(self.program):
            if not isinstance(instruction, Jump):
                self.index[instruction.id] = n
        self.steps = {s.id: s for s in walk(new.steps)}
        self.chains = _fallbacks(old.steps, [_START])

    def land(self, place: Place, old_wait: timedelta | None) -> Landing:
        """Where a lead resting at `place` of the old milestone continues in the new one."""
        chain = self.chains.get(place.after, [_START]) if place.after != START else [_START]
        for n, anchor in enumerate(chain):
            position = self._resolve(anchor)
            if position is None:
                continue
            exhausted = place.after == END and position >= len(self.program)
            landed = place_of(self.program, self.new.id, position, exhausted)
            new_step = self.steps.get(self.names.get(place.after, ""))
            if n == 0 and isinstance(new_step, Wait) and old_wait is not None:
                return Landing(landed, position, exhausted, wait=(old_wait, new_step.duration))
            moved_on = place.after == END and not exhausted
            return Landing(landed, position, exhausted, due_now=n > 0 or moved_on)
        return Landing(Place(self.new.id, START), 0, False, due_now=True)  # pragma: no cover

    def _resolve(self, anchor: _Anchor) -> int | None:
        """The new program's position an anchor stands for; None when its step is gone."""
        kind, old_id, arm = anchor
        if kind == "start":
            return 0
        new_id = self.names.get(old_id)
        if new_id is None:
            return None
        at = self.index[new_id]
        instruction = self.program[at]
        if kind == "arm":
            assert isinstance(instruction, Test)
            return at + 1 if arm == "then" else instruction.otherwise
        if isinstance(instruction, Test):  # after a whole branch: where its `then` jumps to
            jump = self.program[instruction.otherwise - 1]
            assert isinstance(jump, Jump)
            return jump.target
        return at + 1


def milestone_map(old: Sequence, new: Sequence) -> dict[str, str | None]:
    """Each old milestone's id in the new version (same id or `renamed_from`); None: removed."""
    names = {name: m.id for m in new.milestones for name in (m.id, *m.renamed_from)}
    return {m.id: names.get(m.id) for m in old.milestones}


def describe(old: Sequence, new: Sequence) -> list[str]:
    """The differences a marketer made, one line each, in the order of the new file."""
    lines: list[str] = []
    mapping = milestone_map(old, new)
    kept = {target: source for source, target in mapping.items() if target is not None}
    for source, target in mapping.items():
        if target is None:
            lines.append(f"milestone {source} removed")
        elif target != source:
            lines.append(f"milestone {source} renamed to {target}")
    for milestone in new.milestones:
        if milestone.id not in kept:
            lines.append(f"milestone {milestone.id} added")
    old_order = [mapping[m.id] for m in old.milestones if mapping[m.id] is not None]
    new_order = [m.id for m in new.milestones if m.id in kept]
    if old_order != new_order:
        lines.append("milestones reordered: " + ", ".join(new_order))
    for milestone in new.milestones:
        if milestone.id in kept:
            lines.extend(_describe_steps(old.milestone(kept[milestone.id]), milestone))
    lines.extend(_describe_settings(old, new))
    return lines


def _describe_steps(old: Milestone, new: Milestone) -> list[str]:
    """Steps added, removed, renamed, reordered and changed within one milestone."""
    where = f"milestone {new.id}"
    names = _step_names(new)
    old_steps = {s.id: s for s in walk(old.steps)}
    new_steps = {s.id: s for s in walk(new.steps)}
    matched = {old_id: names[old_id] for old_id in old_steps if old_id in names}
    lines = [f"{where}: step {old_id} removed" for old_id in old_steps if old_id not in names]
    reverse = set(matched.values())
    lines.extend(f"{where}: step {new_id} added" for new_id in new_steps if new_id not in reverse)
    for old_id, new_id in matched.items():
        if old_id != new_id:
            lines.append(f"{where}: step {old_id} renamed to {new_id}")
        change = _step_change(old_steps[old_id], new_steps[new_id])
        if change:
            lines.append(f"{where}: step {new_id} {change}")
    old_order = [matched[s.id] for s in walk(old.steps) if s.id in matched]
    new_order = [s.id for s in walk(new.steps) if s.id in reverse]
    if old_order != new_order:
        lines.append(f"{where}: steps reordered")
    if old.when_done != new.when_done:
        lines.append(f"{where}: when_done changed")
    if _text(old.enter_when) != _text(new.enter_when):
        lines.append(f"{where}: enter_when {_text(old.enter_when)!r} -> {_text(new.enter_when)!r}")
    return lines


def _step_change(old: Step, new: Step) -> str:
    """How a step kept by id changed its content, or ''."""
    if type(old) is not type(new):
        return f"is now a {type(new).__name__.lower()} step"
    if isinstance(old, Wait) and isinstance(new, Wait) and old.duration != new.duration:
        return f"{format_duration(old.duration)} -> {format_duration(new.duration)}"
    if isinstance(old, Send) and isinstance(new, Send):
        template = f"template {old.template} -> {new.template}"
        changes = [template] if old.template != new.template else []
        return "; ".join([*changes, _variants_change(old, new)]).strip("; ")
    if isinstance(old, Goto) and isinstance(new, Goto) and old.target != new.target:
        return f"goto {old.target} -> {new.target}"
    if isinstance(old, Branch) and isinstance(new, Branch):
        if old.condition.text != new.condition.text:
            return f"condition {old.condition.text!r} -> {new.condition.text!r}"
    return ""


def _variants_change(old: Send, new: Send) -> str:
    """Variants added, removed or reweighted, and a changed winner rule; leads keep theirs."""
    before = {v.id: v for v in old.variants}
    after = {v.id: v for v in new.variants}
    changes = [
        f"{v} weight {before[v].weight:g} -> {after[v].weight:g}"
        for v in after
        if v in before and before[v].weight != after[v].weight
    ]
    changes += [
        f"{v} template or subject changed"
        for v in after
        if v in before
        and (before[v].template, before[v].subject) != (after[v].template, after[v].subject)
    ]
    changes += [f"added {v}" for v in after if v not in before]
    changes += [f"removed {v}" for v in before if v not in after]
    if old.winner != new.winner:
        changes.append("winner rule changed")
    if not changes:
        return ""
    kept = "leads keep the variant they got"
    if any(v not in after for v in before):
        kept += "; leads of a removed variant draw again"
    return f"variants: {', '.join(changes)} ({kept})"


def _describe_settings(old: Sequence, new: Sequence) -> list[str]:
    """Enrolment, exit and send settings: said when they changed, in one line each."""
    lines = []
    if [c.text for c in old.exit_when] != [c.text for c in new.exit_when]:
        lines.append("exit_when changed: applies to every lead in the sequence at once")
    if (
        old.enrol.on != new.enrol.on
        or _text(old.enrol.when) != _text(new.enrol.when)
        or (_text(old.enrol.unless) != _text(new.enrol.unless))
    ):
        lines.append("enrolment rules changed: apply to new enrolments")
    if old.send != new.send:
        lines.append("send settings changed: apply to sends after apply")
    if old.on_change != new.on_change:
        lines.append(f"on_change {old.on_change} -> {new.on_change}")
    if old.holdout != new.holdout:
        shares = f"{old.holdout * 100:g}% -> {new.holdout * 100:g}%"
        lines.append(f"holdout {shares}: applies to new enrolments")
    if old.track_clicks != new.track_clicks:
        tracked = "on" if new.track_clicks else "off"
        lines.append(f"click tracking {tracked}: applies to emails sent after apply")
    return lines


def _text(condition: object) -> str:
    """A condition's text, '' for none."""
    return str(getattr(condition, "text", "")) if condition is not None else ""


def check_against(old: Sequence, new: Sequence) -> list[Problem]:
    """What `validate --against` flags: renames naming nothing, renames left undeclared."""
    problems: list[Problem] = []

    def problem(needle: str, field: str, message: str) -> None:
        problems.append(Problem(new.file, _line(new.source, needle), field, message))

    old_ids = {m.id for m in old.milestones}
    for milestone in new.milestones:
        for name in milestone.renamed_from:
            if name not in old_ids:
                hint = did_you_mean(name, old_ids)
                problem(
                    name,
                    "renamed_from",
                    f"'{name}' names no milestone of the previous version{hint}",
                )
    mapping = milestone_map(old, new)
    removed = [m for m, target in mapping.items() if target is None]
    added = [m.id for m in new.milestones if m.id not in mapping.values()]
    if removed and added:
        message = (
            f"milestone(s) {', '.join(removed)} are gone and {', '.join(added)} new since the"
            " previous version: if one is a rename, say so with renamed_from"
        )
        problem(f"id: {added[0]}", "renamed_from", message)
    for old_id, new_id in mapping.items():
        if new_id is None:
            continue
        before = {s.id for s in walk(old.milestone(old_id).steps)}
        for step in walk(new.milestone(new_id).steps):
            for name in step.renamed_from:
                if name not in before:
                    hint = did_you_mean(name, before)
                    message = (
                        f"'{name}' names no step of milestone {old_id}"
                        f" in the previous version{hint}"
                    )
                    problem(name, "renamed_from", message)
    return problems


def _line(source: str, needle: str) -> int:
    """The first line of `source` holding `needle` (1 when none), to point a problem at it."""
    for number, line in enumerate(source.splitlines(), start=1):
        if needle in line:
            return number
    return 1
