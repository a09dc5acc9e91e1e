"""Privacy requests through the API: `GET /v1/leads/{key}/export` (everything held about a
lead) and `DELETE /v1/leads/{key}` (erase its personal data, keep an anonymised tombstone)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from engine.app import App
from engine.funnel.erasure import erase_lead
from engine.http.routes import lookup
from engine.http.schemas import error_responses
from engine.http.validators import LeadKey
from engine.models import ErasureReason
from engine.read.export import export_lead

Rows = list[dict[str, Any]]


class EnrolmentExport(BaseModel):
    """An enrolment's columns with its milestone visits and version moves."""

    model_config = {"extra": "allow"}

    milestone_visits: Rows
    version_moves: Rows


class VisitorExport(BaseModel):
    """A visitor's columns with its events not yet joined to the lead."""

    model_config = {"extra": "allow"}

    events: Rows


class ExportOut(BaseModel):
    """Every row held about one lead, each with all its columns."""

    format: int = Field(description="The document's version: 1.")
    exported_at: str
    lead: dict[str, Any] = Field(description="Identity, attributes, consent, stage, scores, times.")
    events: Rows
    score_ledger: Rows
    stage_changes: Rows
    enrolments: list[EnrolmentExport]
    deliveries: Rows
    handoffs: Rows
    topic_opt_outs: Rows
    suppressions: Rows = Field(description="Of its addresses, written out or hashed.")
    visitors: list[VisitorExport]
    erasures: Rows
    consents: Rows = Field(description="Proof of each consent given on a form.")
    aliases: Rows = Field(description="Identities of leads merged into this one.")
    conflicts: Rows = Field(description="Pairs of leads that calls named together, with it.")


class ErasureOut(BaseModel):
    """One erasure done: the tombstone's id, the log row, and what was scrubbed where."""

    lead_id: int
    erasure_id: int
    reason: ErasureReason
    via: str
    erased_at: str
    summary: dict[str, dict[str, int]] = Field(
        description="Rows per table: `scrubbed`, `removed` and `stopped` (enrolments ended, "
        "sends skipped, handoffs withdrawn)."
    )


def privacy_routes(router: APIRouter, app: App) -> None:
    """`GET /v1/leads/{key}/export` and `DELETE /v1/leads/{key}`."""

    @router.get(
        "/v1/leads/{key}/export",
        response_model=ExportOut,
        responses=error_responses(404),
        tags=["privacy"],
    )
    def export(key: LeadKey) -> dict[str, Any]:
        """Everything held about a lead, as JSON: an access request's answer."""
        with app.sessions() as session:
            return export_lead(session, lookup(session, key), app.rt.clock.now())

    @router.delete(
        "/v1/leads/{key}",
        response_model=ErasureOut,
        responses=error_responses(404),
        tags=["privacy"],
    )
    def erase(key: LeadKey) -> dict[str, Any]:
        """Erase a lead's personal data everywhere; a tombstone keeps the counts and its
        addresses stay suppressed. 404 for a lead already erased."""
        with app.sessions.begin() as session:
            lead = lookup(session, key)
            return erase_lead(session, app.rt, lead.id, ErasureReason.REQUEST, "api").as_dict()
