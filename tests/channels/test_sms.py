"""SMS segment counting at the exact boundaries where carriers split and bill."""

from __future__ import annotations

import pytest

from channels.sms import GSM7, UCS2, segments


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("a" * 459, 3),
        ("a" * 460, 4),
    ],
)
def test_gsm_bodies_fit_160_septets_alone_and_153_per_concatenated_part(
    body: str, expected: int
) -> None:
    assert segments(body) == (expected, GSM7)


def test_an_empty_body_still_costs_one_segment() -> None:
    assert segments("") == (1, GSM7)


def test_gsm_accents_and_greek_letters_stay_gsm() -> None:
    assert segments("Café à Zürich: ΔΩ £5 ¿qué?") == (1, GSM7)


def test_extension_characters_count_two_septets() -> None:
    assert segments("a" * 158 + "€") == (1, GSM7)
    assert segments("a" * 159 + "€") == (2, GSM7)
    assert segments("{}" * 80) == (3, GSM7)  # 160 characters, 320 septets
    assert segments("[" * 80) == (1, GSM7)


def test_an_extension_character_never_straddles_two_parts() -> None:
    # 306 septets would fit two parts exactly, but the escape pair at septets 153-154 moves on.
    assert segments("a" * 152 + "€" + "a" * 152) == (3, GSM7)
    assert segments("a" * 151 + "€" + "a" * 153) == (2, GSM7)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
    ],
)
def test_ucs2_bodies_fit_70_units_alone_and_67_per_concatenated_part(
    body: str, expected: int
) -> None:
    assert segments(body) == (expected, UCS2)


def test_one_character_outside_gsm_makes_the_whole_body_ucs2() -> None:
    assert segments("It’s here" + "a" * 61) == (1, UCS2)  # curly apostrophe, 70 characters
    assert segments("It’s here" + "a" * 62) == (2, UCS2)


def test_an_emoji_counts_two_utf16_units() -> None:
    assert segments("😀" * 35) == (1, UCS2)
    assert segments("😀" * 35 + "a") == (2, UCS2)


def test_a_surrogate_pair_never_straddles_two_parts() -> None:
    assert segments("a" * 66 + "😀" + "a" * 66) == (3, UCS2)
    assert segments("a" * 65 + "😀" + "a" * 67) == (2, UCS2)


@pytest.mark.parametrize(
    ("name", "encoding"),
    [
        ("Søren Bækgaard", GSM7),  # Danish letters are in GSM 03.38
        ("Jürgen Müller", GSM7),
        ("Zofia Wójcik", UCS2),  # ó is not; ł, ń, ż, ą neither
        ("Łukasz Dąbrowski", UCS2),
        ("Дмитрий Соколов", UCS2),
    ],
)
def test_a_name_in_its_own_script_decides_the_encoding_of_the_whole_body(
    name: str, encoding: str
) -> None:
    body = f"Hi {name}, your report is ready: " + "x" * 10
    assert segments(body)[1] == encoding
    limit = 160 if encoding == GSM7 else 70
    assert segments(body + "x" * (limit - len(body)))[0] == 1
    assert segments(body + "x" * (limit - len(body) + 1))[0] == 2
