"""The condition language of workflow YAML, parsed by hand so that a condition can never run code.

Grammar (precedence: not > and > or)::

    condition  := all ("or" all)*
    all        := unary ("and" unary)*
    unary      := "not" unary | "(" condition ")" | event | comparison
    event      := ("event" TYPE | VERB) ["within" DURATION]
    comparison := NAME ("==" | "!=" | "<" | "<=" | ">" | ">=") VALUE | NAME ["not"] "in" LIST
    VALUE      := NUMBER | 'text' | "text" | true | false | null
    LIST       := "[" [VALUE ("," VALUE)*] "]"
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from engine.errors import ConditionError
from engine.workflow.durations import parse_duration
from engine.workflow.spec import Condition, Facts

VERBS = {
    "clicked": "email_clicked",
    "opened": "email_opened",
    "replied": "sms_replied",
    "downloaded": "content_downloaded",
    "submitted": "form_submitted",
    "subscribed": "newsletter_subscribed",
    "unsubscribed": "unsubscribed",
    "bounced": "bounced",
    "visited": "page_viewed",
}

_FACTS = frozenset({"score", "fit", "engagement", "stage"})
_KEYWORDS = frozenset({"and", "or", "not", "in", "within", "event", "true", "false", "null"})
_LITERALS = {"true": True, "false": False, "null": None}
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_OPERATORS = frozenset({"==", "!=", *_ORDER})
_LOOKALIKES = {"=": "==", "===": "==", "=>": ">=", "=<": "<=", "<>": "!=", "!==": "!=", "!": "not"}
_SYMBOLS = {"&": "and", "&&": "and", "|": "or", "||": "or"}
_MAX_DEPTH = 64

_WORD = re.compile(r"-?[A-Za-z0-9_.]+")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)
_RUNS = {"op": re.compile(r"[=!<>]+"), "symbol": re.compile(r"&&?|\|\|?")}


# ---- syntax tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _All:
    operands: tuple[_Node, ...]

    def evaluate(self, facts: Facts) -> bool:
        return all(operand.evaluate(facts) for operand in self.operands)

    def event_types(self) -> frozenset[str]:
        return frozenset().union(*(operand.event_types() for operand in self.operands))


@dataclass(frozen=True)
class _Any:
    operands: tuple[_Node, ...]

    def evaluate(self, facts: Facts) -> bool:
        return any(operand.evaluate(facts) for operand in self.operands)

    def event_types(self) -> frozenset[str]:
        return frozenset().union(*(operand.event_types() for operand in self.operands))


@dataclass(frozen=True)
class _Not:
    operand: _Node

    def evaluate(self, facts: Facts) -> bool:
        return not self.operand.evaluate(facts)

    def event_types(self) -> frozenset[str]:
        return self.operand.event_types()


@dataclass(frozen=True)
class _Compare:
    name: str
    op: str
    value: Any

    def evaluate(self, facts: Facts) -> bool:
        actual = getattr(facts, self.name) if self.name in _FACTS else facts.attribute(self.name)
        return _compare(actual, self.op, self.value)

    def event_types(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class _Event:
    type: str
    within: timedelta | None

    def evaluate(self, facts: Facts) -> bool:
        return facts.has_event((self.type,), self.within)

    def event_types(self) -> frozenset[str]:
        return frozenset({self.type})


_Node = _All | _Any | _Not | _Compare | _Event


def _cheap_first(operands: list[_Node]) -> tuple[_Node, ...]:
    """Operands that need no event query first, so and/or often decide without one."""
    return tuple(sorted(operands, key=lambda operand: bool(operand.event_types())))


@dataclass(unsafe_hash=True)
class ParsedCondition:
    """A condition as written plus its tree; not frozen only because Condition.text is settable."""

    text: str
    root: _Node

    def evaluate(self, facts: Facts) -> bool:
        """True when the condition holds for these facts."""
        return self.root.evaluate(facts)

    def event_types(self) -> frozenset[str]:
        """Event types the condition looks at, to know when it may change."""
        return self.root.event_types()

    def __str__(self) -> str:
        return self.text


# ---- evaluation -------------------------------------------------------------------------------


def _compare(actual: Any, op: str, expected: Any) -> bool:
    """Compare without ever raising: a missing value or a type mismatch is simply False."""
    if expected is None and op in ("==", "!="):
        return (actual is None) == (op == "==")
    if actual is None:
        return False
    if op in ("in", "not in"):
        return any(_equal(actual, item) for item in expected) == (op == "in")
    if op in ("==", "!="):
        return _equal(actual, expected) == (op == "==")
    if _is_number(actual) and _is_number(expected):
        return _ORDER[op](actual, expected)
    if isinstance(actual, str) and isinstance(expected, str):
        return _ORDER[op](actual, expected)
    return False


def _equal(actual: Any, expected: Any) -> bool:
    """Equality as marketers mean it: text ignores case and spaces around it, 1 is not true."""
    if isinstance(actual, str) and isinstance(expected, str):
        return actual.strip().casefold() == expected.strip().casefold()
    if _is_number(actual) and _is_number(expected):
        return bool(actual == expected)
    return type(actual) is type(expected) and bool(actual == expected)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # name, number, string, word (like 2d), op, punct, end
    text: str
    column: int
    value: Any = None

    def is_word(self, *words: str) -> bool:
        """True for the keyword or verb `words`, written in any case."""
        return self.kind == "name" and self.text.lower() in words

    def shown(self) -> str:
        """The token quoted for a message; a string token already shows its quotes."""
        return self.text if self.kind == "string" else f"'{self.text}'"


def _tokenize(text: str) -> list[_Token]:
    """Split the text into tokens; anything that is no token at all is reported here."""
    tokens: list[_Token] = []
    at = 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        token = _token_at(text, at)
        tokens.append(token)
        at += len(token.text)
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


def _token_at(text: str, at: int) -> _Token:
    char, column = text[at], at + 1
    if char in "'\"":
        return _string_at(text, at)
    if char in "()[],":
        return _Token("punct", char, column)
    if run := _RUNS["op"].match(text, at):
        return _operator(run.group(), column)
    if run := _RUNS["symbol"].match(text, at):
        raise ConditionError(f"unexpected '{run.group()}' (use '{_SYMBOLS[run.group()]}')", column)
    if run := _WORD.match(text, at):
        return _word(run.group(), column)
    raise ConditionError(f"unexpected character {char!r}", column)


def _string_at(text: str, at: int) -> _Token:
    quote, end, chars = text[at], at + 1, []
    while end < len(text) and text[end] != quote:
        if text[end] == "\\" and end + 1 < len(text):
            end += 1
        chars.append(text[end])
        end += 1
    if end >= len(text):
        raise ConditionError("unclosed string", at + 1)
    return _Token("string", text[at : end + 1], at + 1, "".join(chars))


def _operator(text: str, column: int) -> _Token:
    if text in _OPERATORS:
        return _Token("op", text, column)
    hint = f" (did you mean '{_LOOKALIKES[text]}'?)" if text in _LOOKALIKES else ""
    raise ConditionError(f"unknown operator '{text}'{hint}", column)


def _word(text: str, column: int) -> _Token:
    if _NUMBER.fullmatch(text):
        return _Token("number", text, column, _number(text, column))
    if _NAME.fullmatch(text):
        return _Token("name", text, column)
    return _Token("word", text, column)


def _number(text: str, column: int) -> int | float:
    if "." in text:
        return float(text)
    try:
        return int(text)
    except ValueError as err:  # more digits than Python converts
        raise ConditionError(f"number '{text[:12]}...' is too long", column) from err


# ---- parser -----------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the token list, one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.at = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at = min(self.at + 1, len(self.tokens) - 1)
        return token

    def condition(self) -> _Node:
        if self.peek().kind == "end":
            raise ConditionError("empty condition", 1)
        node = self.any()
        token = self.peek()
        if token.text == ")":
            raise ConditionError("unexpected ')' without '('", token.column)
        self.expect_joiner()
        return node

    def expect_joiner(self) -> None:
        """After a whole condition only 'and', 'or', ')' or the end may follow."""
        token = self.peek()
        if token.kind != "end" and token.text != ")" and not token.is_word("and", "or"):
            raise ConditionError(f"expected 'and' or 'or' before {token.shown()}", token.column)

    def any(self) -> _Node:
        operands = [self.all()]
        while self.peek().is_word("or"):
            self.keyword()
            operands.append(self.all())
        return operands[0] if len(operands) == 1 else _Any(_cheap_first(operands))

    def all(self) -> _Node:
        operands = [self.unary()]
        while self.peek().is_word("and"):
            self.keyword()
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else _All(_cheap_first(operands))

    def keyword(self) -> None:
        token = self.take()
        if self.peek().kind == "end":
            raise ConditionError(f"unexpected '{token.text}' at end", token.column)

    def unary(self) -> _Node:
        token = self.peek()
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ConditionError("condition is nested too deeply", token.column)
        if token.is_word("not"):
            self.keyword()
            node: _Node = _Not(self.unary())
        elif token.text == "(":
            node = self.group()
        elif token.is_word("event") or token.is_word(*VERBS):
            node = self.event()
        elif token.kind == "name" and token.text.lower() not in _KEYWORDS:
            node = self.comparison()
        elif token.kind == "number":
            hint = f"did you mean 'score >= {token.text}'?"
            raise ConditionError(f"a bare number is not a condition ({hint})", token.column)
        else:
            raise ConditionError(f"expected a condition, got {token.shown()}", token.column)
        self.depth -= 1
        return node

    def group(self) -> _Node:
        opening = self.take()
        node = self.any()
        if self.peek().kind == "end":
            raise ConditionError("unclosed '('", opening.column)
        self.expect_joiner()
        self.take()
        return node

    def event(self) -> _Event:
        verb = self.take()
        if verb.is_word(*VERBS):
            return _Event(VERBS[verb.text.lower()], self.within())
        token = self.take()
        if token.kind != "name" or token.text.lower() in _KEYWORDS:
            raise ConditionError("expected an event type after 'event'", token.column)
        return _Event(token.text, self.within())

    def within(self) -> timedelta | None:
        if not self.peek().is_word("within"):
            return None
        self.take()
        token = self.take()
        if token.kind not in ("word", "number", "name"):
            raise ConditionError("expected a duration after 'within', e.g. 2d", token.column)
        try:
            return parse_duration(token.text)
        except ValueError as err:
            raise ConditionError(str(err), token.column) from err
        except OverflowError as err:
            raise ConditionError(f"duration '{token.text}' is too long", token.column) from err

    def comparison(self) -> _Compare:
        token = self.take()
        name = token.text.lower() if token.text.lower() in _FACTS else token.text
        op = self.take()
        if op.is_word("not"):
            after = self.take()
            if not after.is_word("in"):
                raise ConditionError("expected 'in' after 'not'", after.column)
            return _Compare(name, "not in", self.list("not in"))
        if op.is_word("in"):
            return _Compare(name, "in", self.list("in"))
        if op.kind != "op":
            got = "" if op.kind == "end" else f", got {op.shown()}"
            message = f"expected an operator after '{token.text}' like >= or =={got}"
            raise ConditionError(message, op.column)
        return _Compare(name, op.text, self.value(f"after '{op.text}'"))

    def list(self, op: str) -> tuple[Any, ...]:
        opening = self.take()
        if opening.text != "[":
            raise ConditionError(f"expected a list after '{op}', e.g. ['a', 'b']", opening.column)
        items: list[Any] = []
        while self.peek().text != "]":
            if self.peek().kind == "end":
                raise ConditionError("unclosed '['", opening.column)
            if items:
                self.comma()
            items.append(self.value("in the list"))
        self.take()
        return tuple(items)

    def comma(self) -> None:
        token = self.take()
        if token.text != ",":
            raise ConditionError(f"expected ',' or ']', got {token.shown()}", token.column)

    def value(self, where: str) -> Any:
        token = self.take()
        if token.kind in ("number", "string"):
            return token.value
        if token.is_word(*_LITERALS):
            return _LITERALS[token.text.lower()]
        if token.kind in ("name", "word") and token.text.lower() not in _KEYWORDS:
            raise ConditionError(f"text must be quoted: '{token.text}'", token.column)
        got = "" if token.kind == "end" else f", got {token.shown()}"
        raise ConditionError(f"expected a value {where}{got}", token.column)


# ---- public -----------------------------------------------------------------------------------


def parse(text: str) -> Condition:
    """Parse a condition string once at load time, so a typo fails validation, not a send."""
    return ParsedCondition(text, _Parser(text).condition())


def threshold(value: int | float | str) -> Condition:
    """A scoring threshold: a bare number N means `score >= N`; text is a condition."""
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConditionError("expected a number or a condition", 1)
    return ParsedCondition(f"score >= {value}", _Compare("score", ">=", value))
