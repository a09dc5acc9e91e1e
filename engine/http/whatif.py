"""What-if through the API: the plan (in-flight moves and the rescore of the past) and
backtests, which run as jobs on a worker and are read back by id."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, BeforeValidator, Field

from engine.app import App
from engine.errors import UnknownSequenceError
from engine.funnel.rescore import plan_rescore
from engine.funnel.rollout import make_plan
from engine.http.errors import invalid
from engine.http.routes import Workers
from engine.http.schemas import ErrorOut, error_responses
from engine.http.validators import json_integer
from engine.models import BacktestJob, JobStatus
from engine.runner.jobs import create_job, job_view

log = logging.getLogger(__name__)

INT32 = 2**31 - 1  # the columns that keep a job's numbers are 32-bit on PostgreSQL
SINCE = r"^[1-9][0-9]{0,2}[mhdw]$"  # durations as `parse_duration` reads them, up to 999 weeks
# Integers as the document states them: 7 and 7.0 are taken, "7" and true refused.
Count = Annotated[int, Field(strict=True, ge=1, le=INT32), BeforeValidator(json_integer)]
Seed = Annotated[int, Field(strict=True, ge=0, le=INT32), BeforeValidator(json_integer)]


class PlanIn(BaseModel):
    """What to plan: always the in-flight moves; the rescore of the past unless turned off."""

    rescore: bool = Field(
        True, strict=True, description="Replay every lead's past under scoring.yml."
    )


class GroupOut(BaseModel):
    """Leads at one place of an old version and where they go (`to` null: stranded)."""

    place: str
    leads: int
    to: str | None
    note: str


class SequencePlanOut(BaseModel):
    """One sequence whose leads in flight run an older version than the file on disk."""

    name: str
    from_version: str
    to_version: str | None
    pinned: bool
    changes: list[str]
    groups: list[GroupOut]


class StrandedOut(BaseModel):
    """Leads with nowhere to go in the new version."""

    sequence: str
    place: str
    leads: int


class BarOut(BaseModel):
    """Leads whose score falls in [from, to) before and after the rescore."""

    from_: float = Field(alias="from")
    to: float
    before: int
    after: int


class MoverOut(BaseModel):
    """A lead whose score moves most, and the rules that move it (points per rule)."""

    key: str
    before: float
    after: float
    change: float
    rules: dict[str, float]


class RescoreOut(BaseModel):
    """What `nurture rescore` would change: scores, stages, distribution, largest movers."""

    versions: str = Field(description="The scoring version before and the one on disk.")
    leads: int
    changed: int = Field(description="Leads whose score would change.")
    new_sql: int = Field(description="Leads that would cross SQL (handed off only on request).")
    new_mql: int
    dropped_mql: int
    sql: list[str] = Field(description="The leads that would cross SQL.")
    histogram: list[BarOut]
    movers: list[MoverOut]


class PlanOut(BaseModel):
    """Everything `apply` and `rescore` would do."""

    sequences: list[SequencePlanOut]
    notes: list[str]
    stranded: list[StrandedOut]
    moves: int
    rescore: RescoreOut | None


class BacktestIn(BaseModel):
    """A sequence to replay recorded history through, and over how much of it."""

    sequence: str = Field(
        description="A sequence of the workflows folder, as it stands (the document lists them)."
    )
    since: str = Field(
        "30d",
        pattern=SINCE,
        description="How far back the period starts: up to 999 minutes, hours, days or weeks.",
    )
    leads: Count | None = Field(None, description="A sample of this many leads (default all).")
    seed: Seed = Field(0, description="Draws the sample: the same seed, the same leads.")


class BacktestOut(BaseModel):
    """A backtest job: queued, running, done (with its report) or failed (with its error)."""

    id: str
    status: JobStatus
    sequence: str
    since: str
    leads: int | None
    seed: int
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    report: dict[str, Any] | None
    error: str | None


def whatif_routes(router: APIRouter, app: App, jobs: Workers | None) -> None:
    """`POST /v1/plan`, `POST /v1/backtests` and `GET /v1/backtests/{id}`."""

    @router.post(
        "/v1/plan", response_model=PlanOut, responses=error_responses(400), tags=["what-if"]
    )
    def plan(body: PlanIn | None = None) -> dict[str, Any]:
        """What `nurture apply` would do to leads in flight and `nurture rescore` to scores."""
        with app.sessions.begin() as session:
            data = make_plan(session, app.rt).as_dict()
        rescore = body is None or body.rescore
        with app.sessions() as session:
            data["rescore"] = plan_rescore(session, app.rt).as_dict() if rescore else None
        return data

    @router.post(
        "/v1/backtests",
        response_model=BacktestOut,
        status_code=202,
        responses=error_responses(400),
        tags=["what-if"],
    )
    def start(body: BacktestIn) -> dict[str, Any]:
        """Queue a backtest of a sequence on recorded history; poll its id for the report."""
        try:
            with app.sessions.begin() as session:
                view = job_view(
                    create_job(session, app.rt, body.sequence, body.since, body.leads, body.seed)
                )
        except UnknownSequenceError as error:
            raise invalid(("body", "sequence"), str(error)) from error
        if jobs is not None:
            try:
                jobs.start_job(view["id"])
            except Exception as error:  # noqa: BLE001 - the job is stored: the scheduler sends it
                log.warning(
                    "could not enqueue backtest %s (the scheduler will): %s", view["id"], error
                )
        return view

    @router.get(
        "/v1/backtests/{job_id}",
        response_model=BacktestOut,
        responses={404: {"model": ErrorOut, "description": "No such backtest"}},
        tags=["what-if"],
    )
    def show(job_id: str) -> dict[str, Any]:
        """A backtest job and, once done, its report."""
        with app.sessions() as session:
            job = session.get(BacktestJob, job_id)
            if job is None:
                raise HTTPException(404, f"no backtest {job_id!r}")
            return job_view(job)


def list_sequences(api: FastAPI, app: App) -> None:
    """Name the sequences this process serves in the document, as the values `sequence` of a
    backtest may take: a client (or a fuzzer) knows them, and any other is a 422."""
    names = sorted(app.rt.workflows.sequences)
    document = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None and names:
            schema = document()
            schema["components"]["schemas"]["BacktestIn"]["properties"]["sequence"]["enum"] = names
        return document()

    api.openapi = openapi  # type: ignore[method-assign]
