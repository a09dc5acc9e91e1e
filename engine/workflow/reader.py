"""The generic YAML-node reading behind every workflow file: fields, values, problems, syntax.

A Reader notes each problem with its file, line and field path and falls back to a placeholder,
so that one mistake never hides the next; the loaders raise WorkflowError once a file is read.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import time, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import ConditionError, Problem
from engine.workflow.conditions import parse as parse_condition
from engine.workflow.conditions import threshold
from engine.workflow.durations import parse_duration
from engine.workflow.spec import TOPIC, Condition, Window

_ID = (re.compile(r"[a-z0-9_-]+"), "use lower-case letters, digits, _ and -")
_WORDS = {
    "id": _ID,
    "milestone id": _ID,
    "name": (re.compile(r"[a-z0-9][a-z0-9-]*"), "use lower-case letters, digits and -"),
    "event type": (re.compile(r"[a-z][a-z0-9_]*"), "use lower_snake_case like form_submitted"),
    "topic": (TOPIC, "use lower-case letters, digits and -, at most 100, like product-news"),
}
HOURS = re.compile(r"(\d{1,2}):(\d\d)\s*-\s*(\d{1,2}):(\d\d)")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_PHONE = re.compile(r"\+[1-9]\d{6,14}")
FALLBACK = threshold(0)
_NOT_SCALAR = object()

T = TypeVar("T")


# ---- reading nodes ----------------------------------------------------------------------------


def join(path: str, key: str) -> str:
    """The field path of `key` inside `path`, e.g. enrol.on; the key alone at the top."""
    return f"{path}.{key}" if path else key


def _close(word: str, choices: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(word, sorted(choices), n=1)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" hint naming the closest choice, or "" when none is close."""
    close = _close(word, choices)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _a(what: str) -> str:
    return f"an {what}" if what[0] in "aeiou" else f"a {what}"


def scalar(node: Node) -> Any:
    """The Python value of a scalar node; _NOT_SCALAR for lists, mappings and unusable tags."""
    if not isinstance(node, ScalarNode):
        return _NOT_SCALAR
    try:
        return SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError, AttributeError):  # e.g. `!!int abc`, `!!timestamp x`
        return _NOT_SCALAR


def is_number(value: Any) -> bool:
    """True for an int or float that is not a bool and not NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


@dataclass
class Fields:
    """The known keys of one mapping, so a reader gets each value with its field path."""

    node: Node
    path: str
    nodes: dict[str, Node]

    def __contains__(self, key: str) -> bool:
        return key in self.nodes

    def read(self, key: str, reader: Callable[[Node, str], T], default: T) -> T:
        """The value under `key` read by `reader`, or `default` when the key is absent."""
        node = self.nodes.get(key)
        return default if node is None else reader(node, join(self.path, key))


class Reader:
    """Reads one file's nodes into plain values, noting each problem and falling back."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def report(self, node: Node, field: str, message: str) -> None:
        """Note a problem at the line where `node` starts."""
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
    ) -> Fields:
        """Check a mapping's keys: unknown ones (with a suggestion) and missing required ones."""
        known = (*required, *optional)
        nodes: dict[str, Node] = {}
        suggested: set[str] = set()
        for key, key_node, value in self.pairs(node, path):
            if key in known:
                nodes[key] = value
                continue
            suggested.update(_close(key, known))
            self.report(key_node, path, f"unknown {what} '{key}'{did_you_mean(key, known)}")
        for key in required:
            if isinstance(node, MappingNode) and key not in nodes and key not in suggested:
                self.report(node, join(path, key), "required key is missing")
        return Fields(node, path, nodes)

    def items(self, node: Node, path: str, single: bool = False) -> list[tuple[Node, str]]:
        """The entries of a list with their paths; with `single`, one value is a list of one."""
        if isinstance(node, SequenceNode):
            return [(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
        if single and scalar(node) is not None:
            return [(node, path)]
        self.report(node, path, "expected a list")
        return []

    def text(self, node: Node, path: str, what: str = "text") -> str:
        """Non-blank text, stripped; `what` names the expected value in the message."""
        value = scalar(node)
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
        """One of `choices`, suggesting the closest when the text is not among them."""
        value = self.text(node, path, _a(what))
        if value and value not in choices:
            hint = did_you_mean(value, choices) or f" (use one of {', '.join(choices)})"
            self.report(node, path, f"unknown {what} '{value}'{hint}")
        return value

    def integer(self, node: Node, path: str, low: int, high: int | None = None) -> int:
        """A whole number from `low` to `high` (no upper limit when None)."""
        value = scalar(node)
        if not isinstance(value, int) or isinstance(value, bool):
            self.report(node, path, "expected a whole number")
        elif value < low or (high is not None and value > high):
            limits = f"from {low} to {high}" if high is not None else f"of at least {low}"
            self.report(node, path, f"expected a whole number {limits}")
        else:
            return value
        return low

    def points(self, node: Node, path: str) -> int:
        """A whole, non-zero number of points, negative to take points away."""
        value = scalar(node)
        if not isinstance(value, int) or isinstance(value, bool):
            self.report(node, path, "expected a whole number of points")
        elif value == 0:
            self.report(node, path, "points may not be 0: remove the rule instead")
        else:
            return value
        return 1

    def number(self, node: Node, path: str) -> float:
        """A finite number, whole or not."""
        value = scalar(node)
        if is_number(value) and abs(value) != float("inf"):
            return float(value)
        self.report(node, path, "expected a number")
        return 0.0

    def flag(self, node: Node, path: str) -> bool:
        """true or false."""
        value = scalar(node)
        if isinstance(value, bool):
            return value
        self.report(node, path, "expected true or false")
        return False

    def duration(self, node: Node, path: str) -> timedelta:
        """A duration like 2d, 36h or 1w."""
        value = scalar(node)
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
        """A parsed condition string, e.g. "score >= 20"."""
        value = scalar(node)
        if not isinstance(value, str):
            self.report(node, path, 'expected a condition, e.g. "score >= 20"')
            return FALLBACK
        try:
            return parse_condition(value)
        except ConditionError as err:
            self.report(node, path, str(err))
            return FALLBACK

    def conditions(self, node: Node, path: str) -> tuple[Condition, ...]:
        """One condition or a list of them."""
        return tuple(self.condition(item, p) for item, p in self.items(node, path, single=True))

    def events(self, node: Node, path: str) -> tuple[str, ...]:
        """One event type or a list of them."""
        what = "event type"
        return tuple(self.word(n, p, what) for n, p in self.items(node, path, single=True))

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
        value = scalar(node)
        if isinstance(value, str) and _PHONE.fullmatch(value.strip()):
            return value.strip()
        self.report(node, path, 'expected a phone number in quotes, like "+15005550006"')
        return ""

    def window(self, node: Node, path: str) -> Window:
        f = self.fields(node, path, required=("hours",), optional=("days",))
        start, end = f.read("hours", self.hours, (time(0), time(23, 59)))
        return Window(days=f.read("days", self.days, frozenset(range(7))), start=start, end=end)

    def hours(self, node: Node, path: str) -> tuple[time, time]:
        value = scalar(node)
        found = HOURS.fullmatch(value.strip()) if isinstance(value, str) else None
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
        value = scalar(node)
        if isinstance(node, SequenceNode):
            parts = [scalar(item) for item in node.value]
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


# ---- files ------------------------------------------------------------------------------------


def content_hash(data: bytes) -> str:
    """The short hash that names one content of one workflow file: its version."""
    return hashlib.sha256(data).hexdigest()[:12]


def display(path: Path) -> str:
    """The path relative to the working directory when it lies below it, else as given."""
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def compose(reader: Reader, data: bytes) -> Node | None:
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
