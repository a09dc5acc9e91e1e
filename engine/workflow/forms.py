"""Read forms.yml: hosted forms, the lead fields they fill, the event they record, their consent.

The file is optional: without it, nurture serves no forms. Each problem names file, line and
field, as for the other workflow files.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from yaml.nodes import Node, SequenceNode

from engine.errors import Problem
from engine.workflow.reader import Reader, compose, join, scalar
from engine.workflow.sources import NOT_FROM_TRAITS, field_problem
from engine.workflow.spec import DEFAULT_TOPIC, FieldType, Form, FormConsent, FormField

FORMS_FILE = "forms.yml"
# Names a form posts besides its fields: the honeypot, the visitor the snippet stamps, the
# signed render time, the page it was on and the consent box.
HONEYPOT = "fax"
VISITOR_FIELD = "nurture_visitor"
RENDERED_FIELD = "nurture_rendered"
PAGE_FIELD = "nurture_page"
CONSENT_FIELD = "consent"
RESERVED = frozenset({HONEYPOT, VISITOR_FIELD, RENDERED_FIELD, PAGE_FIELD, CONSENT_FIELD})
MAX_LENGTH = 2000  # the longest a field may be allowed to be
_DEFAULT_TYPE = {"email": FieldType.EMAIL, "phone": FieldType.TEL}
_DEFAULT_LENGTH = {"email": 320, "phone": 30}
_FORM_KEYS = (
    "description",
    "event",
    "topic",
    "consent",
    "submit",
    "thanks",
    "redirect",
    "properties",
    "confirm_template",
    "from",
)
_FIELD_KEYS = ("type", "required", "max_length", "choices", "placeholder")


class FormsReader(Reader):
    """Reads forms.yml with the same file:line: field messages as the other workflow files."""

    def __init__(self, file: str, email_templates: Collection[str]) -> None:
        super().__init__(file)
        self.email_templates = email_templates

    def read(self, root: Node) -> dict[str, Form]:
        f = self.fields(root, "", required=("forms",))
        return f.read("forms", self.forms, {})

    def forms(self, node: Node, path: str) -> dict[str, Form]:
        found = {}
        for name, key, value in self.pairs(node, path):
            where = join(path, name)
            if self.word(key, where, "name") == "confirm":
                self.report(key, where, "'confirm' is taken by confirmation links: rename it")
            found[name] = self.form(name, key, value, where)
        return found

    def form(self, name: str, key: Node, node: Node, path: str) -> Form:
        f = self.fields(node, path, required=("title", "fields"), optional=_FORM_KEYS)
        none: tuple[FormField, ...] = ()
        fields = f.read("fields", self.field_list, none)
        consent = f.read("consent", self.consent, None)
        template = f.read("confirm_template", self.text, "confirm_subscription")
        form = Form(
            name=name,
            title=f.read("title", self.text, ""),
            file=self.file,
            line=key.start_mark.line + 1,
            event=f.read("event", lambda n, p: self.word(n, p, "event type"), "form_submitted"),
            topic=f.read("topic", lambda n, p: self.word(n, p, "topic"), DEFAULT_TOPIC),
            fields=fields,
            consent=consent,
            description=f.read("description", self.text, ""),
            submit=f.read("submit", self.text, "Submit"),
            thanks=f.read("thanks", self.text, "Thank you."),
            redirect=f.read("redirect", self.url, None),
            properties=f.read("properties", self.properties, {}),
            confirm_template=template,
            sender=f.read("from", self.address, None),
        )
        names = {field.name: field for field in fields}
        if fields and not {"email", "phone"} & names.keys():
            needs = "a form needs an email or phone field"
            self.report(f.nodes["fields"], join(path, "fields"), needs)
        if consent is not None and consent.double_opt_in:
            email = names.get("email")
            if email is None or not email.required:
                self.report(
                    f.nodes["consent"],
                    join(path, "consent.double_opt_in"),
                    "double opt-in needs a required email field: the confirmation goes there",
                )
            if template not in self.email_templates:
                where = f.nodes.get("confirm_template", f.nodes["consent"])
                self.report(
                    where,
                    join(path, "confirm_template"),
                    f"no email template '{template}' (templates/email/{template}.j2)",
                )
        return form

    def field_list(self, node: Node, path: str) -> tuple[FormField, ...]:
        fields: list[FormField] = []
        seen: set[str] = set()
        for item, where in self.items(node, path):
            field = self.form_field(item, where)
            if field.name and field.name in seen:
                self.report(item, join(where, "name"), f"field '{field.name}' is asked twice")
            seen.add(field.name)
            fields.append(field)
        if isinstance(node, SequenceNode) and not node.value:
            self.report(node, path, "a form needs at least one field")
        return tuple(fields)

    def form_field(self, node: Node, path: str) -> FormField:
        f = self.fields(node, path, required=("name", "label"), optional=_FIELD_KEYS)
        name = f.read("name", self.lead_field, "")
        kind = f.read("type", self.field_type, _DEFAULT_TYPE.get(name, FieldType.TEXT))
        wanted = _DEFAULT_TYPE.get(name)
        if wanted is not None and kind != wanted and "type" in f:
            self.report(f.nodes["type"], join(path, "type"), f"the {name} field has type {wanted}")
            kind = wanted
        no_choices: tuple[str, ...] = ()
        choices = f.read("choices", self.choices, no_choices)
        if kind == FieldType.SELECT and not choices:
            self.report(node, join(path, "choices"), "a select field needs choices")
        if choices and kind != FieldType.SELECT:
            only = "only a select field has choices"
            self.report(f.nodes["choices"], join(path, "choices"), only)
        length = _DEFAULT_LENGTH.get(name, 200)
        return FormField(
            name=name,
            label=f.read("label", self.text, ""),
            type=kind,
            required=f.read("required", self.flag, False),
            max_length=f.read("max_length", lambda n, p: self.integer(n, p, 1, MAX_LENGTH), length),
            choices=choices,
            placeholder=f.read("placeholder", self.text, ""),
        )

    def lead_field(self, node: Node, path: str) -> str:
        """A lead field a form may fill: email, phone, a standard attribute, or a custom one."""
        name = self.text(node, path, "a lead field name")
        if not name:
            return ""
        if name in RESERVED or name in NOT_FROM_TRAITS:
            self.report(node, path, f"'{name}' cannot be a form field")
        elif problem := field_problem(name):
            self.report(node, path, problem)
        return name

    def field_type(self, node: Node, path: str) -> FieldType:
        choices = [t.value for t in FieldType]
        value = self.choice(node, path, choices, "field type")
        return FieldType(value) if value in choices else FieldType.TEXT

    def choices(self, node: Node, path: str) -> tuple[str, ...]:
        return tuple(self.text(item, where, "a choice") for item, where in self.items(node, path))

    def consent(self, node: Node, path: str) -> FormConsent:
        f = self.fields(node, path, required=("text",), optional=("required", "double_opt_in"))
        return FormConsent(
            text=f.read("text", self.text, ""),
            required=f.read("required", self.flag, False),
            double_opt_in=f.read("double_opt_in", self.flag, False),
        )

    def url(self, node: Node, path: str) -> str | None:
        """An absolute http(s) URL: where a browser goes after a good submission."""
        value = self.text(node, path, "a URL")
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.netloc):
            self.report(node, path, f"bad URL '{value}': write it like https://example.com/thanks")
            return None
        return value or None

    def properties(self, node: Node, path: str) -> dict[str, str]:
        """Fixed properties the form's event carries (a campaign, a content id)."""
        found = {}
        for name, _, value in self.pairs(node, path):
            item = scalar(value)
            if isinstance(item, str | int | float) and not isinstance(item, bool):
                found[name] = str(item)
            else:
                self.report(value, join(path, name), "expected text or a number")
        return found


def load_forms(
    file: str, data: bytes, problems: list[Problem], email_templates: Collection[str]
) -> dict[str, Form]:
    """Read forms.yml from its bytes, adding its problems (an empty file is one)."""
    reader = FormsReader(file, email_templates)
    root = compose(reader, data)
    forms = {} if root is None else reader.read(root)
    problems.extend(reader.problems)
    return forms
