"""Template previews against any lead, and the message of one delivery as its lead got it.

An email's HTML shows in `<iframe sandbox="" srcdoc="...">`: autoescaped into the attribute,
so what the template escaped stays escaped, no script in it runs and it cannot navigate the
dashboard. A srcdoc document has no URL and no headers of its own: `frame-src` does not
apply to it, and it inherits the page's Content-Security-Policy. So these pages alone also
allow inline styles, the way every email is styled; scripts stay forbidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.delivery.context import message_context, preview_context, recent_activity
from engine.delivery.guards import SENT_STATES
from engine.delivery.rendering import RenderedEmail, RenderedSms
from engine.errors import NurtureError, UnknownLeadError
from engine.funnel.leads import lead_by_id
from engine.http.pages.access import Visit
from engine.http.pages.site import Site
from engine.http.pages.templating import SECURITY_HEADERS
from engine.models import Delivery, Enrolment, Lead
from engine.read.views import MAX_ID, find_by_key
from engine.workflow.spec import Send, Sequence, Workflows, walk

CHANNELS = ("email", "sms")
MESSAGE_CSP = SECURITY_HEADERS["Content-Security-Policy"].replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
)
Message = RenderedEmail | RenderedSms


def preview_routes(router: APIRouter, site: Site) -> None:
    """GET /templates, GET /templates/preview, GET /leads/{id}/deliveries/{delivery_id}."""

    @router.get("/templates", include_in_schema=False)
    def templates_page(request: Request) -> Response:
        visit = site.visit(request)
        names = _names(site)
        users = _users(site.app.rt.workflows)
        rows = [
            {"channel": channel, "name": name, "sequences": users.get((channel, name), [])}
            for channel in CHANNELS
            for name in sorted(names[channel])
        ]
        return site.page(request, visit, "templates.html", rows=rows, names=names)

    @router.get("/templates/preview", include_in_schema=False)
    def preview_page(
        request: Request, template: str = "", channel: str = "", lead: str = ""
    ) -> Response:
        visit = site.visit(request)
        if not template:
            return RedirectResponse("/templates", 303)
        names = _names(site)
        status, problem = _problem(names, template, channel)
        asked, channel = channel, channel or ("email" if template in names["email"] else "sms")
        users = _users(site.app.rt.workflows).get((channel, template), [])
        sequence = users[0] if users else None
        shown: dict[str, Any] = {"message": None, "found": None}
        if not problem:
            try:
                shown = _preview(site, template, channel, lead, sequence)
            except UnknownLeadError as error:
                status, problem = 404, str(error)
            except NurtureError as error:  # a key that is no identity, a template that fails
                status, problem = 400, str(error)
        return _message_page(
            site,
            request,
            visit,
            "preview.html",
            status,
            template=template,
            channel=channel,
            asked=asked,
            lead=lead,
            names=names,
            sequence=sequence,
            problem=problem,
            **shown,
        )

    @router.get("/leads/{lead_id}/deliveries/{delivery_id}", include_in_schema=False)
    def delivery_page(request: Request, lead_id: int, delivery_id: str) -> Response:
        visit = site.visit(request)
        with site.app.sessions() as session:
            delivery = session.get(Delivery, delivery_id)
            lead = lead_by_id(session, lead_id) if 0 < lead_id <= MAX_ID else None
            if delivery is None or lead is None or delivery.lead_id != lead.id:
                problem = f"lead {lead_id} has no delivery {delivery_id}"
                return site.page(
                    request,
                    visit,
                    "delivery.html",
                    404,
                    lead_id=lead_id,
                    lead=None,
                    delivery=None,
                    message=None,
                    problem=problem,
                )
            if lead.id != lead_id:  # a link from before a merge: the survivor's page
                return RedirectResponse(f"/leads/{lead.id}/deliveries/{delivery.id}", 303)
            message, problem = _delivered(site, session, lead, delivery)
        return _message_page(
            site,
            request,
            visit,
            "delivery.html",
            200,
            lead_id=lead_id,
            lead=lead,
            delivery=delivery,
            message=message,
            problem=problem,
        )


def _message_page(
    site: Site, request: Request, visit: Visit, name: str, status: int, **context: Any
) -> Response:
    """A page that may frame an email: its inline styles apply in the frame, scripts do not."""
    response = site.page(request, visit, name, status, **context)
    response.headers["Content-Security-Policy"] = MESSAGE_CSP
    return response


def _names(site: Site) -> dict[str, set[str]]:
    """The template names per channel."""
    renderer = site.app.renderer
    return {"email": renderer.email_templates(), "sms": renderer.sms_templates()}


def _users(workflows: Workflows) -> dict[tuple[str, str], list[Sequence]]:
    """The sequences that send each (channel, template), by name: the first gives a preview
    its sequence name and unsubscribe topic."""
    users: dict[tuple[str, str], dict[str, Sequence]] = {}
    for name, sequence in sorted(workflows.sequences.items()):
        for milestone in sequence.milestones:
            for step in walk(milestone.steps):
                if isinstance(step, Send):
                    users.setdefault((step.channel, step.template), {})[name] = sequence
    return {key: list(found.values()) for key, found in users.items()}


def _problem(names: Mapping[str, set[str]], template: str, channel: str) -> tuple[int, str]:
    """What keeps `template` on `channel` (empty: whichever has it) from a preview; 200 and ''
    when nothing does."""
    if channel and channel not in CHANNELS:
        return 400, f"channel: {channel!r} is not one of email, sms"
    if channel and template not in names[channel]:
        return 404, f"no {channel} template named {template!r}"
    if not channel and template in names["email"] and template in names["sms"]:
        return 400, f"both an email and an SMS template are named {template!r}: pick a channel"
    if not channel and not any(template in names[c] for c in CHANNELS):
        return 404, f"no email or SMS template named {template!r}"
    return 200, ""


def _preview(
    site: Site, template: str, channel: str, key: str, sequence: Sequence | None
) -> dict[str, Any]:
    """The template rendered for the lead `key` names (the sample lead when empty), as the first
    sequence that sends it would; NurtureError when the lead or the render fails."""
    now = site.app.rt.clock.now()
    with site.app.sessions() as session:
        lead = find_by_key(session, key) if key.strip() else None
        recent = recent_activity(session, lead) if lead is not None else None
        context = preview_context(site.app.settings, now, sequence, lead, recent)
    return {"message": _render(site, channel, template, context, first_sms=True), "found": lead}


def _delivered(
    site: Site, session: Session, lead: Lead, delivery: Delivery
) -> tuple[Message | None, str]:
    """The delivery rendered with the context its send builds (or built), from the lead as it
    is now; the problem instead when its sequence or its template no longer renders it."""
    enrolment = session.get_one(Enrolment, delivery.enrolment_id)
    sequence = site.app.rt.pinned(session, enrolment.sequence, enrolment.sequence_version)
    if sequence is None:
        return None, f"sequence {enrolment.sequence!r} is no longer loaded: nothing to render"
    now = delivery.sent_at or max(delivery.due_at, site.app.rt.clock.now())
    recent = recent_activity(session, lead)
    context = message_context(site.app.settings, lead, delivery, sequence, recent, now)
    first = _first_sms(session, delivery)
    try:
        return _render(site, delivery.channel, delivery.template, context, first), ""
    except NurtureError as error:
        return None, str(error)


def _first_sms(session: Session, delivery: Delivery) -> bool:
    """Whether this is the lead's first SMS, the one that says how to opt out: no other went
    out before it (before now, for one not sent)."""
    if delivery.channel != "sms":
        return False
    query = select(Delivery.id).where(
        Delivery.lead_id == delivery.lead_id,
        Delivery.channel == "sms",
        Delivery.status.in_(SENT_STATES),
        Delivery.id != delivery.id,
    )
    if delivery.status in SENT_STATES:
        query = query.where(Delivery.planned_at < delivery.planned_at)
    return session.scalar(query.limit(1)) is None


def _render(
    site: Site, channel: str, template: str, context: Mapping[str, Any], first_sms: bool
) -> Message:
    """An email's parts or an SMS body with its cost; TemplateError when it does not render."""
    if channel == "email":
        return site.app.renderer.render_email(template, context)
    return site.app.renderer.render_sms(template, context, first_message=first_sms)
