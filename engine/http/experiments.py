"""Experiments through the API: every step with variants and every holdout, and one sequence's
report with the lift its holdout measures (`engine.read.experiments` builds both)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from engine.app import App
from engine.errors import UnknownSequenceError
from engine.http.schemas import ErrorOut
from engine.models import ExperimentStatus
from engine.read.experiments import experiments_overview, sequence_experiments


class VariantOut(BaseModel):
    """One variant of a step and how often its sends succeeded once their window closed."""

    id: str
    template: str
    subject: str | None
    weight: float
    sends: int = Field(description="Every send of the variant.")
    matured: int = Field(description="Sends whose window (`within`) has closed.")
    successes: int = Field(description="Matured sends that met the metric.")
    rate: float | None = Field(description="successes / matured; null before any matured.")


class DecisionOut(BaseModel):
    """The variant every later lead of the step gets, and how it was chosen."""

    variant: str
    kind: str = Field(description="`auto` (the winner rule decided) or `manual` (picked).")
    reason: str
    picked_at: str
    figures: dict[str, Any] = Field(description="What the test saw: per variant sends, p.")


class ExperimentOut(BaseModel):
    """A step with variants: what success means for it, where it stands, each variant."""

    sequence: str
    milestone: str
    step: str
    channel: str
    metric: str
    within: str
    after: int | None = Field(description="The winner rule's sends per look; null without one.")
    confidence: float | None
    status: ExperimentStatus
    pick: DecisionOut | None
    variants: list[VariantOut]


class HoldoutOut(BaseModel):
    """A sequence that enrols a share of its new leads but sends them nothing."""

    sequence: str
    share: float


class ExperimentsOut(BaseModel):
    """Every experiment of the sequences loaded."""

    experiments: list[ExperimentOut]
    holdouts: list[HoldoutOut]


class ConversionOut(BaseModel):
    """Leads of one arm that could still reach a stage when enrolled, and those that did."""

    eligible: int
    converted: int
    rate: float | None


class ArmOut(BaseModel):
    """Leads sent to, or held out, counted at their first enrolment in the sequence."""

    leads: int
    mql: ConversionOut
    sql: ConversionOut
    median_days_to_sql: float | None


class LiftOut(BaseModel):
    """sent rate / held-out rate - 1, its confidence interval and Fisher's exact p-value."""

    lift: float | None = Field(description="Null while no held-out lead converted.")
    low: float | None
    high: float | None = Field(description="Null when the interval has no upper bound.")
    p_value: float


class HoldoutReportOut(BaseModel):
    """The sequence's sent leads beside its held-out ones, on reaching MQL and SQL."""

    sequence: str
    confidence: float
    sent: ArmOut
    held_out: ArmOut
    mql_lift: LiftOut | None = Field(description="Null while either arm has no eligible lead.")
    sql_lift: LiftOut | None


class SequenceExperimentsOut(BaseModel):
    """One sequence's experiments and its holdout."""

    sequence: str
    holdout_share: float
    experiments: list[ExperimentOut]
    holdout: HoldoutReportOut | None = Field(
        description="Null when the sequence holds no lead out and never did."
    )


def experiment_routes(router: APIRouter, app: App) -> None:
    """`GET /v1/experiments` and `GET /v1/experiments/{sequence}`."""

    @router.get("/v1/experiments", response_model=ExperimentsOut, tags=["experiments"])
    def overview() -> dict[str, Any]:
        """Every step with variants: its metric, status, decision and each variant's rate."""
        with app.sessions() as session:
            return experiments_overview(session, app.rt, app.rt.clock.now()).as_dict()

    @router.get(
        "/v1/experiments/{sequence}",
        response_model=SequenceExperimentsOut,
        responses={404: {"model": ErrorOut, "description": "No such sequence"}},
        tags=["experiments"],
    )
    def report(sequence: str) -> dict[str, Any]:
        """One sequence's experiments and the lift over its held-out leads."""
        try:
            with app.sessions() as session:
                found = sequence_experiments(session, app.rt, sequence, app.rt.clock.now())
        except UnknownSequenceError as error:
            raise HTTPException(404, str(error)) from error
        return found.as_dict()
