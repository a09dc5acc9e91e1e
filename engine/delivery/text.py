"""Plain text from an HTML email, for the text part when a template has no text block."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BREAK_TAGS = frozenset(
    "p div h1 h2 h3 h4 h5 h6 table tr td th ul ol blockquote section article header footer"
    " hr center pre".split()
)
_SKIPPED_TAGS = frozenset({"head", "title", "style", "script", "template"})
_VOID_TAGS = frozenset("area base br col embed hr img input link meta source track wbr".split())
_BLANK_LINES = re.compile(r"\n{3,}")
_WHITESPACE = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    """The readable text of an HTML email: paragraphs kept, links spelled out, hidden parts gone."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._skipping = 0  # depth inside a hidden element
        self._links: list[tuple[str, int]] = []  # open <a>: href and where its text starts

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping or tag in _SKIPPED_TAGS or _hidden(attrs):
            if tag not in _VOID_TAGS:
                self._skipping += 1
        elif tag == "br":
            self._out.append("\n")
        elif tag == "li":
            self._out.append("\n- ")
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self._out)))
        elif tag in _BREAK_TAGS:
            self._out.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            self._skipping -= tag not in _VOID_TAGS
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = " ".join("".join(self._out[start:]).split())
            if href and not href.startswith("#") and href != label:
                self._out.append(f" ({href})" if label else href)
        elif tag in _BREAK_TAGS:
            self._out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._out.append(_WHITESPACE.sub(" ", data))  # only tags make line breaks

    def text(self) -> str:
        """What was collected, whitespace collapsed within lines, at most one blank line between."""
        lines = (" ".join(line.split()) for line in "".join(self._out).split("\n"))
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _hidden(attrs: list[tuple[str, str | None]]) -> bool:
    """True for elements a reader never sees, such as the preheader."""
    for name, value in attrs:
        if name == "hidden" or (name == "aria-hidden" and value == "true"):
            return True
        if name == "style" and value and "display:none" in value.replace(" ", "").lower():
            return True
    return False


def html_to_text(html: str) -> str:
    """The text part of an email that has no text block of its own."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()
