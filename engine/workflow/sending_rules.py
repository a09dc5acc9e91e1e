"""workflows/sending.yml: rules across all sequences (quiet hours, caps, rates, retries, owners)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import time, timedelta
from pathlib import Path
from typing import TypeVar
from zoneinfo import available_timezones

import yaml
from yaml.nodes import Node

from engine.errors import Problem, WorkflowError
from engine.workflow.reader import HOURS, Reader, display, join
from engine.workflow.spec import Assignment, Cap, OwnerRule, Policy, QuietHours, SendPolicy

SENDING_FILE = "sending.yml"
CHANNELS = ("email", "sms")

T = TypeVar("T")


class _PolicyReader(Reader):
    """Reads sending.yml with the same file:line: field messages as the other workflow files."""

    def read(self, root: Node) -> Policy:
        f = self.fields(
            root,
            "",
            optional=(
                "timezone",
                "quiet_hours",
                "frequency_caps",
                "rates",
                "retries",
                "send_timeout",
                "handoff",
            ),
        )
        tz = f.read("timezone", self.timezone, "UTC")
        quiet: dict[str, QuietHours] = f.read("quiet_hours", self.per_channel(self.quiet_hours), {})
        caps: dict[str, Cap] = f.read("frequency_caps", self.per_channel(self.cap), {})
        max_attempts, backoff = f.read("retries", self.retries, (6, timedelta(seconds=30)))
        timeout = f.read("send_timeout", self.duration, timedelta(minutes=10))
        return Policy(
            send=SendPolicy(
                quiet_hours=quiet,
                caps=caps,
                default_timezone=tz,
                max_attempts=max_attempts,
                backoff=backoff,
                lease=timeout,
                rates=f.read("rates", self.rates, {}),
            ),
            assignment=f.read("handoff", self.assignment, Assignment()),
        )

    def timezone(self, node: Node, path: str) -> str:
        return self.choice(node, path, sorted(available_timezones()), "time zone") or "UTC"

    def per_channel(self, reader: Callable[[Node, str], T]) -> Callable[[Node, str], dict[str, T]]:
        """A reader of a mapping from channel to a value that `reader` reads."""

        def read(node: Node, path: str) -> dict[str, T]:
            f = self.fields(node, path, optional=CHANNELS, what="channel")
            return {c: reader(f.nodes[c], join(path, c)) for c in CHANNELS if c in f}

        return read

    def quiet_hours(self, node: Node, path: str) -> QuietHours:
        text = self.text(node, path, 'hours like "21:00-08:00"')
        match = HOURS.fullmatch(text)
        if (
            match is None
            or int(match[1]) > 23
            or int(match[3]) > 23
            or int(match[2]) > 59
            or int(match[4]) > 59
        ):
            self.report(node, path, f'bad hours \'{text}\': use "HH:MM-HH:MM", e.g. "21:00-08:00"')
            return QuietHours(time(0), time(0))
        return QuietHours(time(int(match[1]), int(match[2])), time(int(match[3]), int(match[4])))

    def cap(self, node: Node, path: str) -> Cap:
        f = self.fields(node, path, required=("count", "per"))
        return Cap(
            count=f.read("count", lambda n, p: self.integer(n, p, 1), 1),
            per=f.read("per", self.duration, timedelta(days=1)),
        )

    def rates(self, node: Node, path: str) -> dict[str, float]:
        rates = {}
        for key, _, value in self.pairs(node, path):
            rate = self.number(value, f"{path}.{key}")
            if rate <= 0:
                self.report(value, f"{path}.{key}", "expected messages per second above 0")
            rates[key] = rate
        return rates

    def retries(self, node: Node, path: str) -> tuple[int, timedelta]:
        f = self.fields(node, path, optional=("max_attempts", "backoff"))
        return (
            f.read("max_attempts", lambda n, p: self.integer(n, p, 1, 50), 6),
            f.read("backoff", self.duration, timedelta(seconds=30)),
        )

    def assignment(self, node: Node, path: str) -> Assignment:
        f = self.fields(node, path, optional=("owners", "rules", "notify_owner"))
        no_owners: tuple[str, ...] = ()
        no_rules: tuple[OwnerRule, ...] = ()
        owners = f.read("owners", self.owners, no_owners)
        rules = f.read("rules", self.owner_rules, no_rules)
        return Assignment(owners, rules, f.read("notify_owner", self.flag, False))

    def owners(self, node: Node, path: str) -> tuple[str, ...]:
        return tuple(self.email(n, p) for n, p in self.items(node, path, single=True))

    def email(self, node: Node, path: str) -> str:
        value = self.text(node, path, "an email address")
        if value and "@" not in value:
            self.report(node, path, f"'{value}' is not an email address")
        return value

    def owner_rules(self, node: Node, path: str) -> tuple[OwnerRule, ...]:
        rules = []
        for item, item_path in self.items(node, path):
            f = self.fields(item, item_path, required=("if", "owner"))
            condition = f.read("if", self.condition, None)
            owner = f.read("owner", self.email, "")
            if condition is not None and owner:
                rules.append(OwnerRule(condition, owner))
        return tuple(rules)


def load_policy(directory: Path) -> Policy:
    """Read sending.yml from the workflows folder; defaults when there is none."""
    path = directory / SENDING_FILE
    if not path.is_file():
        return Policy()
    file = display(path)
    reader = _PolicyReader(file)
    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise WorkflowError([Problem(file, line, "", f"not valid YAML: {error}")]) from error
    policy = Policy() if root is None else reader.read(root)
    if reader.problems:
        raise WorkflowError(reader.problems)
    return policy
