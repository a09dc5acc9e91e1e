"""The condition language: what conditions mean, and what a marketer sees when one is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ConditionError
from engine.workflow.conditions import VERBS, parse, threshold


@dataclass
class FakeFacts:
    """Facts from plain values; records every event question it is asked."""

    score: float = 0
    fit: float = 0
    engagement: float = 0
    stage: str = "lead"
    attributes: dict[str, Any] = field(default_factory=dict)
    events: set[str] = field(default_factory=set)
    asked: list[tuple[tuple[str, ...], timedelta | None]] = field(default_factory=list)

    def attribute(self, name: str) -> Any:
        return self.attributes.get(name)

    def has_event(self, types: tuple[str, ...], within: timedelta | None) -> bool:
        self.asked.append((types, within))
        return bool(self.events.intersection(types))


def holds(text: str, **facts: Any) -> bool:
    return parse(text).evaluate(FakeFacts(**facts))


def test_and_binds_tighter_than_or() -> None:
    assert holds("score > 5 or fit > 5 and engagement > 5", score=10)
    assert not holds("(score > 5 or fit > 5) and engagement > 5", score=10)


def test_not_binds_tighter_than_and() -> None:
    assert not holds("not score > 5 and fit > 5")
    assert holds("not (score > 5 and fit > 5)")


def test_keywords_may_be_written_in_capitals() -> None:
    assert holds("NOT Score > 5 AND stage == 'lead'", score=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("score == 20", True),
        ("score == 20.0", True),
        ("score != 20", False),
        ("score < 21", True),
        ("score <= 20", True),
        ("score > 20", False),
        ("score >= 20", True),
        ("score >= -5", True),
        ("fit >= 1.5", True),
        ("engagement < 10", True),
        ("stage == 'lead'", True),
        ('stage == "lead"', True),
        ("stage != 'mql'", True),
        ("stage in ['mql', 'lead']", True),
        ("stage not in ['mql', 'lead']", False),
        ("stage in []", False),
        ("score in [10, 20]", True),
    ],
)
def test_every_operator_compares_the_named_fact(text: str, expected: bool) -> None:
    assert holds(text, score=20, fit=2, engagement=3, stage="lead") is expected


def test_other_names_read_lead_attributes_with_dots_kept() -> None:
    facts = FakeFacts(attributes={"company": "Acme", "attributes.industry": "saas", "seats": 40})
    assert parse("company == 'acme' and attributes.industry in ['SaaS']").evaluate(facts)
    assert parse("seats >= 25 and seats < 50").evaluate(facts)


def test_string_equality_ignores_case_and_surrounding_spaces() -> None:
    facts = FakeFacts(attributes={"title": " VP Marketing "})
    assert parse("title == 'vp marketing'").evaluate(facts)
    assert not parse("title != 'Vp Marketing'").evaluate(facts)
    assert parse("title in ['cto', 'vp MARKETING']").evaluate(facts)
    assert not parse("title not in ['vp marketing']").evaluate(facts)


def test_quotes_inside_strings_are_escaped_with_a_backslash() -> None:
    facts = FakeFacts(attributes={"company": "O'Reilly", "motto": 'say "hi"'})
    text = r"""company == 'O\'Reilly' and motto == "say \"hi\"" """
    assert parse(text).evaluate(facts)


@pytest.mark.parametrize(
    "text",
    [
        "company == 'acme'",
        "company != 'acme'",
        "company > 'a'",
        "company in ['acme']",
        "company not in ['acme']",
        "seats >= 0",
    ],
)
def test_a_missing_value_makes_every_comparison_false(text: str) -> None:
    assert not holds(text)


def test_null_asks_whether_a_value_is_missing() -> None:
    assert holds("company == null")
    assert not holds("company != null")
    assert holds("company != null", attributes={"company": "Acme"})


@pytest.mark.parametrize(
    "text",
    ["seats > 'ten'", "company < 5", "seats == '40'", "vip == 1", "seats in ['40']"],
)
def test_comparing_across_types_is_false_not_an_error(text: str) -> None:
    assert not holds(text, attributes={"seats": 40, "company": "Acme", "vip": True})


def test_booleans_compare_with_true_and_false() -> None:
    assert holds("vip == true and trial == false", attributes={"vip": True, "trial": False})


def test_an_event_test_asks_for_that_type_within_its_window() -> None:
    facts = FakeFacts(events={"demo_requested"})
    assert parse("event demo_requested within 30d").evaluate(facts)
    assert not parse("event webinar_attended").evaluate(facts)
    assert facts.asked == [(("demo_requested",), timedelta(days=30)), (("webinar_attended",), None)]


@pytest.mark.parametrize(("verb", "event_type"), sorted(VERBS.items()))
def test_each_verb_is_shorthand_for_its_event_type(verb: str, event_type: str) -> None:
    facts = FakeFacts(events={event_type})
    assert parse(f"{verb} within 12h").evaluate(facts)
    assert parse(verb).evaluate(facts)
    assert facts.asked == [((event_type,), timedelta(hours=12)), ((event_type,), None)]


def test_durations_take_every_unit() -> None:
    facts = FakeFacts()
    for text in ("clicked within 30m", "clicked within 2d", "clicked within 1w"):
        parse(text).evaluate(facts)
    assert [within for _, within in facts.asked] == [
        timedelta(minutes=30),
        timedelta(days=2),
        timedelta(weeks=1),
    ]


def test_event_types_lists_every_event_a_condition_looks_at() -> None:
    condition = parse("score > 5 and (clicked within 2d or not event demo_requested) or opened")
    assert condition.event_types() == {"email_clicked", "demo_requested", "email_opened"}
    assert parse("score > 5").event_types() == frozenset()


def test_or_stops_at_the_first_true_operand() -> None:
    facts = FakeFacts(score=50)
    assert parse("score > 10 or clicked").evaluate(facts)
    assert facts.asked == []


def test_comparisons_decide_before_event_tests_whatever_the_written_order() -> None:
    condition = parse("event demo_requested within 30d and fit >= 10 or clicked and score > 50")
    poor_fit = FakeFacts(fit=0, score=0, events={"demo_requested", "email_clicked"})
    assert not condition.evaluate(poor_fit)
    assert poor_fit.asked == []
    good_fit = FakeFacts(fit=12, events={"demo_requested"})
    assert condition.evaluate(good_fit)
    assert good_fit.asked == [(("demo_requested",), timedelta(days=30))]


def test_the_text_is_kept_as_written() -> None:
    assert parse("score   >= 20").text == "score   >= 20"


def test_a_number_threshold_means_a_total_score_of_at_least_that() -> None:
    condition = threshold(20)
    assert condition.text == "score >= 20"
    assert condition.evaluate(FakeFacts(score=20))
    assert not condition.evaluate(FakeFacts(score=19.5))
    assert threshold(7.5).text == "score >= 7.5"


def test_a_text_threshold_is_a_condition() -> None:
    condition = threshold("score >= 60 and fit >= 15")
    assert condition.evaluate(FakeFacts(score=60, fit=15))
    assert not condition.evaluate(FakeFacts(score=60, fit=14))


@pytest.mark.parametrize("value", [True, float("inf"), float("nan")])
def test_a_threshold_that_is_no_number_is_refused(value: float) -> None:
    with pytest.raises(ConditionError) as caught:
        threshold(value)
    assert (caught.value.message, caught.value.column) == ("expected a number or a condition", 1)


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("score >=", "expected a value after '>='", 9),
        ("score => 20", "unknown operator '=>' (did you mean '>='?)", 7),
        ("score = 20", "unknown operator '=' (did you mean '=='?)", 7),
        ("score >= 20 and", "unexpected 'and' at end", 13),
        ("(score >= 20 or fit > 5", "unclosed '('", 1),
        ("score >= 20)", "unexpected ')' without '('", 12),
        (
            "clicked within 2x",
            "bad duration '2x': use a positive whole number and a unit, e.g. 30m, 12h, 2d, 1w",
            16,
        ),
        ("clicked within", "expected a duration after 'within', e.g. 2d", 15),
        ("20", "a bare number is not a condition (did you mean 'score >= 20'?)", 1),
        ("", "empty condition", 1),
        ("stage == sql", "text must be quoted: 'sql'", 10),
        ("stage == 'sql", "unclosed string", 10),
        ("score >= 20 fit >= 5", "expected 'and' or 'or' before 'fit'", 13),
        ("score >= 20 && fit >= 5", "unexpected '&&' (use 'and')", 13),
        ("stage in 'sql'", "expected a list after 'in', e.g. ['a', 'b']", 10),
        ("stage in ['sql', 'mql'", "unclosed '['", 10),
        ("stage in ['sql' 'mql']", "expected ',' or ']', got 'mql'", 17),
        ("stage not 'sql'", "expected 'in' after 'not'", 11),
        ("score", "expected an operator after 'score' like >= or ==", 6),
        ("event", "expected an event type after 'event'", 6),
        ("not", "unexpected 'not' at end", 1),
        ("score >= 20 or or fit > 1", "expected a condition, got 'or'", 16),
        ("score @ 20", "unexpected character '@'", 7),
    ],
)
def test_a_syntax_error_says_what_was_expected_and_where(
    text: str, message: str, column: int
) -> None:
    with pytest.raises(ConditionError) as caught:
        parse(text)
    assert (caught.value.message, caught.value.column) == (message, column)
    assert str(caught.value) == f"{message} (at column {column})"


def test_deep_nesting_is_refused_rather_than_overflowing_the_stack() -> None:
    with pytest.raises(ConditionError, match="nested too deeply"):
        parse("(" * 500 + "score > 1" + ")" * 500)


def test_long_chains_of_and_evaluate_without_deep_recursion() -> None:
    assert holds(" and ".join(["score > 1"] * 5000), score=2)


_PIECES = st.sampled_from(
    [
        "score", "fit", "stage", "company", "a.b", "and", "or", "not", "in", "within",
        "event", "clicked", "visited", "(", ")", "[", "]", ",", "==", "!=", "<", "<=", ">",
        ">=", "=>", "=", "20", "-1.5", "2d", "2x", "0d", "'sql'", '"x\\"y"', "'open",
        "true", "null", "&&", "&|", "|", "@", "9" * 30, "99999999999999d",
    ]
)  # fmt: skip


@given(st.one_of(st.text(max_size=60), st.lists(_PIECES, max_size=12).map(" ".join)))
def test_any_text_either_parses_or_raises_condition_error(text: str) -> None:
    try:
        condition = parse(text)
    except ConditionError as err:
        assert 1 <= err.column <= len(text) + 1
    else:
        assert isinstance(condition.evaluate(FakeFacts()), bool)
