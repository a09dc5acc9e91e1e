"""Read scoring.yml: MQL and SQL thresholds, engagement and fit rules, and score decay."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import ConditionError, Problem
from engine.models import Stage
from engine.workflow.conditions import threshold
from engine.workflow.durations import parse_duration
from engine.workflow.reader import FALLBACK, Fields, Reader, compose, is_number, join, scalar
from engine.workflow.spec import Condition, Decay, EngagementRule, FitRule, Limit, Match, Scoring

MATCH_OPS = ("equals", "one_of", "contains", "matches", "at_least", "at_most", "present")
_LIMIT = re.compile(r"(once|\d+)(?:\s+per\s+(\w+))?")
_PERIODS = {"hour": "1h", "day": "1d", "week": "1w"}


class ScoringReader(Reader):
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
        mql, sql = f.read("thresholds", self.thresholds, (FALLBACK, FALLBACK))
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
        f = self.fields(node, path, required=(Stage.MQL, Stage.SQL))
        mql = f.read(Stage.MQL, self.threshold, FALLBACK)
        return mql, f.read(Stage.SQL, self.threshold, FALLBACK)

    def threshold(self, node: Node, path: str) -> Condition:
        value = scalar(node)
        try:
            if isinstance(value, str) or is_number(value):
                return threshold(value)
            self.report(node, path, "expected a number or a condition")
        except ConditionError as err:
            self.report(node, path, str(err))
        return FALLBACK

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
            (key, self.property_test(value, join(path, key)))
            for key, _, value in self.pairs(node, path)
        )

    def property_test(self, node: Node, path: str) -> Match:
        """A bare value means equals, a list means one_of, a mapping names its test."""
        if isinstance(node, SequenceNode):
            return Match("one_of", self.values(node, path))
        if isinstance(node, ScalarNode):
            return Match("equals", self.value(node, path))
        return self.match(self.fields(node, path, optional=MATCH_OPS, what="test"))

    def match(self, f: Fields) -> Match:
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
        value = scalar(node)
        if isinstance(value, str | bool) or is_number(value):
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
        value = scalar(node)
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
        if is_number(scalar(node)) and not 0 < value <= 100:
            self.report(node, path, "expected a percentage above 0, at most 100")
        return value


def _reason(rule_id: str) -> str:
    """`form_submission` reads as `Form submission` in the ledger when no reason is given."""
    return rule_id.replace("_", " ").replace("-", " ").capitalize()


def load_scoring(file: str, data: bytes, problems: list[Problem]) -> Scoring | None:
    """Read scoring.yml from its bytes, adding its problems; None when it is not YAML at all."""
    reader = ScoringReader(file)
    root = compose(reader, data)
    scoring = None if root is None else reader.read(root)
    problems.extend(reader.problems)
    return scoring
