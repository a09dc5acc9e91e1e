"""The double opt-in email: one confirmation link per pending consent, sent at most once.

Like the note to a lead's owner (`handoff.notify_owner`) it is no sequence step: it is marked
sent in the database before the channel is called, so a retry or a second worker never sends
it twice (a send lost on the way is not repeated; the person can fill the form again).
Submitting again within RESEND_AFTER of a sent confirmation for the same lead and topic sends
no new one (the first link still works), nor beyond WEEKLY_MAX to one lead a week: a form
cannot be used to flood an inbox.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from markupsafe import escape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from channels.base import EMAIL, EmailMessage
from engine.contacts import ascii_address
from engine.delivery.context import lead_view, unsubscribe_url
from engine.delivery.process import DeliveryContext
from engine.delivery.rendering import Renderer, TemplateError, sample_context
from engine.errors import Problem
from engine.funnel.consents import confirm_token
from engine.funnel.leads import lock_lead
from engine.models import Consent, ConsentStatus
from engine.settings import Settings
from engine.workflow.spec import Form

RESEND_AFTER = timedelta(hours=1)
# At most this many confirmations to one lead (any topic) a week: anyone can type an address
# into a form, and a form must not become a way to flood someone's inbox.
WEEKLY_MAX = 3
SAMPLE_CONFIRM_URL = "https://nurture.acme-analytics.example/f/confirm/c2FtcGxl.MTc3.c2ln"


def confirm_url(settings: Settings, consent_id: int, issued_at: datetime) -> str:
    """The link that confirms a pending consent, signed against forgery, expiring."""
    token = confirm_token(settings.secret_key, consent_id, issued_at)
    return f"{settings.public_url}/f/confirm/{token}"


def confirmation_context(
    settings: Settings, form: Form, lead: Mapping[str, Any], link: str, unsubscribe: str, now: Any
) -> dict[str, Any]:
    """What a confirmation template sees: the lead, the form, the link, the sender."""
    name, address = form.sender or ("", settings.notify_from)
    return {
        "lead": lead,
        "form": {"name": form.name, "title": form.title, "topic": form.topic},
        "confirm_url": link,
        "unsubscribe_url": unsubscribe,
        "sender": {
            "name": name or settings.company_name,
            "email": address,
            "company": settings.company_name,
            "postal_address": settings.postal_address,
        },
        "now": now,
    }


def send_confirmation(ctx: DeliveryContext, consent_id: int) -> bool:
    """Email the confirmation link of a pending consent once; False when none is due (sent
    before, confirmed, the lead erased, or another sent for the same topic within the hour)."""
    now = ctx.rt.clock.now()
    with ctx.sessions.begin() as session:
        lead_id = session.scalar(select(Consent.lead_id).where(Consent.id == consent_id))
        if lead_id is None:
            return False
        # The lead's lock first, as every writer of a lead takes it: two pending consents of
        # one lead and topic (a double click on a site's own form) then send one email.
        lead = lock_lead(session, lead_id)
        consent = session.get_one(Consent, consent_id, populate_existing=True)
        if consent.status != ConsentStatus.PENDING:
            return False
        form = ctx.rt.workflows.forms.get(consent.form)
        if consent.confirmation_sent_at is not None or lead.erased_at or not lead.email:
            return False
        to_email = ascii_address(lead.email)
        if to_email is None and not ctx.channels[EMAIL].smtputf8:
            return False  # a mailbox the channel cannot carry: no email, no consent asked
        if form is None or _sent_lately(session, consent, now):
            return False
        consent.confirmation_sent_at = now
        context = confirmation_context(
            ctx.settings,
            form,
            lead_view(lead),
            confirm_url(ctx.settings, consent.id, now),
            unsubscribe_url(ctx.settings, lead.id, consent.topic),
            now,
        )
        email = ctx.renderer.render_email(form.confirm_template, context)
        message = EmailMessage(
            delivery_id=f"consent-{consent.id}",
            to_email=to_email or lead.email,
            to_name=lead.full_name,
            from_email=context["sender"]["email"],
            from_name=context["sender"]["name"],
            subject=email.subject,
            html=email.html,
            text=email.text,
            unsubscribe_url=context["unsubscribe_url"],
        )
    ctx.channels[EMAIL].send(message)
    return True


def _sent_lately(session: Session, consent: Consent, now: datetime) -> bool:
    """True when a confirmation for the same lead and topic went out within RESEND_AFTER, or
    WEEKLY_MAX to the lead within a week."""
    sent = (Consent.lead_id == consent.lead_id, Consent.id != consent.id)
    same_topic = select(Consent.id).where(
        *sent, Consent.topic == consent.topic, Consent.confirmation_sent_at > now - RESEND_AFTER
    )
    if session.scalar(same_topic.limit(1)) is not None:
        return True
    week = select(func.count()).where(*sent, Consent.confirmation_sent_at > now - timedelta(days=7))
    return (session.scalar(week) or 0) >= WEEKLY_MAX


def check_confirmations(
    renderer: Renderer, settings: Settings, forms: Iterable[Form]
) -> list[Problem]:
    """Render each double opt-in form's confirmation template against the sample lead, so a
    typo or a missing link fails `nurture validate`, not a sign-up."""
    sample = sample_context()
    problems: list[Problem] = []
    for form in forms:
        if form.consent is None or not form.consent.double_opt_in:
            continue
        context = confirmation_context(
            settings,
            form,
            sample["lead"],
            SAMPLE_CONFIRM_URL,
            sample["unsubscribe_url"],
            sample["now"],
        )
        where = (form.file, form.line, f"forms.{form.name}.confirm_template")
        try:
            email = renderer.render_email(form.confirm_template, context)
        except TemplateError as error:
            problems.append(Problem(*where, str(error)))
            continue
        unsubscribe = str(escape(sample["unsubscribe_url"]))
        for part, body, link, what in (
            ("HTML", email.html, str(escape(SAMPLE_CONFIRM_URL)), "confirmation"),
            ("text", email.text, SAMPLE_CONFIRM_URL, "confirmation"),
            ("HTML", email.html, unsubscribe, "unsubscribe"),
        ):
            if link not in body:
                message = f"template {form.confirm_template!r}: the {part} part has no {what} link"
                problems.append(Problem(*where, message))
    return problems
