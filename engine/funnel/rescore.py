"""What the scoring rules on disk would do to the past (the plan), and doing it (`rescore`).

The plan replays every lead's recorded events under scoring.yml as it stands and compares
with today's ledger: whose stage would change, the score distribution before and after, and
the largest movers with the rules that moved them. `rescore` then does exactly that, in
batches of one transaction each; it can be run again to finish an interrupted run, and a
run that finds nothing to do changes nothing.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engine.funnel.facts import LeadFacts
from engine.funnel.lifecycle import StageMove, stage_move
from engine.funnel.memo import Memo, remembering
from engine.funnel.replay import TOLERANCE, read_past, replay
from engine.funnel.service import rescore_leads
from engine.models import Lead, VersionKind, WorkflowVersion
from engine.workflow.runtime import Runtime
from engine.workflow.versions import store_all

MOVERS = 20
BIN = 10  # points per bar of the score histogram
# Tombstones are left as erased: their scrubbed events would score differently.
_IDS = select(Lead.id).where(Lead.erased_at.is_(None)).order_by(Lead.id)


@dataclass(frozen=True)
class Mover:
    """One lead whose score the new rules move, and the rules that move it."""

    key: str
    before: float
    after: float
    rules: dict[str, float]

    @property
    def change(self) -> float:
        """How far the score moves."""
        return self.after - self.before


@dataclass
class Tally:
    """Leads a rescore sees, whose score it changes, and where it moves them: the counts a
    plan promises and a rescore then reports."""

    versions: str
    leads: int = 0
    changed: int = 0  # leads whose score changes
    moves: Counter[StageMove] = field(default_factory=Counter)

    def totals(self) -> dict[str, Any]:
        """The counts as plain data."""
        return {
            "versions": self.versions,
            "leads": self.leads,
            "changed": self.changed,
            "new_sql": self.moves[StageMove.SQL],
            "new_mql": self.moves[StageMove.MQL],
            "dropped_mql": self.moves[StageMove.SLIPPED],
        }


@dataclass
class RescorePlan(Tally):
    """What a rescore would change: leads, stages, the score distribution and its movers."""

    sql: list[str] = field(default_factory=list)  # the leads that would cross SQL
    before: Counter[int] = field(default_factory=Counter)  # histogram bin -> leads
    after: Counter[int] = field(default_factory=Counter)
    _movers: list[tuple[float, int, Mover]] = field(default_factory=list, repr=False)

    def count(
        self, lead: Lead, after: float, rules: dict[str, float], move: StageMove | None
    ) -> None:
        """Take one lead's replay into the totals."""
        self.leads += 1
        self.before[_bin(lead.score)] += 1
        self.after[_bin(after)] += 1
        if move is not None:
            self.moves[move] += 1
            if move is StageMove.SQL:
                self.sql.append(lead.key)
        if abs(after - lead.score) <= TOLERANCE:
            return
        self.changed += 1
        entry = (abs(after - lead.score), -lead.id, Mover(lead.key, lead.score, after, rules))
        if len(self._movers) < MOVERS:
            heapq.heappush(self._movers, entry)
        else:
            heapq.heappushpop(self._movers, entry)

    @property
    def movers(self) -> list[Mover]:
        """The largest movers, largest first."""
        return [mover for _, _, mover in sorted(self._movers, reverse=True)]

    def histogram(self) -> list[tuple[int, int, int]]:
        """(bin start, leads before, leads after) for every bin from the lowest to the highest."""
        bins = set(self.before) | set(self.after)
        if not bins:
            return []
        return [
            (start * BIN, self.before[start], self.after[start])
            for start in range(min(bins), max(bins) + 1)
        ]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for --json and the API."""
        return self.totals() | {
            "sql": list(self.sql),
            "histogram": [
                {"from": start, "to": start + BIN, "before": before, "after": after}
                for start, before, after in self.histogram()
            ],
            "movers": [asdict(mover) | {"change": mover.change} for mover in self.movers],
        }


def _bin(score: float) -> int:
    return math.floor(score / BIN)


def versions(session: Session, rt: Runtime) -> str:
    """`old -> new`: the scoring version stored before the one on disk (`unversioned` when
    none was), and the one on disk."""
    current = next(s.hash for s in rt.workflows.sources if s.kind == VersionKind.SCORING)
    before = session.scalar(
        select(WorkflowVersion.hash)
        .where(WorkflowVersion.kind == VersionKind.SCORING, WorkflowVersion.hash != current)
        .order_by(WorkflowVersion.first_seen_at.desc(), WorkflowVersion.id.desc())
        .limit(1)
    )
    return f"{before or 'unversioned'} -> {current}"


def plan_rescore(session: Session, rt: Runtime, batch: int = 1000) -> RescorePlan:
    """Replay every lead under the rules on disk; reads only."""
    now = rt.clock.now()
    scoring = rt.workflows.scoring
    plan = RescorePlan(versions(session, rt))
    after = 0
    while leads := list(
        session.scalars(
            select(Lead)
            .where(Lead.id > after, Lead.erased_at.is_(None))
            .order_by(Lead.id)
            .limit(batch)
        )
    ):
        ids = [lead.id for lead in leads]
        pasts = read_past(session, ids)
        with remembering(session, Memo.load(session, ids, (), now, lazy=True)):
            for lead in leads:
                replayed = replay(scoring, lead, pasts[lead.id], now)
                facts = LeadFacts(session, lead, now)
                if replayed.changes:  # else rescore leaves the score as it is
                    facts = facts.rescored(replayed.fit, replayed.engagement)
                move = stage_move(scoring, facts, lead.stage)
                plan.count(lead, facts.score, replayed.changes, move)
        after = ids[-1]
        session.expunge_all()  # memory stays flat however many leads there are
    return plan


@dataclass
class Rescored(Tally):
    """What a rescore did."""

    handed_off: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # would cross SQL: left for --handoff

    def as_dict(self) -> dict[str, Any]:
        """Plain data for --json."""
        return self.totals() | {
            "handed_off": list(self.handed_off),
            "held": list(self.held),
        }


def rescore(
    sessions: sessionmaker[Session],
    rt: Runtime,
    *,
    handoff: bool = False,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> Rescored:
    """Rescore every lead, `batch` leads per transaction, in id order; `progress` gets the
    number of leads done after each batch."""
    with sessions.begin() as session:
        done = Rescored(versions(session, rt))
        store_all(session, rt.workflows, rt.clock.now())  # the ledger now follows these rules
    after = 0
    while True:
        with sessions.begin() as session:
            ids = list(session.scalars(_IDS.where(Lead.id > after).limit(batch)))
            if not ids:
                return done
            outcomes = rescore_leads(
                session, rt, ids, cause=f"rescore {done.versions}", handoff=handoff
            )
            for outcome in outcomes:
                done.leads += 1
                done.changed += abs(outcome.points) > TOLERANCE
                move = StageMove.SQL if outcome.held else outcome.moved
                if move is not None:
                    done.moves[move] += 1
                if outcome.handoff_id is not None:
                    done.handed_off.append(outcome.lead.key)
                elif outcome.held:
                    done.held.append(outcome.lead.key)
        after = ids[-1]
        if progress is not None:
            progress(done.leads)
