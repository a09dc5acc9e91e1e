"""Read sources.yml: how calls from event pipelines (the Segment spec) become events and fields.

The file is optional: without it, track event names are kept in snake_case and the usual
traits (email, phone, firstName, lastName, company, title, timezone) fill the lead's fields.
"""

from __future__ import annotations

import re

from yaml.nodes import Node

from engine.errors import Problem
from engine.models import STANDARD_FIELDS
from engine.workflow.reader import Reader, compose, join
from engine.workflow.spec import SegmentMapping, Unmapped

SOURCES_FILE = "sources.yml"
# A trait fills a lead field: an address, a standard attribute, or a custom field.
LEAD_FIELDS = ("email", "phone", *STANDARD_FIELDS)
# Never from a trait: the user id is the external id; stage, owner and consent have their own
# paths; email_domain is derived from the email.
NOT_FROM_TRAITS = (
    "external_id",
    "stage",
    "owner",
    "fields",
    "email_domain",
    "email_consent",
    "sms_consent",
)
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,99}")


def field_problem(name: str) -> str | None:
    """Why `name` is no lead field a source (a trait, a form field) may fill; None when it is:
    one of LEAD_FIELDS, or a custom field in lower_snake_case."""
    if name in LEAD_FIELDS or _FIELD.fullmatch(name):
        return None
    return (
        f"bad field '{name}': use one of {', '.join(LEAD_FIELDS)}, or a custom field name "
        "in lower_snake_case"
    )


class SourcesReader(Reader):
    """Reads sources.yml with the same file:line: field messages as the other workflow files."""

    def read(self, root: Node) -> SegmentMapping:
        f = self.fields(root, "", optional=("segment",))
        return f.read("segment", self.segment, SegmentMapping())

    def segment(self, node: Node, path: str) -> SegmentMapping:
        f = self.fields(node, path, optional=("events", "unmapped", "traits"))
        unmapped = f.read("unmapped", self.unmapped, Unmapped.KEEP)
        return SegmentMapping(
            events=f.read("events", self.events_map, {}),
            unmapped=unmapped,
            traits=f.read("traits", self.traits, {}),
        )

    def unmapped(self, node: Node, path: str) -> Unmapped:
        choices = [u.value for u in Unmapped]
        value = self.choice(node, path, choices, "option")
        return Unmapped(value) if value in choices else Unmapped.KEEP

    def events_map(self, node: Node, path: str) -> dict[str, str]:
        """Track event name (any text) -> event type (lower_snake_case)."""
        return {
            name: self.word(value, join(path, name), "event type")
            for name, _, value in self.pairs(node, path)
        }

    def traits(self, node: Node, path: str) -> dict[str, str]:
        """Trait name -> the lead field it fills (a standard one or a custom field)."""
        mapped = {}
        for name, _, value in self.pairs(node, path):
            where = join(path, name)
            target = self.text(value, where, "a lead field name")
            if not target:
                continue
            if target in NOT_FROM_TRAITS:
                self.report(value, where, f"'{target}' cannot come from a trait")
            elif problem := field_problem(target):
                self.report(value, where, problem)
            mapped[name] = target
        return mapped


def load_sources(file: str, data: bytes, problems: list[Problem]) -> SegmentMapping:
    """Read sources.yml from its bytes, adding its problems (an empty file is one, as for the
    other workflow files)."""
    reader = SourcesReader(file)
    root = compose(reader, data)
    mapping = SegmentMapping() if root is None else reader.read(root)
    problems.extend(reader.problems)
    return mapping
