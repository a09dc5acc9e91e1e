"""Click tracking: an email's links rewritten to signed redirects on nurture, and their clicks.

A sequence with `track_clicks: true` sends every web link of its emails through
`{public_url}/c/{token}`; the token signs the delivery, the link's number and the URL, so the
redirect needs no table and goes nowhere but where the email pointed. Decisions:

- HTML links (`<a href>`, `<area href>`) are found by the standard library's HTML parser,
  which reads attributes as browsers do (quotes, entities like `&amp;`, upper case); only the
  value of each tracked `href` is replaced and the rest of the document stays byte for byte
  (layouts, Outlook conditional comments, entities). A tag the parser reads differently from
  how the value is spelled keeps its link untracked rather than risk a broken email.
- The text part's bare http(s) URLs are tracked; punctuation that ends a sentence around a
  URL, and a closing bracket it did not open, are not part of it.
- Left alone: links to nurture itself (the unsubscribe link; the List-Unsubscribe header is
  never touched), `mailto:`, `tel:`, anchors and relative links, and URLs holding a merge-tag
  placeholder (`{{...}}`, `*|...|*`, `%%...%%`, `<%...%>`) that a provider fills in after us.
- A link to an address from the lead's own data (their recent activity's pages, their fields:
  "pick up where you left off") is tracked only when it leads to one of NURTURE_SITE_ORIGINS:
  whoever can record a lead's events could otherwise get a signed redirect to anywhere.
- A link's number is its URL's place among the message's distinct tracked URLs, HTML first,
  then text: the same URL as a button, an image and in the text part is one link, so clicking
  each counts as one click (the idempotency key of `record_click`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy.orm import Session

from engine.delivery.rendering import RenderedEmail
from engine.funnel.leads import Identity, lead_by_id
from engine.funnel.service import NewEvent, Outcome, record
from engine.models import Delivery
from engine.origins import origin
from engine.settings import Settings
from engine.signing import LEAD_PARAM, InvalidTokenError, b64, sign, unb64, unsign
from engine.workflow.runtime import Runtime

CLICK_PATH = "/c/"
_PURPOSE = "click"
_REDIRECT = re.compile(
    re.escape(CLICK_PATH) + r"(?P<delivery>[A-Za-z0-9_-]+)\.(?P<index>\d{1,6})\.[A-Za-z0-9_-]+\."
)
_WEB = re.compile(r"https?://", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\""
_BRACKETS = {")": "(", "]": "[", "}": "{"}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{%|%\}|\*\||\|\*|%%|<%|%>|\[%|%\]")
_OUTER = "".join(map(chr, range(0x21)))  # what a browser strips around an href: controls, space
_NEWLINE = re.compile(r"\n")
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
_UNSAFE = re.compile(r"[^\x21-\x7e]+")  # not printable ASCII: spaces, controls, the rest
# One attribute of a start tag as the HTML tokenizer reads it: name, then maybe = and a value.
_ATTRIBUTE = re.compile(
    r"[\s/]*(?P<name>[^\s/>][^\s/>=]*)(?:\s*=\s*(?P<value>\"[^\"]*\"|'[^']*'|[^\s>]*))?"
)
_TAG_NAME = re.compile(r"<[^\s/>]+")

Tracker = Callable[[str], str | None]  # a link's redirect, None for a link left alone


@dataclass(frozen=True)
class Click:
    """What a click token names: the delivery, the link's number in it, and where it goes."""

    delivery_id: str
    index: int
    url: str


def click_url(settings: Settings, delivery_id: str, index: int, url: str) -> str:
    """The signed redirect on nurture that stands in for `url`, link `index` of a delivery."""
    token = sign(settings.secret_key, [delivery_id, str(index), b64(url.encode())], _PURPOSE)
    return f"{settings.public_url}{CLICK_PATH}{token}"


def read_click(secret: str, token: str) -> Click:
    """The click a token we signed names; InvalidTokenError for a forged or altered one."""
    delivery_id, index, url = unsign(secret, token, 3, _PURPOSE)
    try:
        return Click(delivery_id, int(index), unb64(url).decode())
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidTokenError(f"malformed click token: {error}") from error


def track_links(
    settings: Settings, delivery_id: str, email: RenderedEmail, context: Mapping[str, Any]
) -> RenderedEmail:
    """The email with its web links in HTML and text rewritten to signed redirects; `context`
    is what it was rendered from, whose lead data says which links someone else could choose."""
    chosen = _data_urls(context)
    sites = {found for found in map(origin, settings.site_origins) if found is not None}
    numbers: dict[str, int] = {}

    def tracked(url: str) -> str | None:
        """The redirect for a link to track, None for one to leave alone."""
        if not _trackable(url, settings.public_url):
            return None
        if origin(url) not in sites and any(
            url.startswith(data) or data.startswith(url) for data in chosen
        ):
            return None
        index = numbers.setdefault(url, len(numbers))
        return click_url(settings, delivery_id, index, url)

    page = _rewrite_html(email.html, tracked)
    text = _rewrite_text(email.text, tracked)
    return replace(email, html=page, text=text)


def _data_urls(context: Mapping[str, Any]) -> set[str]:
    """The web addresses in the lead's own data (fields, recent activity): whoever writes a
    lead's events may choose them, so a link to one gets no signed redirect unless it leads
    to one of our sites, and nurture's domain never vouches for an address chosen elsewhere."""
    found: set[str] = set()
    pending: list[Any] = [context.get("lead"), context.get("recent_activity")]
    while pending:
        value = pending.pop()
        if isinstance(value, str):  # a whole value, or any address inside a text
            if _WEB.match(value.strip(_OUTER)):
                found.add(_clean(value))
            found.update(_clean(match) for match in _TEXT_URL.findall(value))
        elif isinstance(value, Mapping):
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
    return found


def record_click(session: Session, rt: Runtime, click: Click) -> Outcome | None:
    """Record a click as the `email_clicked` of the delivery's lead, with the properties a
    provider's click webhook gives it (`feedback._properties`) plus the step and the link;
    None when the delivery or its lead is gone or erased: nothing is recorded then.

    Idempotent per link of a delivery: one person clicking a link again, or a mail scanner
    fetching it before them, counts once; each other link of the email counts on its own.
    """
    delivery = session.get(Delivery, click.delivery_id)
    lead = lead_by_id(session, delivery.lead_id) if delivery is not None else None
    if delivery is None or lead is None or lead.erased_at is not None:
        return None
    column, value = Identity.of(lead).key()
    properties: dict[str, Any] = {
        "provider": "nurture",
        "delivery_id": delivery.id,
        "sequence": delivery.sequence,
        "template": delivery.template,
        "milestone": delivery.milestone,
        "step": delivery.step,
        "url": click.url,
        "link": click.index,
    }
    event = NewEvent(
        {column: value},
        "email_clicked",
        properties,
        rt.clock.now(),
        click_key(delivery.id, click.index),
        "click",
    )
    return record(session, rt, [event])[0]


def click_key(delivery_id: str, index: int) -> str:
    """The idempotency key of a click on link `index` of a delivery: one click per link."""
    return f"click:{delivery_id}:{index}"


def tracked_click_key(url: str) -> str | None:
    """The click key of a provider's click on one of our redirects, else None: with the
    provider's click tracking left on, its click and ours are then one event, not two. The
    token is read, not verified: it only names the key (provider webhooks are signed)."""
    found = _REDIRECT.search(url)
    return click_key(found["delivery"], int(found["index"])) if found else None


def with_lead_token(url: str, site_origins: Iterable[str], token: str) -> str:
    """`url` with the lead's token in `LEAD_PARAM` when it leads to one of the website's
    origins (which run the tracking snippet); any other URL unchanged, so no other host ever
    sees the token."""
    found = origin(url)
    if found is None or found not in {origin(site) for site in site_origins}:
        return url
    base, hash_, fragment = url.partition("#")
    joiner = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
    return f"{base}{joiner}{LEAD_PARAM}={token}{hash_}{fragment}"


def _clean(url: str) -> str:
    """The URL a browser requests for an href, in ASCII: outer blanks and controls, tabs and
    line breaks gone, a non-ASCII host in IDNA form, other characters percent-encoded (UTF-8)."""
    url = _TAB_OR_NEWLINE.sub("", url.strip(_OUTER))
    netloc = urlsplit(url).netloc
    if not netloc.isascii():
        userinfo, at, host_port = netloc.rpartition("@")
        host, colon, port = host_port.partition(":")
        try:
            host = host.encode("idna").decode()
        except UnicodeError:
            pass  # percent-encoded below like the rest: an address no browser would reach
        url = url.replace(netloc, f"{userinfo}{at}{host}{colon}{port}", 1)
    return _UNSAFE.sub(lambda found: quote(found.group(), safe=""), url)


def _trackable(url: str, public_url: str) -> bool:
    """A web URL elsewhere than nurture, with no placeholder a provider still fills in."""
    if not _WEB.match(url) or _PLACEHOLDER.search(url):
        return False
    return not (url == public_url or url.startswith(f"{public_url}/"))


class _Hrefs(HTMLParser):
    """Where the href values of a document's links are, each with the URL it holds."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        # the offset of each line: the parser reports (line, column)
        self.starts = [0, *(found.end() for found in _NEWLINE.finditer(document))]
        self.found: list[tuple[int, int, str]] = []  # value start, value end, URL

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area"):
            return
        raw = self.get_starttag_text() or ""
        line, column = self.getpos()
        at = self.starts[line - 1] + column
        span = _href_span(raw, attrs)
        if span is not None:
            start, end, value = span
            self.found.append((at + start, at + end, value))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def _href_span(raw: str, attrs: list[tuple[str, str | None]]) -> tuple[int, int, str] | None:
    """Where the first href's value is in a raw start tag (the one browsers follow), and its
    URL; None when it has none, or when it is not spelled the way the parser read it."""
    position = next((n for n, (name, _) in enumerate(attrs) if name == "href"), None)
    opening = _TAG_NAME.match(raw)
    if position is None or opening is None:
        return None
    found = list(_ATTRIBUTE.finditer(raw, opening.end()))
    if len(found) <= position or found[position].group("name").lower() != "href":
        return None
    match, wanted = found[position], attrs[position][1]
    value = match.group("value")
    if value is None or wanted is None:
        return None
    quoted = value[:1] in ("'", '"')
    if html.unescape(value[1:-1] if quoted else value) != wanted:
        return None
    return match.start("value"), match.end("value"), wanted


def _rewrite_html(document: str, tracked: Tracker) -> str:
    """`document` with each tracked href value replaced by its redirect, double-quoted."""
    parser = _Hrefs(document)
    parser.feed(document)
    parser.close()
    pieces, done = [], 0
    for start, end, value in parser.found:
        redirect = tracked(_clean(value))
        if redirect is None:
            continue
        pieces += [document[done:start], f'"{html.escape(redirect)}"']
        done = end
    return "".join(pieces) + document[done:]


def _rewrite_text(text: str, tracked: Tracker) -> str:
    """`text` with each tracked bare URL replaced by its redirect."""

    def swap(found: re.Match[str]) -> str:
        url, rest = _url_end(found.group())
        redirect = tracked(_clean(url))
        return (redirect or url) + rest

    return _TEXT_URL.sub(swap, text)


def _url_end(candidate: str) -> tuple[str, str]:
    """A URL run split where the URL ends: punctuation after it, or a bracket it never opened,
    belongs to the sentence (`(see https://a.test/x).` ends at x)."""
    end = len(candidate)
    while end:
        last = candidate[end - 1]
        opened = _BRACKETS.get(last)
        if last in _TRAILING or (
            opened is not None and candidate.count(opened, 0, end) < candidate.count(last, 0, end)
        ):
            end -= 1
            continue
        break
    return candidate[:end], candidate[end:]
