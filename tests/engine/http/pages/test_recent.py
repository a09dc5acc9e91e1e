"""Whole-history figures are counted at most once per interval, and counted again after it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.http.pages import recent
from engine.http.pages.recent import Recent

NOW = datetime(2026, 3, 2, 9, tzinfo=UTC)


def test_a_value_is_kept_for_its_interval_then_computed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = iter([100.0, 130.0, 159.0, 161.0, 161.0])  # stored at 100, asked at 130, 159, 161
    monkeypatch.setattr(recent.time, "monotonic", lambda: next(ticks))
    computed: list[str] = []

    def count() -> int:
        computed.append("x")
        return len(computed)

    figures = Recent[int](60, lambda: NOW)
    assert figures.get("drip", count) == (1, NOW)  # computed at 100
    assert figures.get("drip", count) == (1, NOW)  # 30 s old: kept
    assert figures.get("drip", count) == (1, NOW)  # 59 s old: kept
    assert figures.get("drip", count) == (2, NOW)  # 61 s old: counted again
    assert computed == ["x", "x"]


def test_each_key_has_its_own_value() -> None:
    figures = Recent[str](60, lambda: NOW)
    assert figures.get(("drip", "v1"), lambda: "one")[0] == "one"
    assert figures.get(("drip", "v2"), lambda: "two")[0] == "two"
    assert figures.get(("drip", "v1"), lambda: "three")[0] == "one"
