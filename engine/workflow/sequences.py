"""Read one sequence file: enrolment triggers, send settings, milestones and their steps."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import timedelta
from email.utils import formataddr
from typing import Any

from yaml.nodes import MappingNode, Node, SequenceNode

from engine.errors import Problem
from engine.models import Stage
from engine.workflow.durations import parse_duration
from engine.workflow.reader import (
    FALLBACK,
    Reader,
    compose,
    content_hash,
    did_you_mean,
    is_number,
    join,
    scalar,
)
from engine.workflow.spec import (
    CHANNEL_METRICS,
    DEFAULT_TOPIC,
    Branch,
    Enrol,
    Goto,
    Metric,
    Milestone,
    OnChange,
    Send,
    SendSettings,
    Sequence,
    Step,
    TemplateUse,
    Trigger,
    Variant,
    Wait,
    WhenDone,
    Winner,
)

TRIGGERS = ("slipped_back", "inactive", "recycled")
STEPS = ("email", "sms", "wait", "branch", "goto")
# Keys a step may carry beside its kind: its stable id and the ids it had before; a send step
# also its variants and the rule that picks their winner.
STEP_OPTIONS = ("id", "renamed_from", "variants", "winner")
SEND_OPTIONS = ("variants", "winner")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")

_NO_STEP = Wait(timedelta(0))
_NEVER: tuple[bool, timedelta | None] = (False, None)


@dataclass(frozen=True)
class _Reference:
    """A goto or when_done naming a milestone, checked once every milestone id is known."""

    source: str
    target: str
    node: Node
    path: str


class SequenceReader(Reader):
    """Reads one sequence file, checking templates and milestone references across it."""

    def __init__(
        self,
        file: str,
        templates: dict[str, set[str]] | None,
        names: dict[str, str],
    ) -> None:
        super().__init__(file)
        self.templates = templates  # None: a stored version, whose templates are not checked
        self.names = names
        self.here = ""
        self.ids: dict[str, tuple[Node, str]] = {}
        self.renames: list[tuple[str, Node, str]] = []  # milestone renamed_from, checked at end
        # of the milestone being read: step ids, derived-id counts, step renamed_from entries
        self.step_ids: set[str] = set()
        self.occurrences: dict[str, int] = {}
        self.step_renames: list[tuple[str, Node, str]] = []
        self.references: list[_Reference] = []
        self.uses: list[TemplateUse] = []
        self.can_sms = True

    def read(self, root: Node, version: str, source: str) -> Sequence:
        f = self.fields(
            root,
            "",
            required=("name", "enrol", "send", "milestones"),
            optional=(
                "description",
                "topic",
                "exit_when",
                "on_change",
                "holdout",
                "track_clicks",
            ),
        )
        send = f.read("send", self.send, SendSettings(from_email=""))
        return Sequence(
            name=f.read("name", self.name, ""),
            file=self.file,
            version=version,
            enrol=f.read("enrol", self.enrol, Enrol(on=())),
            milestones=f.read("milestones", self.milestones, ()),
            exit_when=f.read("exit_when", self.conditions, ()),
            send=send,
            description=f.read("description", self.text, ""),
            on_change=f.read("on_change", self.on_change, OnChange.MIGRATE),
            source=source,
            topic=f.read("topic", self.topic, DEFAULT_TOPIC),
            holdout=f.read("holdout", self.holdout, 0.0),
            track_clicks=f.read("track_clicks", self.flag, False),
        )

    def holdout(self, node: Node, path: str) -> float:
        """The share of leads enrolled but sent nothing, written like 5% (0% for none)."""
        value = scalar(node)
        found = _PERCENT.fullmatch(value.strip()) if isinstance(value, str) else None
        if value == 0 and not isinstance(value, bool):
            return 0.0
        if found is None or not 0 <= float(found.group(1)) < 100:
            hint = (
                f" (for {value} write {value * 100:g}%)"
                if is_number(value) and 0 < value < 1
                else ""
            )
            message = f"expected a share of leads from 0% to under 100%, like 5%{hint}"
            self.report(node, path, message)
            return 0.0
        return float(found.group(1)) / 100

    def topic(self, node: Node, path: str) -> str:
        """What the emails are about, e.g. product-news: a lead may unsubscribe from it alone."""
        return self.word(node, path, "topic")

    def on_change(self, node: Node, path: str) -> OnChange:
        """`migrate` (the default: `nurture apply` moves leads) or `pin` (leads finish as begun)."""
        value = self.choice(node, path, [c.value for c in OnChange], "on_change")
        return OnChange(value) if value in OnChange.__members__.values() else OnChange.MIGRATE

    def name(self, node: Node, path: str) -> str:
        value = self.word(node, path, "name")
        if value in self.names:
            self.report(
                node, path, f"sequence name '{value}' is already used by {self.names[value]}"
            )
        elif value:
            self.names[value] = self.file
        return value

    # -- enrol --

    def enrol(self, node: Node, path: str) -> Enrol:
        f = self.fields(node, path, required=("on",), optional=("if", "unless", "again"))
        again, again_after = f.read("again", self.again, _NEVER)
        return Enrol(
            on=f.read("on", self.triggers, ()),
            when=f.read("if", self.condition, None),
            unless=f.read("unless", self.condition, None),
            again=again,
            again_after=again_after,
        )

    def triggers(self, node: Node, path: str) -> tuple[Trigger, ...]:
        items = self.items(node, path, single=True)
        if isinstance(node, SequenceNode) and not items:
            self.report(node, path, "expected at least one trigger")
        return tuple(self.trigger(n, p) for n, p in items)

    def trigger(self, node: Node, path: str) -> Trigger:
        """{event: ...}, {stage: ...}, slipped_back, inactive or recycled."""
        if isinstance(node, MappingNode):
            f = self.fields(node, path, optional=("event", "stage"), what="trigger")
            if len(f.nodes) == 1:
                kind = next(iter(f.nodes))
                return Trigger(
                    kind, f.read(kind, self.events if kind == "event" else self.stages, ())
                )
            if f.nodes or not node.value:
                self.report(node, path, "expected one of {event: ...} or {stage: ...}")
            return Trigger("inactive")
        value = scalar(node)
        if isinstance(value, str) and value in TRIGGERS:
            return Trigger(value)
        self.report(node, path, _unknown_trigger(value))
        return Trigger("inactive")

    def stages(self, node: Node, path: str) -> tuple[str, ...]:
        items = self.items(node, path, single=True)
        return tuple(self.choice(n, p, [s.value for s in Stage], "stage") for n, p in items)

    def again(self, node: Node, path: str) -> tuple[bool, timedelta | None]:
        """`never`, `always` or a duration after which the same lead may enrol again."""
        value = scalar(node)
        if value == "never" or value is False:
            return False, None
        if value == "always" or value is True:
            return True, None
        try:
            return True, parse_duration(value)
        except (ValueError, OverflowError):
            self.report(node, path, "expected never, always or a duration like 90d")
            return False, None

    # -- milestones --

    def milestones(self, node: Node, path: str) -> tuple[Milestone, ...]:
        items = self.items(node, path)
        if isinstance(node, SequenceNode) and not items:
            self.report(node, path, "a sequence needs at least one milestone")
        milestones = tuple(self.milestone(n, p, first=i == 0) for i, (n, p) in enumerate(items))
        for old, node_, path_ in self.renames:
            if old in self.ids:
                self.report(
                    node_, path_, f"'{old}' is still a milestone here: rename it or drop this"
                )
        self.check_references()
        self.check_reachable(milestones)
        return milestones

    def milestone(self, node: Node, path: str, first: bool) -> Milestone:
        f = self.fields(
            node,
            path,
            required=("id", "steps"),
            optional=("enter_when", "when_done", "renamed_from"),
        )
        self.here = f.read("id", self.milestone_id, "")
        self.step_ids, self.occurrences, self.step_renames = set(), {}, []
        enter_when = None
        if first and "enter_when" in f:
            message = "the first milestone is where leads start; enter_when is not allowed here"
            self.report(f.nodes["enter_when"], join(path, "enter_when"), message)
        else:
            enter_when = f.read("enter_when", self.condition, None)
        renamed_from: tuple[str, ...] = f.read("renamed_from", self.old_ids, ())
        if renamed_from:
            at = (f.nodes["renamed_from"], join(path, "renamed_from"))
            self.renames.extend((old, *at) for old in renamed_from)
        steps: tuple[Step, ...] = f.read("steps", lambda n, p: self.steps(n, p, False)[0], ())
        for old, old_node, old_path in self.step_renames:
            if old in self.step_ids:
                message = f"'{old}' is still a step of this milestone: rename it or drop this"
                self.report(old_node, old_path, message)
        return Milestone(
            id=self.here,
            steps=steps,
            enter_when=enter_when,
            when_done=f.read("when_done", self.when_done, WhenDone()),
            renamed_from=renamed_from,
        )

    def old_ids(self, node: Node, path: str) -> tuple[str, ...]:
        """One id or a list of ids a milestone or step had in earlier versions."""
        items = self.items(node, path, single=True)
        return tuple(self.text(n, p, "an earlier id") for n, p in items)

    def step_id(self, id_node: Node | None, derived: str, node: Node, path: str) -> str:
        """The step's given `id:`, else `derived` with an occurrence number from the second on.

        Deliveries are unique by step id, so two steps of a milestone may not share one.
        """
        if id_node is not None:
            step_id = self.word(id_node, join(path, "id"), "id")
        else:
            self.occurrences[derived] = count = self.occurrences.get(derived, 0) + 1
            step_id = derived if count == 1 else f"{derived}#{count}"
        if step_id in self.step_ids:
            message = (
                f"two steps of milestone '{self.here}' resolve to the id '{step_id}':"
                " give one an explicit id"
            )
            self.report(id_node or node, path, message)
        elif step_id:
            self.step_ids.add(step_id)
        return step_id

    def milestone_id(self, node: Node, path: str) -> str:
        value = self.word(node, path, "milestone id")
        if value == "exit":
            self.report(node, path, "'exit' is reserved: it means leaving the sequence")
        elif value in self.ids:
            self.report(node, path, f"duplicate milestone id '{value}'")
        elif value:
            self.ids[value] = (node, path)
        return value

    def steps(self, node: Node, path: str, waited: bool) -> tuple[tuple[Step, ...], bool]:
        """The steps of a list, and whether every way through them passes a wait."""
        steps: list[Step] = []
        for item, item_path in self.items(node, path):
            if steps and isinstance(steps[-1], Goto):
                self.report(item, item_path, "steps after a goto never run")
            step, waited = self.step(item, item_path, waited)
            steps.append(step)
        return tuple(steps), waited

    def step(self, node: Node, path: str, waited: bool) -> tuple[Step, bool]:
        entries = self.pairs(node, path) if isinstance(node, MappingNode) else []
        options = {key: value for key, _, value in entries if key in STEP_OPTIONS}
        kinds = [entry for entry in entries if entry[0] not in STEP_OPTIONS]
        if len(kinds) != 1:
            keys = " and ".join(key for key, _, _ in kinds)
            message = "expected a step: email, sms, wait, branch or goto"
            self.report(node, path, f"one step per '-' item, found {keys}" if keys else message)
            return _NO_STEP, waited
        kind, key_node, value = kinds[0]
        at = join(path, kind)
        renamed_from: tuple[str, ...] = ()
        if "renamed_from" in options:
            renamed_at = join(path, "renamed_from")
            renamed_from = self.old_ids(options["renamed_from"], renamed_at)
            self.step_renames.extend(
                (old, options["renamed_from"], renamed_at) for old in renamed_from
            )
        id_node = options.get("id")
        if kind in ("email", "sms"):
            template = self.template(value, at, kind)
            step_id = self.step_id(id_node, f"{kind}:{template}", node, path)
            variants: tuple[Variant, ...] = ()
            if "variants" in options:
                at = join(path, "variants")
                variants = self.variants(options["variants"], at, kind, template)
            winner = None
            if "winner" in options:
                winner = self.winner(options["winner"], join(path, "winner"), kind)
                if not variants:
                    message = "a winner needs variants to choose from: add variants"
                    self.report(options["winner"], join(path, "winner"), message)
            return Send(kind, template, step_id, renamed_from, variants, winner), waited
        for option in SEND_OPTIONS:
            if option in options:
                message = f"only email and sms steps have {option}"
                self.report(options[option], join(path, option), message)
        if kind == "wait":
            duration = self.duration(value, at)
            return Wait(duration, self.step_id(id_node, "wait", node, path), renamed_from), True
        if kind == "branch":
            step_id = self.step_id(id_node, "branch", node, path)  # before the steps inside it
            branch, waited = self.branch(value, at, waited)
            return replace(branch, id=step_id, renamed_from=renamed_from), waited
        if kind == "goto":
            target = self.goto(value, at, waited)
            step_id = self.step_id(id_node, f"goto:{target}", node, path)
            return Goto(target, step_id, renamed_from), waited
        self.report(key_node, path, f"unknown step '{kind}'{did_you_mean(kind, STEPS)}")
        return _NO_STEP, waited

    def variants(self, node: Node, path: str, channel: str, template: str) -> tuple[Variant, ...]:
        """Two or more versions of the step: each its template (the step's when not given),
        an email subject line, a weight (1 when not given) and a stable id."""
        items = self.items(node, path)
        if isinstance(node, SequenceNode) and len(items) < 2:
            self.report(node, path, "variants need at least two entries to compare")
        variants: list[Variant] = []
        for item, at in items:
            variant = self.variant(item, at, channel, template)
            if not isinstance(item, MappingNode):
                continue  # reported as not a mapping: its id means nothing
            if variant.id and variant.id in [v.id for v in variants]:
                message = f"two variants resolve to the id '{variant.id}': give one an explicit id"
                self.report(item, at, message)
            variants.append(variant)
        return tuple(variants)

    def variant(self, node: Node, path: str, channel: str, template: str) -> Variant:
        """One variant: {id, template, subject, weight}, each optional but an id for a subject."""
        f = self.fields(node, path, optional=("id", "template", "subject", "weight"))
        if "template" in f:
            template = f.read("template", lambda n, p: self.template(n, p, channel), template)
        subject = None
        if "subject" in f and channel != "email":
            self.report(f.nodes["subject"], join(path, "subject"), "only emails have a subject")
        elif "subject" in f:
            subject = f.read("subject", self.text, "")
            at = (self.file, f.nodes["subject"].start_mark.line + 1, join(path, "subject"))
            if self.templates is not None:  # rendered with its template at validation
                self.uses.append((template, channel, *at, subject))
        if "id" in f:
            variant_id = f.read("id", lambda n, p: self.word(n, p, "id"), "")
        elif subject is not None:
            variant_id = ""
            self.report(node, path, "a variant with its own subject needs an id")
        else:
            variant_id = template  # stable: the variant's template names it
        return Variant(variant_id, template, f.read("weight", self.weight, 1.0), subject)

    def weight(self, node: Node, path: str) -> float:
        """A variant's share relative to the others: any number above 0."""
        if not is_number(scalar(node)):
            return self.number(node, path) or 1.0  # reports "expected a number"
        value = self.number(node, path)
        if value <= 0:
            self.report(node, path, "a weight must be more than 0")
            return 1.0
        return value

    def winner(self, node: Node, path: str, channel: str) -> Winner:
        """{metric, within, after, confidence}: when one variant goes to every later lead."""
        f = self.fields(
            node, path, required=("metric",), optional=("within", "after", "confidence")
        )
        metrics = [m.value for m in CHANNEL_METRICS[channel]]
        metric = f.read("metric", lambda n, p: self.metric(n, p, channel, metrics), metrics[0])
        return Winner(
            metric=Metric(metric),
            within=f.read("within", self.duration, timedelta(days=7)),
            after=f.read("after", lambda n, p: self.integer(n, p, 10), 500),
            confidence=f.read("confidence", self.confidence, 0.95),
        )

    def metric(self, node: Node, path: str, channel: str, metrics: list[str]) -> str:
        """One of the metrics the step's channel can measure."""
        value = scalar(node)
        if value in Metric.__members__.values() and value not in metrics:
            message = f"an {channel} step cannot measure '{value}': use {', '.join(metrics)}"
            self.report(node, path, message)
            return metrics[0]
        value = self.choice(node, path, metrics, "metric")
        return value if value in metrics else metrics[0]

    def confidence(self, node: Node, path: str) -> float:
        """How sure the test must be, from 0.5 to 0.999 (0.95: a 5% chance of a false winner)."""
        value = self.number(node, path)
        if not 0.5 <= value <= 0.999:
            self.report(node, path, "expected a confidence from 0.5 to 0.999, like 0.95")
            return 0.95
        return value

    def template(self, node: Node, path: str, channel: str) -> str:
        name = self.text(node, path, "a template name")
        if self.templates is None:
            return name
        if name and name not in self.templates[channel]:
            self.report(node, path, self.unknown_template(name, channel))
        elif name:
            self.uses.append((name, channel, self.file, node.start_mark.line + 1, path))
        if channel == "sms" and not self.can_sms:
            self.report(node, path, "an sms step needs a sender: add send.sms_from")
        return name

    def unknown_template(self, name: str, channel: str) -> str:
        """Say when a template exists for the other channel, else suggest a close name."""
        other = "sms" if channel == "email" else "email"
        assert self.templates is not None
        if name in self.templates[other]:
            kind = "an SMS" if other == "sms" else "an email"
            return f"'{name}' is {kind} template: use {other}: {name}"
        return f"unknown template '{name}'{did_you_mean(name, self.templates[channel])}"

    def branch(self, node: Node, path: str, waited: bool) -> tuple[Branch, bool]:
        f = self.fields(node, path, required=("if", "then"), optional=("else",))
        none: tuple[tuple[Step, ...], bool] = ((), waited)
        then, then_waited = f.read("then", lambda n, p: self.steps(n, p, waited), none)
        otherwise, else_waited = f.read("else", lambda n, p: self.steps(n, p, waited), none)
        condition = f.read("if", self.condition, FALLBACK)
        return Branch(condition, then, otherwise), then_waited and else_waited

    def goto(self, node: Node, path: str, waited: bool) -> str:
        target = self.text(node, path, "a milestone id or exit")
        if target and target == self.here and not waited:
            message = (
                f"goto '{target}' loops back to its own milestone at once: add a wait before it"
            )
            self.report(node, path, message)
        if target:
            self.references.append(_Reference(self.here, target, node, path))
        return target

    def when_done(self, node: Node, path: str) -> WhenDone:
        """`wait` (for a trigger), `exit`, or {after: 14d, goto: milestone-or-exit}."""
        if isinstance(node, MappingNode):
            f = self.fields(node, path, required=("goto",), optional=("after",))
            after = f.read("after", self.duration, None)
            return WhenDone(
                after=after, goto=f.read("goto", lambda n, p: self.goto(n, p, True), None)
            )
        value = scalar(node)
        if value in ("wait", "exit"):
            return WhenDone(goto=None if value == "wait" else "exit")
        self.report(node, path, "expected wait, exit or {after: 14d, goto: <milestone>}")
        return WhenDone()

    def check_references(self) -> None:
        for reference in self.references:
            if reference.target != "exit" and reference.target not in self.ids:
                hint = did_you_mean(reference.target, [*self.ids, "exit"])
                message = f"unknown milestone '{reference.target}'{hint}"
                self.report(reference.node, reference.path, message)

    def check_reachable(self, milestones: tuple[Milestone, ...]) -> None:
        """A lead reaches a milestone by starting there, by its enter_when, or by a goto."""
        todo = [m.id for i, m in enumerate(milestones) if i == 0 or m.enter_when is not None]
        reached: set[str] = set()
        while todo:
            here = todo.pop()
            if here not in reached:
                reached.add(here)
                todo.extend(r.target for r in self.references if r.source == here)
        for milestone in milestones:
            if milestone.id in self.ids and milestone.id not in reached:
                node, path = self.ids[milestone.id]
                advice = "give it enter_when or point a goto at it"
                self.report(node, path, f"milestone '{milestone.id}' is unreachable: {advice}")

    def send(self, node: Node, path: str) -> SendSettings:
        f = self.fields(
            node,
            path,
            required=("from",),
            optional=("reply_to", "sms_from", "window", "sms_max_segments"),
        )
        self.can_sms = "sms_from" in f
        from_name, from_email = f.read("from", self.address, ("", ""))
        return SendSettings(
            from_email=from_email,
            from_name=from_name,
            reply_to=f.read("reply_to", lambda n, p: formataddr(self.address(n, p)), None),
            sms_from=f.read("sms_from", self.phone, None),
            window=f.read("window", self.window, None),
            sms_max_segments=f.read("sms_max_segments", lambda n, p: self.integer(n, p, 1, 10), 3),
        )


def _unknown_trigger(value: Any) -> str:
    usage = "use {event: ...}, {stage: ...}, slipped_back, inactive or recycled"
    if not isinstance(value, str):
        return f"expected a trigger: {usage}"
    hint = did_you_mean(value, TRIGGERS) or f" (for an event write {{event: {value}}})"
    return f"unknown trigger '{value}'{hint}"


def load_sequence(
    file: str,
    data: bytes,
    templates: dict[str, set[str]] | None,
    names: dict[str, str],
    problems: list[Problem],
    uses: list[TemplateUse],
) -> Sequence | None:
    """Read one sequence file from its bytes, adding its problems and the templates it uses.

    `templates` None reads a stored version, whose templates may since have left the disk.
    """
    reader = SequenceReader(file, templates, names)
    root = compose(reader, data)
    version = content_hash(data)
    source = data.decode("utf-8", errors="replace")
    sequence = None if root is None else reader.read(root, version, source)
    problems.extend(reader.problems)
    uses.extend(reader.uses)
    return sequence
