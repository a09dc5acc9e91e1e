"""The validated, immutable form of workflow YAML: what the engine runs, whatever the file said."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from enum import StrEnum
from typing import Any, Protocol


class Facts(Protocol):
    """What a condition may ask about a lead; the engine answers it from the database."""

    @property
    def score(self) -> float:
        """Fit plus engagement."""

    @property
    def fit(self) -> float:
        """Points for who the lead is."""

    @property
    def engagement(self) -> float:
        """Points for what the lead did."""

    @property
    def stage(self) -> str:
        """The lifecycle stage's name."""

    def attribute(self, name: str) -> Any:
        """A lead field (email, company, title, ...) or custom field; None when absent."""

    def has_event(self, types: tuple[str, ...], within: timedelta | None) -> bool:
        """True when one of `types` occurred within the window (None: the context's default)."""


class Condition(Protocol):
    """A parsed condition string; evaluating it never runs user code."""

    text: str

    def evaluate(self, facts: Facts) -> bool:
        """True when the condition holds for these facts."""

    def event_types(self) -> frozenset[str]:
        """Event types the condition looks at, to know when it may change."""


# ---- scoring.yml ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One test of a value: equals, one_of, contains, matches, at_least, at_most, present."""

    op: str
    value: Any = None

    def test(self, actual: Any) -> bool:
        """True when `actual` passes; a missing value passes nothing but `present: false`."""
        if self.op == "present":
            return bool((actual not in (None, "")) == bool(self.value))
        if actual is None:
            return False
        if self.op == "equals":
            return bool(_norm(actual) == _norm(self.value))
        if self.op == "one_of":
            wanted = _norm(actual)
            return any(wanted == _norm(v) for v in self.value)
        if self.op == "contains":
            return str(self.value).lower() in str(actual).lower()
        if self.op == "matches":
            return re.search(self.value, str(actual)) is not None
        number = _number(actual)
        if number is None:
            return False
        if self.op == "at_least":
            return number >= float(self.value)
        if self.op == "at_most":
            return number <= float(self.value)
        raise ValueError(f"unknown match operator {self.op!r}")


def _norm(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class Limit:
    """At most `count` scored events of a rule within `per` (None: ever)."""

    count: int
    per: timedelta | None


@dataclass(frozen=True)
class EngagementRule:
    """Points for an event type whose properties pass every `where` test, within a limit."""

    id: str
    event: str
    points: int
    reason: str
    where: tuple[tuple[str, Match], ...] = ()
    limit: Limit | None = None

    def applies_to(self, event_type: str, properties: dict[str, Any]) -> bool:
        """True when this rule scores an event of that type with those properties."""
        return event_type == self.event and all(m.test(properties.get(k)) for k, m in self.where)


@dataclass(frozen=True)
class FitRule:
    """Points while a lead attribute passes a test; recomputed whenever attributes change."""

    id: str
    attribute: str
    match: Match
    points: int
    reason: str


@dataclass(frozen=True)
class Decay:
    """Engagement lost with inactivity: after `after` idle, `points` (or `percent`) per `every`."""

    after: timedelta
    every: timedelta
    points: int | None = None
    percent: float | None = None


@dataclass(frozen=True)
class Scoring:
    """Thresholds and rules from workflows/scoring.yml."""

    mql: Condition
    sql: Condition
    engagement: tuple[EngagementRule, ...]
    fit: tuple[FitRule, ...]
    decay: Decay | None
    inactive_after: timedelta | None
    lead_events: tuple[str, ...]
    file: str = "scoring.yml"


# ---- sequences ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """What enrols a lead: an event (`values`: types), a stage, slipped_back, inactive, recycled."""

    kind: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fired:
    """A trigger that happened to a lead: kind is event, stage, slipped_back, inactive, recycled."""

    kind: str
    value: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.value}" if self.value else self.kind


@dataclass(frozen=True)
class Enrol:
    """When a sequence takes a lead in, and whether it may take the same lead again."""

    on: tuple[Trigger, ...]
    when: Condition | None = None
    unless: Condition | None = None
    again: bool = False
    again_after: timedelta | None = None


# Every step has an `id`, stable across edits: given in the YAML, or derived from its content
# within its milestone (kind and template, with an occurrence number), never from its position.
# `renamed_from` lists ids the step had in earlier versions.


class Metric(StrEnum):
    """What makes a send of a variant a success, counted within its winner rule's window."""

    CLICKED = "clicked"
    OPENED = "opened"
    REPLIED = "replied"
    MQL = "mql"
    SQL = "sql"


# What each channel can measure: an SMS has no opens or tracked clicks, an email no replies.
CHANNEL_METRICS: Mapping[str, tuple[Metric, ...]] = {
    "email": (Metric.CLICKED, Metric.OPENED, Metric.MQL, Metric.SQL),
    "sms": (Metric.REPLIED, Metric.MQL, Metric.SQL),
}


@dataclass(frozen=True)
class Variant:
    """One version of a send step, drawn with `weight`: its own template, subject, or both.

    `id` is stable across edits (given, or the variant's template), so a lead keeps the
    variant it got when weights change or variants are added.
    """

    id: str
    template: str
    weight: float = 1.0
    subject: str | None = None  # a Jinja line that replaces the template's subject block


@dataclass(frozen=True)
class Winner:
    """When one variant goes to every later lead: once each has `after` sends whose `within`
    window has closed, and `metric` differs between them at `confidence`."""

    metric: Metric
    within: timedelta
    after: int
    confidence: float


@dataclass(frozen=True)
class StepNames:
    """Every milestone id and step id one step went by: its deliveries carry one of each."""

    milestones: tuple[str, ...]
    steps: tuple[str, ...]


@dataclass(frozen=True)
class Send:
    """Plan one email or SMS from a template, or from one of its variants."""

    channel: str
    template: str
    id: str = ""
    renamed_from: tuple[str, ...] = ()
    variants: tuple[Variant, ...] = ()
    winner: Winner | None = None

    def variant(self, variant_id: str | None) -> Variant | None:
        """The variant with this id; None when the step has no such variant (any more)."""
        return next((v for v in self.variants if v.id == variant_id), None)


@dataclass(frozen=True)
class Wait:
    """Pause the drip; the due time lives in the database, not in a sleep."""

    duration: timedelta
    id: str = ""
    renamed_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class Branch:
    """Evaluate a condition on the lead now and run one of two step lists."""

    condition: Condition
    then: tuple[Step, ...]
    otherwise: tuple[Step, ...]
    id: str = ""
    renamed_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class Goto:
    """Move to another milestone of the sequence, or `exit`."""

    target: str
    id: str = ""
    renamed_from: tuple[str, ...] = ()


Step = Send | Wait | Branch | Goto


@dataclass(frozen=True)
class Jump:
    """Compiled only: continue at `target` (the end of a branch's `then` list)."""

    target: int


@dataclass(frozen=True)
class Test:
    """Compiled only: evaluate `condition`; fall through when true, else continue at `otherwise`."""

    condition: Condition
    otherwise: int
    id: str = ""  # the branch's id


Instruction = Send | Wait | Goto | Test | Jump


def walk(steps: tuple[Step, ...]) -> list[Step]:
    """Every step of a list, the steps inside branches included, in reading order."""
    found: list[Step] = []
    for step in steps:
        found.append(step)
        if isinstance(step, Branch):
            found.extend(walk(step.then) + walk(step.otherwise))
    return found


def compile_steps(steps: tuple[Step, ...], start: int = 0) -> list[Instruction]:
    """Flatten nested branches into a program addressed by index, so a step's position is an int."""
    program: list[Instruction] = []
    for step in steps:
        if isinstance(step, Branch):
            then = compile_steps(step.then, start + len(program) + 1)
            test_at = len(program)
            program.append(Test(step.condition, otherwise=-1, id=step.id))
            program.extend(then)
            jump_at = len(program)
            program.append(Jump(target=-1))
            otherwise_start = start + len(program)
            program.extend(compile_steps(step.otherwise, otherwise_start))
            program[test_at] = Test(step.condition, otherwise=otherwise_start, id=step.id)
            program[jump_at] = Jump(target=start + len(program))
        else:
            program.append(step)
    return program


@dataclass(frozen=True)
class WhenDone:
    """What an exhausted milestone does: wait for a trigger, or after `after` go to `goto`."""

    after: timedelta | None = None
    goto: str | None = None  # a milestone id or "exit"; None with after None: wait for a trigger


@dataclass(frozen=True)
class Milestone:
    """A stage of a sequence with its steps and the score trigger that moves leads into it."""

    id: str
    steps: tuple[Step, ...]
    enter_when: Condition | None = None
    when_done: WhenDone = field(default_factory=WhenDone)
    renamed_from: tuple[str, ...] = ()

    @property
    def program(self) -> list[Instruction]:
        """The steps flattened for execution; positions in it are stable for one version."""
        return compile_steps(self.steps)


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) and local hours during which a sequence may send."""

    days: frozenset[int]
    start: time
    end: time


@dataclass(frozen=True)
class SendSettings:
    """Sender identity, send window and SMS limits of a sequence."""

    from_email: str
    from_name: str = ""
    reply_to: str | None = None
    sms_from: str | None = None
    window: Window | None = None
    sms_max_segments: int = 3


# A topic: what a sequence's emails are about, and what a lead may unsubscribe from alone.
# Sequences without `topic:` share the default one, so a deployment that declares no topics
# still stops all its nurture emails when a lead leaves the topic of one of them.
TOPIC = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")
DEFAULT_TOPIC = "marketing"


class OnChange(StrEnum):
    """What an edit of a sequence does to leads in it: move them by `apply`, or let them finish."""

    MIGRATE = "migrate"
    PIN = "pin"


@dataclass(frozen=True)
class Sequence:
    """One nurture sequence from workflows/NAME.yml, identified by name and content hash."""

    name: str
    file: str
    version: str
    enrol: Enrol
    milestones: tuple[Milestone, ...]
    exit_when: tuple[Condition, ...]
    send: SendSettings
    description: str = ""
    on_change: OnChange = OnChange.MIGRATE
    source: str = ""  # the file's text, stored with the version
    topic: str = DEFAULT_TOPIC  # what its emails are about, named in its unsubscribe links
    holdout: float = 0.0  # the share of leads enrolled but sent nothing, to measure the lift
    track_clicks: bool = False  # email links go through nurture's signed redirect (/c/...)

    def send_step(self, milestone_id: str, step_id: str) -> Send | None:
        """The send step with this id in that milestone; None when this version has none."""
        try:
            steps = walk(self.milestone(milestone_id).steps)
        except KeyError:
            return None
        return next((s for s in steps if isinstance(s, Send) and s.id == step_id), None)

    def known_as(self, milestone_id: str, step: Send) -> StepNames:
        """The milestone and step ids a step had in this and earlier versions (`renamed_from`),
        so its sends, its leads' variants and its winner carry across a rename."""
        milestone = self.milestone(milestone_id)
        return StepNames((milestone.id, *milestone.renamed_from), (step.id, *step.renamed_from))

    def experiments(self) -> list[tuple[str, Send]]:
        """(milestone id, step) of every send step with variants, in reading order."""
        return [
            (m.id, step)
            for m in self.milestones
            for step in walk(m.steps)
            if isinstance(step, Send) and step.variants
        ]

    def milestone(self, milestone_id: str) -> Milestone:
        """The milestone with this id; KeyError when a stored id no longer exists."""
        for milestone in self.milestones:
            if milestone.id == milestone_id:
                return milestone
        raise KeyError(milestone_id)

    def index(self, milestone_id: str) -> int:
        """Position of a milestone, so triggers can only move leads forward."""
        return [m.id for m in self.milestones].index(milestone_id)


# ---- sending.yml ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietHours:
    """Local hours during which nothing is sent on a channel, e.g. 21:00-08:00 for SMS."""

    start: time
    end: time

    def contains(self, moment: time) -> bool:
        """True inside the quiet span; spans may wrap midnight."""
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True)
class Cap:
    """At most `count` sends on a channel to one lead within `per`, across all sequences."""

    count: int
    per: timedelta


@dataclass(frozen=True)
class SendPolicy:
    """Rules across all sequences: quiet hours and caps per channel, retries, the send lease."""

    quiet_hours: Mapping[str, QuietHours] = field(default_factory=dict)
    caps: Mapping[str, Cap] = field(default_factory=dict)
    default_timezone: str = "UTC"
    max_attempts: int = 6
    backoff: timedelta = timedelta(seconds=30)
    lease: timedelta = timedelta(minutes=10)
    rates: Mapping[str, float] = field(default_factory=dict)  # per sender or channel, msg/s
    pace_timeout: float = 1.0  # longest a worker waits for a send slot before re-planning
    # Pace a little under each provider limit: the slot-to-provider jitter of tens of ms would
    # otherwise push some sends inside a strict one-second window (bench/egress.py).
    pace_headroom: float = 0.95

    def retry_delay(self, attempts: int, hint: float | None) -> timedelta:
        """Exponential backoff from the attempt count, never sooner than the provider's hint."""
        delay: timedelta = self.backoff * (2 ** max(attempts - 1, 0))
        return max(delay, timedelta(seconds=hint)) if hint else delay


@dataclass(frozen=True)
class OwnerRule:
    """Assign leads matching `condition` to `owner`."""

    condition: Condition
    owner: str


@dataclass(frozen=True)
class Assignment:
    """Who receives a handoff: the first matching rule, else the next owner in rotation."""

    owners: tuple[str, ...] = ()
    rules: tuple[OwnerRule, ...] = ()
    notify_owner: bool = False


@dataclass(frozen=True)
class Policy:
    """Everything sending.yml says; defaults apply when the file is absent."""

    send: SendPolicy = field(default_factory=SendPolicy)
    assignment: Assignment = field(default_factory=Assignment)


# A template a step names, located: (template, channel, file, line[, field[, subject]]), where
# `subject` is a variant's own subject line, rendered in place of the template's.
TemplateUse = (
    tuple[str, str, str, int] | tuple[str, str, str, int, str] | tuple[str, str, str, int, str, str]
)


@dataclass(frozen=True)
class Source:
    """One workflow file's text as loaded: kind (sequence, scoring, sending), name and hash."""

    kind: str
    name: str
    file: str
    hash: str
    text: str


class Unmapped(StrEnum):
    """What sources.yml does with a tracked event name it does not map: keep it (in
    snake_case) or drop it."""

    KEEP = "keep"
    DROP = "drop"


@dataclass(frozen=True)
class SegmentMapping:
    """sources.yml's `segment:` section: track event names to event types, traits to fields."""

    events: Mapping[str, str] = field(default_factory=dict)
    unmapped: Unmapped = Unmapped.KEEP
    traits: Mapping[str, str] = field(default_factory=dict)  # trait -> lead field, over defaults


class FieldType(StrEnum):
    """What a form field takes: free text, an email address, a phone number, or one of choices."""

    TEXT = "text"
    EMAIL = "email"
    TEL = "tel"
    SELECT = "select"


@dataclass(frozen=True)
class FormField:
    """One field of a hosted form: the lead field it fills, its label and its checks."""

    name: str
    label: str
    type: FieldType = FieldType.TEXT
    required: bool = False
    max_length: int = 200
    choices: tuple[str, ...] = ()
    placeholder: str = ""


@dataclass(frozen=True)
class FormConsent:
    """The consent box of a form: the exact text shown, whether it must be ticked, and whether
    email consent waits for the click in a confirmation email (double opt-in)."""

    text: str
    required: bool = False
    double_opt_in: bool = False


@dataclass(frozen=True)
class Form:
    """A hosted form from forms.yml: what it asks, the event it records, where it sends people."""

    name: str
    title: str
    file: str
    line: int
    event: str = "form_submitted"
    topic: str = DEFAULT_TOPIC
    fields: tuple[FormField, ...] = ()
    consent: FormConsent | None = None
    description: str = ""
    submit: str = "Submit"
    thanks: str = "Thank you."
    redirect: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    confirm_template: str = "confirm_subscription"
    sender: tuple[str, str] | None = None  # (name, address) of the confirmation email


@dataclass(frozen=True)
class Workflows:
    """Everything loaded from the workflows folder, validated together."""

    scoring: Scoring
    sequences: dict[str, Sequence]
    version: str
    # The text of scoring.yml and sending.yml, stored as versions (sequences carry their own).
    sources: tuple[Source, ...] = ()
    # Every template a step names, located, so validation can render each one.
    template_uses: tuple[TemplateUse, ...] = ()
    # How Segment-spec calls map to events and lead fields (sources.yml; defaults without it).
    segment: SegmentMapping = field(default_factory=SegmentMapping)
    # Hosted forms by name (forms.yml; none without it).
    forms: Mapping[str, Form] = field(default_factory=dict)
