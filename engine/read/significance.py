"""The statistics of experiments, from SciPy: when a variant wins, and a holdout's lift.

A winner is judged as a group-sequential test, so that looking again as sends come in does
not raise the chance of a false winner above 1 - confidence: look j uses the first j * after
sends of every variant and may spend alpha / 2**j of the error budget (the looks together
spend at most alpha), split evenly over the leader's comparisons with the other variants
(Bonferroni). Each comparison is Pearson's chi-square test of the 2x2 table (the two-sided
two-proportion z-test), or Fisher's exact test where the counts are small. A look's data are
fixed once its sends' windows close, so judging the same look again gives the same answer: a
winner is decided once. After the last look (`MAX_LOOKS`) an experiment is inconclusive.

SciPy is imported where a test runs, not with this module: it takes 0.6 s and 80 MiB to load,
which every API, worker and CLI process would pay for a few looks a day.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_LOOKS", "Lift", "Verdict", "judge", "lift", "proportion_p"]

# Looks after the 20th are not taken: by then a look may spend under a ten-millionth of the
# error budget, which no difference can win, and judging would read ever more sends for nothing.
MAX_LOOKS = 20


@dataclass(frozen=True)
class Verdict:
    """A variant that won at a look, with what the test saw there."""

    variant: str
    look: int
    alpha: float  # the share of the error budget this look could spend, per comparison
    sends: dict[str, int]
    successes: dict[str, int]
    p_values: dict[str, float]  # the winner against each other variant

    def figures(self) -> dict[str, Any]:
        """As stored with the pick and shown in reports."""
        return {
            "look": self.look,
            "alpha": self.alpha,
            "variants": {
                v: {
                    "sends": n,
                    "successes": self.successes[v],
                    "rate": self.successes[v] / n if n else 0.0,
                    "p_value": self.p_values.get(v),
                }
                for v, n in self.sends.items()
            },
        }


def proportion_p(successes_a: int, sends_a: int, successes_b: int, sends_b: int) -> float:
    """Two-sided p-value that two success rates differ (1.0 when the table has no variation):
    Pearson's chi-square, or Fisher's exact test when an expected count is under 5, where the
    chi-square would claim more certainty than the counts hold."""
    table = [[successes_a, sends_a - successes_a], [successes_b, sends_b - successes_b]]
    successes, failures = successes_a + successes_b, table[0][1] + table[1][1]
    if min(sends_a, sends_b, successes, failures) == 0:
        return 1.0  # all successes or all failures: nothing tells the variants apart
    from scipy.stats import chi2_contingency, fisher_exact

    total = sends_a + sends_b
    if min(successes, failures) * min(sends_a, sends_b) / total < 5:
        return float(fisher_exact(table).pvalue)

    return float(chi2_contingency(table, correction=False).pvalue)


def judge(outcomes: Mapping[str, Sequence[bool]], after: int, confidence: float) -> Verdict | None:
    """The first look at which one variant beats every other, or None (no winner yet).

    `outcomes` holds each variant's sends in the order they were sent, True for a success.
    """
    if len(outcomes) < 2:
        return None
    looks = min(min(len(sends) for sends in outcomes.values()) // after, MAX_LOOKS)
    for look in range(1, looks + 1):
        n = look * after
        wins = {v: sum(sends[:n]) for v, sends in outcomes.items()}
        best = max(wins.values())
        leaders = [v for v, k in wins.items() if k == best]
        if len(leaders) > 1:
            continue
        leader = leaders[0]
        alpha = (1 - confidence) / 2**look / (len(outcomes) - 1)
        p_values = {v: proportion_p(best, n, k, n) for v, k in wins.items() if v != leader}
        if all(p < alpha for p in p_values.values()):
            return Verdict(leader, look, alpha, dict.fromkeys(wins, n), wins, p_values)
    return None


@dataclass(frozen=True)
class Lift:
    """How much more often sent leads converted than held-out ones, with its interval."""

    sent_rate: float
    held_rate: float
    lift: float | None  # sent / held - 1; None when no held-out lead converted
    low: float | None  # the interval's bounds for the lift at `confidence`
    high: float | None
    p_value: float  # Fisher's exact test, two-sided
    confidence: float


def lift(
    sent_converted: int, sent: int, held_converted: int, held: int, confidence: float = 0.95
) -> Lift | None:
    """The lift of conversion for sent over held-out leads; None when either group is empty."""
    if not sent or not held:
        return None
    from scipy.stats import fisher_exact
    from scipy.stats.contingency import relative_risk

    table = [[sent_converted, sent - sent_converted], [held_converted, held - held_converted]]
    p_value = float(fisher_exact(table).pvalue)
    sent_rate, held_rate = sent_converted / sent, held_converted / held
    if not held_converted:  # nothing to divide by: the lift has no finite value
        return Lift(sent_rate, held_rate, None, None, None, p_value, confidence)
    if not sent_converted:  # the ratio is 0, but its interval needs a case in each group
        return Lift(sent_rate, held_rate, -1.0, None, None, p_value, confidence)
    risk = relative_risk(sent_converted, sent, held_converted, held)
    interval = risk.confidence_interval(confidence_level=confidence)
    high = float(interval.high)
    return Lift(
        sent_rate,
        held_rate,
        float(risk.relative_risk) - 1,
        float(interval.low) - 1,
        None if math.isinf(high) else high - 1,
        p_value,
        confidence,
    )
