"""Load workflows/*.yml into engine.workflow.spec objects, reporting every problem with its file and line.

Reading never stops at the first problem: each reader notes what is wrong and falls back to a
placeholder so that the rest of the file is still checked; the placeholders never escape, because
any problem at all raises WorkflowError at the end.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import time, timedelta
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import ConditionError, Problem, WorkflowError
from engine.workflow import conditions
from engine.workflow.durations import parse_duration
from engine.workflow.spec import (
    Branch,
    Condition,
    Decay,
    EngagementRule,
    Enrol,
    FitRule,
    Goto,
    Limit,
    Match,
    Milestone,
    Scoring,
    Send,
    SendSettings,
    Sequence,
    Step,
    TemplateUse,
    Trigger,
    Wait,
    WhenDone,
    Window,
    Workflows,
)

SCORING_FILE = "scoring.yml"
OTHER_FILES = ("sending.yml",)
MATCH_OPS = ("equals", "one_of", "contains", "matches", "at_least", "at_most", "present")
TRIGGERS = ("slipped_back", "inactive", "recycled")
STAGES = ("subscriber", "lead", "mql", "sql", "customer", "recycled")
STEPS = ("email", "sms", "wait", "branch", "goto")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_ID = (re.compile(r"[a-z0-9_-]+"), "use lower-case letters, digits, _ and -")
_WORDS = {
    "id": _ID,
    "milestone id": _ID,
    "name": (re.compile(r"[a-z0-9][a-z0-9-]*"), "use lower-case letters, digits and -"),
    "event type": (re.compile(r"[a-z][a-z0-9_]*"), "use lower_snake_case like form_submitted"),
}
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_PHONE = re.compile(r"\+[1-9]\d{6,14}")
_HOURS = re.compile(r"(\d{1,2}):(\d\d)\s*-\s*(\d{1,2}):(\d\d)")
_LIMIT = re.compile(r"(once|\d+)(?:\s+per\s+(\w+))?")
_PERIODS = {"hour": "1h", "day": "1d", "week": "1w"}
_FALLBACK = conditions.threshold(0)
_NOT_SCALAR = object()
_NO_STEP = Wait(timedelta(0))
_NEVER: tuple[bool, timedelta | None] = (False, None)

T = TypeVar("T")


# ---- reading nodes ----------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _close(word: str, choices: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(word, sorted(choices), n=1)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = _close(word, choices)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _a(what: str) -> str:
    return f"an {what}" if what[0] in "aeiou" else f"a {what}"


def _scalar(node: Node) -> Any:
    """The Python value of a scalar node; _NOT_SCALAR for lists, mappings and unusable tags."""
    if not isinstance(node, ScalarNode):
        return _NOT_SCALAR
    try:
        return SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError, AttributeError):  # e.g. `!!int abc`, `!!timestamp x`
        return _NOT_SCALAR


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


@dataclass
class _Fields:
    """The known keys of one mapping, so a reader gets each value with its field path."""

    node: Node
    path: str
    nodes: dict[str, Node]

    def __contains__(self, key: str) -> bool:
        return key in self.nodes

    def read(self, key: str, reader: Callable[[Node, str], T], default: T) -> T:
        """The value under `key` read by `reader`, or `default` when the key is absent."""
        node = self.nodes.get(key)
        return default if node is None else reader(node, _join(self.path, key))


class _Reader:
    """Reads one file's nodes into plain values, noting each problem and falling back."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def report(self, node: Node, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, field, message))

    def pairs(self, node: Node, path: str) -> list[tuple[str, Node, Node]]:
        """Key, key node and value node of each entry; keys must be unique plain text."""
        if not isinstance(node, MappingNode):
            self.report(node, path, "expected a mapping")
            return []
        seen: set[str] = set()
        entries = []
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else ""
            if not key or key in seen:
                self.report(key_node, path, f"duplicate key '{key}'" if key else "expected a key")
                continue
            seen.add(key)
            entries.append((key, key_node, value))
        return entries

    def fields(
        self,
        node: Node,
        path: str,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
        what: str = "key",
    ) -> _Fields:
        """Check a mapping's keys: unknown ones (with a suggestion) and missing required ones."""
        known = (*required, *optional)
        nodes: dict[str, Node] = {}
        suggested: set[str] = set()
        for key, key_node, value in self.pairs(node, path):
            if key in known:
                nodes[key] = value
                continue
            suggested.update(_close(key, known))
            self.report(key_node, path, f"unknown {what} '{key}'{_did_you_mean(key, known)}")
        for key in required:
            if isinstance(node, MappingNode) and key not in nodes and key not in suggested:
                self.report(node, _join(path, key), "required key is missing")
        return _Fields(node, path, nodes)

    def items(self, node: Node, path: str, single: bool = False) -> list[tuple[Node, str]]:
        """The entries of a list with their paths; with `single`, one value is a list of one."""
        if isinstance(node, SequenceNode):
            return [(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
        if single and _scalar(node) is not None:
            return [(node, path)]
        self.report(node, path, "expected a list")
        return []

    def text(self, node: Node, path: str, what: str = "text") -> str:
        value = _scalar(node)
        if isinstance(value, str) and value.strip():
            return value.strip()
        self.report(node, path, f"expected {what}")
        return ""

    def word(self, node: Node, path: str, what: str) -> str:
        """Text of a restricted form, such as an id or an event type."""
        value = self.text(node, path, _a(what))
        pattern, usage = _WORDS[what]
        if value and not pattern.fullmatch(value):
            self.report(node, path, f"bad {what} '{value}': {usage}")
        return value

    def choice(self, node: Node, path: str, choices: Collection[str], what: str) -> str:
        value = self.text(node, path, _a(what))
        if value and value not in choices:
            hint = _did_you_mean(value, choices) or f" (use one of {', '.join(choices)})"
            self.report(node, path, f"unknown {what} '{value}'{hint}")
        return value

    def integer(self, node: Node, path: str, low: int, high: int | None = None) -> int:
        value = _scalar(node)
        if not isinstance(value, int) or isinstance(value, bool):
            self.report(node, path, "expected a whole number")
        elif value < low or (high is not None and value > high):
            limits = f"from {low} to {high}" if high is not None else f"of at least {low}"
            self.report(node, path, f"expected a whole number {limits}")
        else:
            return value
        return low

    def points(self, node: Node, path: str) -> int:
        value = _scalar(node)
        if not isinstance(value, int) or isinstance(value, bool):
            self.report(node, path, "expected a whole number of points")
        elif value == 0:
            self.report(node, path, "points may not be 0: remove the rule instead")
        else:
            return value
        return 1

    def number(self, node: Node, path: str) -> float:
        value = _scalar(node)
        if _is_number(value) and abs(value) != float("inf"):
            return float(value)
        self.report(node, path, "expected a number")
        return 0.0

    def flag(self, node: Node, path: str) -> bool:
        value = _scalar(node)
        if isinstance(value, bool):
            return value
        self.report(node, path, "expected true or false")
        return False

    def duration(self, node: Node, path: str) -> timedelta:
        value = _scalar(node)
        if not isinstance(value, str | int) or isinstance(value, bool):
            self.report(node, path, "expected a duration like 2d")
            return timedelta(days=1)
        try:
            return parse_duration(str(value))
        except ValueError as err:
            self.report(node, path, str(err))
        except OverflowError:
            self.report(node, path, f"duration '{value}' is too long")
        return timedelta(days=1)

    def condition(self, node: Node, path: str) -> Condition:
        value = _scalar(node)
        if not isinstance(value, str):
            self.report(node, path, 'expected a condition, e.g. "score >= 20"')
            return _FALLBACK
        try:
            return conditions.parse(value)
        except ConditionError as err:
            self.report(node, path, str(err))
            return _FALLBACK

    def conditions(self, node: Node, path: str) -> tuple[Condition, ...]:
        return tuple(self.condition(item, p) for item, p in self.items(node, path, single=True))

    def events(self, node: Node, path: str) -> tuple[str, ...]:
        what = "event type"
        return tuple(self.word(n, p, what) for n, p in self.items(node, path, single=True))


# ---- scoring.yml ------------------------------------------------------------------------------


class _ScoringReader(_Reader):
    """Reads scoring.yml: thresholds, engagement and fit rules, decay."""

    def __init__(self, file: str) -> None:
        super().__init__(file)
        self.rule_ids: set[str] = set()

    def read(self, root: Node) -> Scoring:
        f = self.fields(
            root,
            "",
            required=("thresholds",),
            optional=("lead_events", "engagement", "fit", "decay", "inactive_after"),
        )
        mql, sql = f.read("thresholds", self.thresholds, (_FALLBACK, _FALLBACK))
        return Scoring(
            mql=mql,
            sql=sql,
            engagement=f.read("engagement", self.engagement, ()),
            fit=f.read("fit", self.fit, ()),
            decay=f.read("decay", self.decay, None),
            inactive_after=f.read("inactive_after", self.duration, None),
            lead_events=f.read("lead_events", self.events, ()),
            file=self.file,
        )

    def thresholds(self, node: Node, path: str) -> tuple[Condition, Condition]:
        f = self.fields(node, path, required=("mql", "sql"))
        return f.read("mql", self.threshold, _FALLBACK), f.read("sql", self.threshold, _FALLBACK)

    def threshold(self, node: Node, path: str) -> Condition:
        value = _scalar(node)
        try:
            if isinstance(value, str) or _is_number(value):
                return conditions.threshold(value)
            self.report(node, path, "expected a number or a condition")
        except ConditionError as err:
            self.report(node, path, str(err))
        return _FALLBACK

    def rule_id(self, node: Node, path: str) -> str:
        value = self.word(node, path, "id")
        if value and value in self.rule_ids:
            self.report(node, path, f"duplicate rule id '{value}'")
        self.rule_ids.add(value)
        return value

    def engagement(self, node: Node, path: str) -> tuple[EngagementRule, ...]:
        return tuple(self.engagement_rule(n, p) for n, p in self.items(node, path))

    def engagement_rule(self, node: Node, path: str) -> EngagementRule:
        f = self.fields(
            node,
            path,
            required=("id", "event", "points"),
            optional=("reason", "where", "limit"),
        )
        rule_id = f.read("id", self.rule_id, "")
        return EngagementRule(
            id=rule_id,
            event=f.read("event", lambda n, p: self.word(n, p, "event type"), ""),
            points=f.read("points", self.points, 1),
            reason=f.read("reason", self.text, _reason(rule_id)),
            where=f.read("where", self.where, ()),
            limit=f.read("limit", self.limit, None),
        )

    def where(self, node: Node, path: str) -> tuple[tuple[str, Match], ...]:
        return tuple(
            (key, self.property_test(value, _join(path, key)))
            for key, _, value in self.pairs(node, path)
        )

    def property_test(self, node: Node, path: str) -> Match:
        """A bare value means equals, a list means one_of, a mapping names its test."""
        if isinstance(node, SequenceNode):
            return Match("one_of", self.values(node, path))
        if isinstance(node, ScalarNode):
            return Match("equals", self.value(node, path))
        return self.match(self.fields(node, path, optional=MATCH_OPS, what="test"))

    def match(self, f: _Fields) -> Match:
        ops = [op for op in MATCH_OPS if op in f]
        if len(ops) != 1:
            found = (
                f"one test, found {' and '.join(ops)}" if ops else f"a test: {', '.join(MATCH_OPS)}"
            )
            if isinstance(f.node, MappingNode) and len(f.node.value) == len(f.nodes):
                self.report(f.node, f.path, f"expected {found}")
            return Match("present", True)
        readers: dict[str, Callable[[Node, str], Any]] = {
            "equals": self.value,
            "one_of": self.values,
            "contains": self.text,
            "matches": self.pattern,
            "at_least": self.number,
            "at_most": self.number,
            "present": self.flag,
        }
        return Match(ops[0], f.read(ops[0], readers[ops[0]], None))

    def value(self, node: Node, path: str) -> Any:
        value = _scalar(node)
        if isinstance(value, str | bool) or _is_number(value):
            return value
        self.report(node, path, "expected text, a number, true or false")
        return ""

    def values(self, node: Node, path: str) -> tuple[Any, ...]:
        items = self.items(node, path)
        if isinstance(node, SequenceNode) and not items:
            self.report(node, path, "expected at least one value")
        return tuple(self.value(n, p) for n, p in items)

    def pattern(self, node: Node, path: str) -> str:
        value = self.text(node, path, "a regular expression")
        try:
            re.compile(value)
        except re.error as err:
            self.report(node, path, f"invalid regex: {err}")
        return value

    def limit(self, node: Node, path: str) -> Limit | None:
        """`once`, `N`, `once per day`, `N per 7d` or {count: N, per: 7d}."""
        if isinstance(node, MappingNode):
            f = self.fields(node, path, required=("count",), optional=("per",))
            count = f.read("count", lambda n, p: self.integer(n, p, 1), 1)
            return Limit(count, f.read("per", self.duration, None))
        value = _scalar(node)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return Limit(value, None)
        written = _LIMIT.fullmatch(value.strip().lower()) if isinstance(value, str) else None
        if written is not None:
            times, per = written.groups()
            try:
                window = None if per is None else parse_duration(_PERIODS.get(per, per))
                return Limit(1 if times == "once" else int(times), window)
            except (ValueError, OverflowError):
                pass
        shown = f" '{value}'" if isinstance(value, str | int) else ""
        usage = 'use once, "once per day", "3 per 7d" or {count: 3, per: 7d}'
        self.report(node, path, f"bad limit{shown}: {usage}")
        return None

    def fit(self, node: Node, path: str) -> tuple[FitRule, ...]:
        return tuple(self.fit_rule(n, p) for n, p in self.items(node, path))

    def fit_rule(self, node: Node, path: str) -> FitRule:
        f = self.fields(
            node,
            path,
            required=("id", "attribute", "points"),
            optional=("reason", *MATCH_OPS),
        )
        rule_id = f.read("id", self.rule_id, "")
        return FitRule(
            id=rule_id,
            attribute=f.read("attribute", self.text, ""),
            match=self.match(f),
            points=f.read("points", self.points, 1),
            reason=f.read("reason", self.text, _reason(rule_id)),
        )

    def decay(self, node: Node, path: str) -> Decay:
        f = self.fields(node, path, required=("after", "every"), optional=("points", "percent"))
        if isinstance(node, MappingNode) and ("points" in f) == ("percent" in f):
            self.report(node, path, "give either points or percent")
        return Decay(
            after=f.read("after", self.duration, timedelta(days=1)),
            every=f.read("every", self.duration, timedelta(days=1)),
            points=f.read("points", lambda n, p: self.integer(n, p, 1), None),
            percent=f.read("percent", self.percent, None),
        )

    def percent(self, node: Node, path: str) -> float:
        value = self.number(node, path)
        if _is_number(_scalar(node)) and not 0 < value <= 100:
            self.report(node, path, "expected a percentage above 0, at most 100")
        return value


def _reason(rule_id: str) -> str:
    """`form_submission` reads as `Form submission` in the ledger when no reason is given."""
    return rule_id.replace("_", " ").replace("-", " ").capitalize()


# ---- sequences --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reference:
    """A goto or when_done naming a milestone, checked once every milestone id is known."""

    source: str
    target: str
    node: Node
    path: str


class _SequenceReader(_Reader):
    """Reads one sequence file, checking templates and milestone references across it."""

    def __init__(
        self,
        file: str,
        templates: dict[str, set[str]],
        names: dict[str, str],
    ) -> None:
        super().__init__(file)
        self.templates = templates
        self.names = names
        self.can_sms = True
        self.here = ""
        self.ids: dict[str, tuple[Node, str]] = {}
        self.references: list[_Reference] = []
        self.uses: list[TemplateUse] = []

    def read(self, root: Node, version: str) -> Sequence:
        f = self.fields(
            root,
            "",
            required=("name", "enrol", "send", "milestones"),
            optional=("description", "exit_when"),
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
        )

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
        value = _scalar(node)
        if isinstance(value, str) and value in TRIGGERS:
            return Trigger(value)
        self.report(node, path, _unknown_trigger(value))
        return Trigger("inactive")

    def stages(self, node: Node, path: str) -> tuple[str, ...]:
        items = self.items(node, path, single=True)
        return tuple(self.choice(n, p, STAGES, "stage") for n, p in items)

    def again(self, node: Node, path: str) -> tuple[bool, timedelta | None]:
        """`never`, `always` or a duration after which the same lead may enrol again."""
        value = _scalar(node)
        if value == "never" or value is False:
            return False, None
        if value == "always" or value is True:
            return True, None
        try:
            return True, parse_duration(value)
        except (ValueError, OverflowError):
            self.report(node, path, "expected never, always or a duration like 90d")
            return False, None

    # -- send --

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

    def address(self, node: Node, path: str) -> tuple[str, str]:
        """Name and address of `Acme <hello@acme.test>`, or of a bare address."""
        text = self.text(node, path, "an email address")
        name, email = parseaddr(text)
        if _EMAIL.fullmatch(email):
            return name, email
        if text:
            self.report(node, path, f"bad address '{text}': write it like Acme <hello@acme.test>")
        return "", ""

    def phone(self, node: Node, path: str) -> str:
        value = _scalar(node)
        if isinstance(value, str) and _PHONE.fullmatch(value.strip()):
            return value.strip()
        self.report(node, path, 'expected a phone number in quotes, like "+15005550006"')
        return ""

    def window(self, node: Node, path: str) -> Window:
        f = self.fields(node, path, required=("hours",), optional=("days",))
        start, end = f.read("hours", self.hours, (time(0), time(23, 59)))
        return Window(days=f.read("days", self.days, frozenset(range(7))), start=start, end=end)

    def hours(self, node: Node, path: str) -> tuple[time, time]:
        value = _scalar(node)
        found = _HOURS.fullmatch(value.strip()) if isinstance(value, str) else None
        numbers = [int(part) for part in found.groups()] if found else []
        if not numbers or max(numbers[0], numbers[2]) > 23 or max(numbers[1], numbers[3]) > 59:
            shown = f" '{value}'" if isinstance(value, str | int) else ""
            self.report(node, path, f'bad hours{shown}: write them like "09:00-18:00"')
            return time(0), time(23, 59)
        start, end = time(numbers[0], numbers[1]), time(numbers[2], numbers[3])
        if start >= end:
            self.report(node, path, "the window must start before it ends")
        return start, end

    def days(self, node: Node, path: str) -> frozenset[int]:
        """`mon-fri`, `mon,wed,fri` or a list of those; ranges may wrap around the weekend."""
        value = _scalar(node)
        if isinstance(node, SequenceNode):
            parts = [_scalar(item) for item in node.value]
        else:
            parts = value.split(",") if isinstance(value, str) else [value]
        days: set[int] = set()
        for part in parts:
            found = _day_range(part) if isinstance(part, str) else None
            if found is None:
                shown = f" '{part.strip()}'" if isinstance(part, str) else ""
                self.report(node, path, f"bad day{shown}: write days like mon-fri or mon,wed,fri")
                return frozenset(range(7))
            days |= found
        if not days:
            self.report(node, path, "expected at least one day")
        return frozenset(days or range(7))

    # -- milestones --

    def milestones(self, node: Node, path: str) -> tuple[Milestone, ...]:
        items = self.items(node, path)
        if isinstance(node, SequenceNode) and not items:
            self.report(node, path, "a sequence needs at least one milestone")
        milestones = tuple(self.milestone(n, p, first=i == 0) for i, (n, p) in enumerate(items))
        self.check_references()
        self.check_reachable(milestones)
        return milestones

    def milestone(self, node: Node, path: str, first: bool) -> Milestone:
        f = self.fields(node, path, required=("id", "steps"), optional=("enter_when", "when_done"))
        self.here = f.read("id", self.milestone_id, "")
        enter_when = None
        if first and "enter_when" in f:
            message = "the first milestone is where leads start; enter_when is not allowed here"
            self.report(f.nodes["enter_when"], _join(path, "enter_when"), message)
        else:
            enter_when = f.read("enter_when", self.condition, None)
        return Milestone(
            id=self.here,
            steps=f.read("steps", lambda n, p: self.steps(n, p, False)[0], ()),
            enter_when=enter_when,
            when_done=f.read("when_done", self.when_done, WhenDone()),
        )

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
        if len(entries) != 1:
            keys = " and ".join(key for key, _, _ in entries)
            message = "expected a step: email, sms, wait, branch or goto"
            self.report(node, path, f"one step per '-' item, found {keys}" if keys else message)
            return _NO_STEP, waited
        kind, key_node, value = entries[0]
        at = _join(path, kind)
        if kind in ("email", "sms"):
            return Send(kind, self.template(value, at, kind)), waited
        if kind == "wait":
            return Wait(self.duration(value, at)), True
        if kind == "branch":
            return self.branch(value, at, waited)
        if kind == "goto":
            return Goto(self.goto(value, at, waited)), waited
        self.report(key_node, path, f"unknown step '{kind}'{_did_you_mean(kind, STEPS)}")
        return _NO_STEP, waited

    def template(self, node: Node, path: str, channel: str) -> str:
        name = self.text(node, path, "a template name")
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
        if name in self.templates[other]:
            kind = "an SMS" if other == "sms" else "an email"
            return f"'{name}' is {kind} template: use {other}: {name}"
        return f"unknown template '{name}'{_did_you_mean(name, self.templates[channel])}"

    def branch(self, node: Node, path: str, waited: bool) -> tuple[Branch, bool]:
        f = self.fields(node, path, required=("if", "then"), optional=("else",))
        none: tuple[tuple[Step, ...], bool] = ((), waited)
        then, then_waited = f.read("then", lambda n, p: self.steps(n, p, waited), none)
        otherwise, else_waited = f.read("else", lambda n, p: self.steps(n, p, waited), none)
        condition = f.read("if", self.condition, _FALLBACK)
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
        value = _scalar(node)
        if value in ("wait", "exit"):
            return WhenDone(goto=None if value == "wait" else "exit")
        self.report(node, path, "expected wait, exit or {after: 14d, goto: <milestone>}")
        return WhenDone()

    def check_references(self) -> None:
        for reference in self.references:
            if reference.target != "exit" and reference.target not in self.ids:
                hint = _did_you_mean(reference.target, [*self.ids, "exit"])
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


def _unknown_trigger(value: Any) -> str:
    usage = "use {event: ...}, {stage: ...}, slipped_back, inactive or recycled"
    if not isinstance(value, str):
        return f"expected a trigger: {usage}"
    hint = _did_you_mean(value, TRIGGERS) or f" (for an event write {{event: {value}}})"
    return f"unknown trigger '{value}'{hint}"


def _day_range(text: str) -> frozenset[int] | None:
    """`mon` or `mon-fri` as day numbers (0 = Monday); None when a name is not a day."""
    ends = [_day(part) for part in text.split("-")]
    first, last = ends[0], ends[-1]
    if len(ends) > 2 or first is None or last is None:
        return None
    return frozenset((first + offset) % 7 for offset in range((last - first) % 7 + 1))


def _day(text: str) -> int | None:
    word = text.strip().lower()
    return next((i for i, day in enumerate(DAYS) if len(word) >= 3 and day.startswith(word)), None)


# ---- files ------------------------------------------------------------------------------------


def _display(path: Path) -> str:
    """The path relative to the working directory when it lies below it, else as given."""
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def _compose(reader: _Reader, data: bytes) -> Node | None:
    """The YAML node tree with line marks; a syntax error becomes a problem at its line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        reader.problems.append(Problem(reader.file, line, "", "not UTF-8 text"))
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else 1
        problem = f"{err.context}, {err.problem}" if err.context else err.problem
        reader.problems.append(Problem(reader.file, line, "", f"YAML syntax error: {problem}"))
        return None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        message = f"YAML syntax error: {err.reason} ({chr(err.character)!r})"
        reader.problems.append(Problem(reader.file, line, "", message))
        return None
    if root is None:
        reader.problems.append(Problem(reader.file, 1, "", "the file is empty"))
    return root


def _version(files: Iterable[tuple[str, bytes]]) -> str:
    """A short content hash, so a stored position names the exact workflow it came from."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def load_workflows(
    directory: Path, email_templates: set[str], sms_templates: set[str]
) -> Workflows:
    """Read and check every workflow file, raising one WorkflowError that lists all problems."""
    paths = sorted(
        path
        for path in directory.glob("*")
        if path.suffix in (".yml", ".yaml") and path.is_file() and not path.name.startswith(".")
    )
    problems: list[Problem] = []
    if directory / SCORING_FILE not in paths:
        missing = "file not found: the workflows folder needs scoring.yml with the thresholds"
        problems.append(Problem(_display(directory / SCORING_FILE), 1, "", missing))
    templates = {"email": email_templates, "sms": sms_templates}
    names: dict[str, str] = {}
    scoring: Scoring | None = None
    sequences: dict[str, Sequence] = {}
    uses: list[TemplateUse] = []
    for path in paths:
        file, data = _display(path), path.read_bytes()
        try:
            if path.name in OTHER_FILES:
                continue  # read by their own modules (sending.yml: engine/policy.py)
            if path.name == SCORING_FILE:
                scoring = _load_scoring(file, data, problems)
            elif path.stem == SCORING_FILE.removesuffix(".yml"):
                problems.append(Problem(file, 1, "", f"name this file {SCORING_FILE}"))
            elif sequence := _load_sequence(file, data, templates, names, problems, uses):
                sequences[sequence.name] = sequence
        except RecursionError:
            problems.append(Problem(file, 1, "", "nested too deeply, or an alias inside itself"))
    if problems or scoring is None:
        raise WorkflowError(sorted(problems, key=lambda p: (p.file, p.line)))
    contents = [(path.name, path.read_bytes()) for path in paths]
    return Workflows(
        scoring=scoring,
        sequences=sequences,
        version=_version(contents),
        template_uses=tuple(uses),
    )


def _load_scoring(file: str, data: bytes, problems: list[Problem]) -> Scoring | None:
    reader = _ScoringReader(file)
    root = _compose(reader, data)
    scoring = None if root is None else reader.read(root)
    problems.extend(reader.problems)
    return scoring


def _load_sequence(
    file: str,
    data: bytes,
    templates: dict[str, set[str]],
    names: dict[str, str],
    problems: list[Problem],
    uses: list[TemplateUse],
) -> Sequence | None:
    reader = _SequenceReader(file, templates, names)
    root = _compose(reader, data)
    sequence = None if root is None else reader.read(root, hashlib.sha256(data).hexdigest()[:12])
    problems.extend(reader.problems)
    uses.extend(reader.uses)
    return sequence
