"""Email and SMS rendering: sandboxed Jinja2, strict about names, lead data escaped in HTML.

Autoescaping is compiled into a template's code; it cannot be switched per block at render time.
Email templates therefore compile once, in one autoescaping environment, and render in one pass:
the root gives the HTML part, then the subject, preheader and text blocks render from that same
context, so top-level `set`/`import` and the layout's blocks are visible to them, and are
un-escaped by reversing exactly markupsafe's five substitutions, which gives the lead's data back
unchanged. A second, non-escaping environment would need a second full pass to see top-level
names (twice the cost) and would mix Markup from one pass into plain text of the other. SMS is
never HTML, so it has its own environment that does not escape at all.

A text block costs about what the HTML costs, so a render is under two bare Jinja2 renders. An
email without a text block gets its text derived from the HTML with html.parser, which costs ~10
times a render: shipped templates have text blocks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateNotFound, nodes
from jinja2 import TemplateSyntaxError as JinjaSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from channels.sms import segments
from engine.delivery.text import html_to_text
from engine.errors import NurtureError, Problem
from engine.models import Stage
from engine.workflow.spec import SendSettings, TemplateUse

OPT_OUT_LINE = "Reply STOP to opt out."
SAMPLE_NOW = datetime(2026, 3, 3, 14, 30, tzinfo=UTC)

_DEFAULT_SMS_MAX_SEGMENTS = SendSettings.sms_max_segments
_PLAIN_PARTS = ("subject", "preheader", "text")
_UNESCAPES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&#39;": "'", "&#34;": '"'}
# The body already tells how to opt out: "reply/text ... stop" in any case, or STOP in capitals
# ("Stop by our booth" does not count).
_OPT_OUT_WORDING = re.compile(r"(?i:\b(?:reply|text|txt|send)\b[^.!?\n]*\bstop\b)|\bSTOP\b")


class TemplateError(NurtureError):
    """Raised when a template is unknown, does not compile, uses an undefined name or escapes."""

    def __init__(
        self, template: str, message: str, *, file: str | None = None, line: int | None = None
    ) -> None:
        self.template = template
        self.message = message
        self.file = file
        self.line = line
        where = f" ({file}:{line})" if file and line else f" ({file})" if file else ""
        super().__init__(f"template {template!r}: {message}{where}")


@dataclass(frozen=True)
class RenderedEmail:
    """An email ready for a channel: one-line subject, HTML and plain-text parts, preview text."""

    subject: str
    html: str
    text: str
    preheader: str


@dataclass(frozen=True)
class RenderedSms:
    """An SMS body and its cost: carriers bill per segment, and the encoding sets the size."""

    body: str
    segments: int
    encoding: str


@dataclass(frozen=True)
class _Email:
    """A compiled email template; `standalone` when it extends no layout and is its own document."""

    template: Template
    standalone: bool


class _Undefined(StrictUndefined):
    """StrictUndefined that names the context variable lacking an attribute, not 'dict object'."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        owner = self._undefined_obj
        if self._undefined_hint is None and isinstance(owner, _Record):
            return f"{owner._path!r} has no attribute {self._undefined_name!r}"
        return str(super()._undefined_message)


class _Record(dict[str, Any]):
    """A context mapping that knows where it sits (`lead.fields`), for error messages."""

    __slots__ = ("_path",)

    def __init__(self, path: str, data: Mapping[str, Any]) -> None:
        super().__init__({key: _named(f"{path}.{key}", value) for key, value in data.items()})
        self._path = path


def _named(path: str, value: Any) -> Any:
    """`value` with every mapping inside it a _Record; data is otherwise untouched."""
    if isinstance(value, Mapping):
        return _Record(path, value)
    if isinstance(value, list):
        return [_named(f"{path}[{index}]", item) for index, item in enumerate(value)]
    return value


class Renderer:
    """Renders the templates of one folder; each compiles once, on first use, and stays cached."""

    def __init__(self, templates_dir: Path) -> None:
        self._dir = Path(templates_dir)
        self._root = os.path.normpath(os.fspath(self._dir)) + os.sep
        loader = FileSystemLoader(self._dir)
        self._email_env = _environment(loader, autoescape=True)
        self._sms_env = _environment(loader, autoescape=False)
        self._email_names = _template_names(self._dir / "email")
        self._sms_names = _template_names(self._dir / "sms")
        self._emails: dict[str, _Email] = {}
        self._sms: dict[str, Template] = {}
        self._subjects: dict[str, Template] = {}

    def email_templates(self) -> set[str]:
        """Names of the email templates (layouts and partials, `_*.j2`, are not templates)."""
        return set(self._email_names)

    def sms_templates(self) -> set[str]:
        """Names of the SMS templates."""
        return set(self._sms_names)

    def render_email(
        self, name: str, context: Mapping[str, Any], subject: str | None = None
    ) -> RenderedEmail:
        """Render subject, HTML, text and preheader in one pass; TemplateError on any failure.

        `subject` is a variant's own subject line, rendered in place of the template's.
        """
        email = self._email(name)
        try:
            try:
                email_parts = _render_email(email, dict(context))
                if subject is not None:
                    line = self._subject(subject).render(context)
                    email_parts = replace(email_parts, subject=_one_line(_unescape(line)))
            except Exception:
                self._email_env.handle_exception()  # re-raises with template file and line
        except Exception as err:  # whatever template code raises is the template's fault
            raise self._error(name, err) from err
        if not email_parts.subject:
            raise TemplateError(name, "the subject is empty", file=email.template.filename)
        return email_parts

    def render_sms(
        self, name: str, context: Mapping[str, Any], *, first_message: bool
    ) -> RenderedSms:
        """Render an SMS body; the first message to a lead also says how to opt out."""
        template = self._sms_template(name)
        try:
            body = template.render(context).strip()
        except Exception as err:  # whatever template code raises is the template's fault
            raise self._error(name, err) from err
        if first_message and not _says_how_to_opt_out(body):
            body = f"{body}\n{OPT_OUT_LINE}"
        count, encoding = segments(body)
        return RenderedSms(body=body, segments=count, encoding=encoding)

    def check(
        self,
        uses: Iterable[TemplateUse],
        *,
        sms_max_segments: int | Mapping[str, int] = _DEFAULT_SMS_MAX_SEGMENTS,
    ) -> list[Problem]:
        """Render every use against sample_context(), so a typo fails validation, not a send.

        A use is (template, channel, file, line) or (template, channel, file, line, field), where
        file and line locate the step in its workflow. `sms_max_segments` is one limit for all,
        or a limit per workflow file (files not in it get the SendSettings default).
        """
        sample = sample_context()
        found: dict[tuple[str, str, int, str | None], list[str]] = {}
        problems: list[Problem] = []
        for use in uses:
            name, channel, file, line = use[:4]
            field = use[4] if len(use) >= 5 else ""
            subject = use[5] if len(use) == 6 else None
            limit = (
                sms_max_segments
                if isinstance(sms_max_segments, int)
                else sms_max_segments.get(file, _DEFAULT_SMS_MAX_SEGMENTS)
            )
            key = (name, channel, limit, subject)
            if key not in found:
                found[key] = self._check_one(name, channel, sample, limit, subject)
            problems.extend(Problem(file, line, field, message) for message in found[key])
        return problems

    def _check_one(
        self,
        name: str,
        channel: str,
        sample: Mapping[str, Any],
        sms_max_segments: int,
        subject: str | None = None,
    ) -> list[str]:
        """What is wrong with one template on one channel, rendered against the sample lead."""
        try:
            if channel == "email":
                email = self.render_email(name, sample, subject)
                link = str(escape(sample["unsubscribe_url"]))
                return [
                    f"template {name!r}: the {part} part has no unsubscribe link"
                    for part, body, wanted in (
                        ("HTML", email.html, link),
                        ("text", email.text, sample["unsubscribe_url"]),
                    )
                    if wanted not in body
                ]
            if channel == "sms":
                sms = self.render_sms(name, sample, first_message=True)
                if sms.segments > sms_max_segments:
                    return [
                        f"template {name!r}: the first message is {sms.segments} {sms.encoding}"
                        f" segments, more than the {sms_max_segments} allowed"
                    ]
                return []
        except TemplateError as err:
            return [str(err)]
        return [f"unknown channel {channel!r} (expected email or sms)"]

    def _email(self, name: str) -> _Email:
        """The compiled email template, compiled on first use."""
        email = self._emails.get(name)
        if email is None:
            email = self._emails[name] = self._compile_email(name)
        return email

    def _compile_email(self, name: str) -> _Email:
        """Compile an email template and learn whether it extends a layout."""
        path = self._path(name, "email", self._email_names)
        try:
            template = self._email_env.get_template(path)
            source, filename, _ = self._email_env.loader.get_source(self._email_env, path)  # type: ignore[union-attr]
            standalone = self._email_env.parse(source, path, filename).find(nodes.Extends) is None
        except Exception as err:
            raise self._error(name, err) from err
        if standalone and "html" not in template.blocks:
            raise TemplateError(name, "no html block", file=template.filename)
        return _Email(template=template, standalone=standalone)

    def _subject(self, line: str) -> Template:
        """A variant's subject line compiled once, in the email sandbox."""
        template = self._subjects.get(line)
        if template is None:
            template = self._subjects[line] = self._email_env.from_string(line)
        return template

    def _sms_template(self, name: str) -> Template:
        """The compiled SMS template, compiled on first use."""
        template = self._sms.get(name)
        if template is None:
            path = self._path(name, "sms", self._sms_names)
            try:
                template = self._sms[name] = self._sms_env.get_template(path)
            except Exception as err:
                raise self._error(name, err) from err
        return template

    def _path(self, name: str, channel: str, names: frozenset[str]) -> str:
        """The loader path of a template; TemplateError when there is no such template."""
        path = f"{channel}/{name}.j2"
        if name not in names:
            raise TemplateError(name, f"no such {channel} template", file=str(self._dir / path))
        return path

    def _error(self, name: str, err: Exception) -> TemplateError:
        """A TemplateError for what went wrong, located in the template file that caused it."""
        if isinstance(err, JinjaSyntaxError):
            return TemplateError(
                name, err.message or "syntax error", file=err.filename, line=err.lineno
            )
        if isinstance(err, TemplateNotFound):
            message = f"template file {err.name!r} not found"
        elif isinstance(err, SecurityError):
            message = f"not allowed in a template: {err}"
        elif type(err).__module__.startswith("jinja2"):
            message = str(err)
        else:
            message = f"{type(err).__name__}: {err}"
        file, line = _template_frame(err.__traceback__, self._root)
        return TemplateError(name, message, file=file, line=line)


def _environment(loader: FileSystemLoader, *, autoescape: bool) -> ImmutableSandboxedEnvironment:
    """A sandbox that also refuses to mutate lists and dicts, and never re-stats template files."""
    env = ImmutableSandboxedEnvironment(
        loader=loader,
        autoescape=autoescape,
        undefined=_Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        cache_size=-1,
    )
    env.filters["ago"] = ago
    return env


def ago(when: datetime, now: datetime) -> str:
    """How long ago, the way copy says it: `{{ recent_activity[0].occurred_at | ago(now) }}`."""
    days = (now - when).days
    if days < 1:
        return "within the last day"
    if days == 1:
        return "yesterday"
    if days < 7:
        return f"{days} days ago"
    if days < 14:
        return "last week"
    if days < 60:
        return f"{days // 7} weeks ago"
    return f"{days // 30} months ago"


def _template_names(folder: Path) -> frozenset[str]:
    """Template names in a folder, listed once: renders never touch the file system."""
    if not folder.is_dir():
        return frozenset()
    return frozenset(p.stem for p in folder.glob("*.j2") if not p.name.startswith("_"))


def _named_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context with its mappings named, so an undefined attribute says 'lead', not 'dict'."""
    return {key: _named(key, value) for key, value in context.items()}


def _render_email(email: _Email, data: dict[str, Any]) -> RenderedEmail:
    """All parts of an email from one context: HTML from the root, the plain parts from blocks."""
    template = email.template
    context = template.new_context(data)
    if email.standalone:  # its own document: everything but the plain parts is the HTML
        plain = {name: context.blocks[name] for name in _PLAIN_PARTS if name in context.blocks}
        context.blocks.update((name, [_silent]) for name in plain)
        html = "".join(template.root_render_func(context))
        context.blocks.update(plain)
    else:
        html = "".join(template.root_render_func(context))
    text = _render_block(context, "text").strip()
    return RenderedEmail(
        subject=_one_line(_render_block(context, "subject")),
        html=html,
        text=_with_text_footer(text, data) if text else html_to_text(html),
        preheader=_one_line(_render_block(context, "preheader")),
    )


def _silent(context: Context) -> Iterator[str]:
    """A block that renders nothing: stands in for the plain parts inside a standalone HTML."""
    return iter(())


def _render_block(context: Context, name: str) -> str:
    """A block rendered in `context` with autoescaping undone; empty when nobody defines it."""
    blocks = context.blocks.get(name)
    if not blocks:
        return ""
    return _unescape("".join(blocks[0](context)))


def _unescape(value: str) -> str:
    """Undo markupsafe's escaping exactly: every `&` it writes starts one of its five entities."""
    if "&" not in value:
        return value
    for entity, char in _UNESCAPES.items():
        if entity != "&amp;":
            value = value.replace(entity, char)
    return value.replace("&amp;", "&")  # last, so "&amp;lt;" comes back as "&lt;", not "<"


def _with_text_footer(text: str, context: Mapping[str, Any]) -> str:
    """A text block plus the footer the law asks for; HTML and text derived from it have theirs."""
    sender = context["sender"]
    return (
        f"{text}\n\n--\nUnsubscribe with one click: {context['unsubscribe_url']}\n"
        f"{sender['company']}, {sender['postal_address']}"
    )


def _says_how_to_opt_out(body: str) -> bool:
    """True when the body already tells the reader how to stop messages."""
    return "stop" in body.lower() and _OPT_OUT_WORDING.search(body) is not None


def _one_line(value: str) -> str:
    """A header-safe line: CR, LF and other line breaks become spaces, so no header injection."""
    return " ".join(value.split())


def _template_frame(tb: TracebackType | None, root: str) -> tuple[str | None, int | None]:
    """File and line of the innermost template frame in a traceback Jinja has rewritten."""
    file: str | None = None
    line: int | None = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(root):
            file, line = filename, tb.tb_lineno
        tb = tb.tb_next
    return file, line


def sample_context(now: datetime = SAMPLE_NOW) -> dict[str, Any]:
    """A realistic lead context of the shape the engine builds, for validation and previews.

    Its mappings know their names, so an undefined attribute reports `'lead' has no attribute`.
    """
    return _named_context(
        {
            "lead": {
                "id": 1042,
                "email": "jordan.rivera@northwind.example",
                "phone": "+14155550123",
                "first_name": "Jordan",
                "last_name": "Rivera",
                "full_name": "Jordan Rivera",
                "company": "Northwind Traders",
                "title": "Head of Revenue Operations",
                "timezone": "America/Chicago",
                "stage": Stage.MQL.value,
                "fields": {"industry": "Logistics", "employees": 240, "plan_interest": "Growth"},
            },
            "score": {"total": 46, "fit": 20, "engagement": 26},
            "sequence": {"name": "lead-nurture", "description": "New leads, from sign-up to demo."},
            "milestone": {"id": "consideration"},
            "recent_activity": [
                {
                    "type": "page_viewed",
                    "occurred_at": now - timedelta(hours=20),
                    "title": "Pricing page",
                    "url": "https://acme-analytics.example/pricing",
                },
                {
                    "type": "content_downloaded",
                    "occurred_at": now - timedelta(days=3),
                    "title": "The 2026 Benchmark Report",
                    "url": "https://acme-analytics.example/resources/benchmark-2026",
                },
                {
                    "type": "email_clicked",
                    "occurred_at": now - timedelta(days=6),
                    "title": "How Fabrikam cut reporting time by 70%",
                    "url": "https://acme-analytics.example/customers/fabrikam",
                },
            ],
            "unsubscribe_url": "https://nurture.acme-analytics.example/u/c2FtcGxlLXRva2Vu?l=1042&s=lead-nurture",
            "sender": {
                "name": "Maya Chen",
                "email": "maya@acme-analytics.example",
                "company": "Acme Analytics",
                "postal_address": "548 Market Street, Suite 300, San Francisco, CA 94104, USA",
            },
            "now": now,
        }
    )
