"""Unsubscribe tokens name lead and list and refuse forgeries."""

from __future__ import annotations

import pytest

from engine.delivery.unsubscribe import InvalidTokenError, make_token, read_token


def test_a_token_round_trips_lead_and_list() -> None:
    assert read_token("s3cret", make_token("s3cret", 42, "lead-nurture")) == (42, "lead-nurture")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("42.", "43.", 1),  # another lead
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # forged signature
        lambda t: t.split(".")[0],  # truncated
        lambda t: "x" + t,  # not a number
    ],
)
def test_an_altered_or_forged_token_is_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    token = make_token("s3cret", 42, "lead-nurture")
    with pytest.raises(InvalidTokenError):
        read_token("s3cret", mutate(token))


def test_a_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(InvalidTokenError):
        read_token("s3cret", make_token("other", 42, "lead-nurture"))
