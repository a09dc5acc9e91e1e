"""Provider webhooks (SendGrid events, Twilio status and inbound SMS) and one-click unsubscribe.

None of these take an API key: webhooks are signed by the provider, unsubscribe links by us.
A request whose signature does not verify is refused with 403 before anything is recorded;
so is every Twilio request while TWILIO_AUTH_TOKEN is unset (`allow_unsigned_webhooks` is for
SendGrid only: the Twilio parser always verifies).
A request's events are recorded together in one transaction: all or none. When the database
fails, the answer is 503 and the provider retries the whole post; the engine ignores
duplicates, so every event counts once.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape as xml_escape

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from channels.base import EMAIL, DeliveryEvent
from channels.webhooks import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    PayloadError,
    check_sendgrid_key,
    parse_sendgrid_events,
    parse_twilio_inbound,
    parse_twilio_status,
)
from engine.app import App
from engine.delivery.feedback import record_delivery_events
from engine.delivery.sending import suppress
from engine.delivery.unsubscribe import InvalidTokenError, read_token, topic_named
from engine.funnel.leads import Identity, lead_by_id
from engine.funnel.service import Outcome, track
from engine.funnel.topics import TOPIC_EVENT
from engine.http.schemas import error_responses
from engine.read.metrics import Metrics

log = logging.getLogger(__name__)

TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
STOP_CONFIRMATION = (
    "You are unsubscribed from {company} messages. No more messages will be sent. "
    "Reply START to resubscribe."
)
TWILIO_FIELDS = ("MessageSid", "AccountSid", "MessagingServiceSid", "From", "To", "Body")
AfterTrack = Callable[[Outcome], None]


class WebhookOut(BaseModel):
    """How many normalised events a webhook request carried and what became of them."""

    received: int
    recorded: int
    duplicates: int
    ignored: int


SendGridSignature = Annotated[str | None, Header(alias=SENDGRID_SIGNATURE_HEADER)]
SendGridTimestamp = Annotated[str | None, Header(alias=SENDGRID_TIMESTAMP_HEADER)]
TwilioSignature = Annotated[str | None, Header(alias=TWILIO_SIGNATURE_HEADER)]

_SENDGRID_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "array",
                "items": {},
                "description": "SendGrid Event Webhook events; malformed items are skipped.",
            }
        }
    },
}


def _twilio_body(*extra: str) -> dict[str, Any]:
    fields = (*TWILIO_FIELDS, *extra)
    schema = {"type": "object", "properties": {name: {"type": "string"} for name in fields}}
    return {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": schema}},
    }


def _form(body: bytes) -> dict[str, str]:
    """A form-encoded body as Twilio signs it: every name with its (last) value."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError as error:
        raise PayloadError("Twilio webhook body is not UTF-8") from error


def webhook_router(
    app: App,
    after: AfterTrack,
    metrics: Metrics,
    *,
    sendgrid_key: str | None,
    twilio_token: str | None,
    allow_unsigned: bool,
) -> APIRouter:
    """Routes for provider feedback; unsigned SendGrid posts only with `allow_unsigned`."""
    if sendgrid_key:
        check_sendgrid_key(sendgrid_key)
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])
    responses = error_responses(400, 403, 413, 503)

    def record(provider: str, events: Sequence[DeliveryEvent]) -> WebhookOut:
        """Record the events in one transaction; a database failure (a conflict included)
        leaves none written and answers 503, so the provider posts them all again."""
        try:
            with app.sessions.begin() as session:
                results = record_delivery_events(session, app.rt, events)
        except DBAPIError as error:
            log.error("%s webhook: %d events not recorded: %s", provider, len(events), error)
            raise HTTPException(503, "events not recorded: the provider should retry") from error
        counts = {"recorded": 0, "duplicates": 0, "ignored": 0}
        for result in results:
            if result.duplicate:
                counts["duplicates"] += 1
            elif result.track is not None:
                counts["recorded"] += 1
                after(result.track)
            else:
                counts["recorded" if result.action == "suppressed" else "ignored"] += 1
        metrics.webhooks.labels(provider).inc()
        return WebhookOut(received=len(events), **counts)

    def twilio_url(path: str, request: Request) -> str:
        """The URL Twilio signed: the public one, since behind a proxy request.url differs."""
        query = request.url.query
        return f"{app.settings.public_url}/webhooks{path}" + (f"?{query}" if query else "")

    def require_token() -> str:
        if not twilio_token:
            raise HTTPException(403, "TWILIO_AUTH_TOKEN is not set: Twilio requests are refused")
        return twilio_token

    @router.post(
        "/sendgrid",
        response_model=WebhookOut,
        responses=responses,
        openapi_extra={"requestBody": _SENDGRID_BODY},
    )
    async def sendgrid(
        request: Request,
        signature: SendGridSignature = None,
        timestamp: SendGridTimestamp = None,
    ) -> WebhookOut:
        """SendGrid Event Webhook: opens, clicks, bounces, spam reports, unsubscribes."""
        if not sendgrid_key and not allow_unsigned:
            raise HTTPException(403, "SENDGRID_WEBHOOK_PUBLIC_KEY is not set: events are refused")
        body = await request.body()

        def handle() -> WebhookOut:
            events = parse_sendgrid_events(
                body, signature=signature, timestamp=timestamp, public_key=sendgrid_key
            )
            return record("sendgrid", events)

        return await run_in_threadpool(handle)

    @router.post(
        "/twilio/status",
        response_model=WebhookOut,
        responses=responses,
        openapi_extra={"requestBody": _twilio_body("MessageStatus", "ErrorCode")},
    )
    async def twilio_status(request: Request, signature: TwilioSignature = None) -> WebhookOut:
        """Twilio status callback: delivered, undelivered, failed (21610 means STOP)."""
        token = require_token()
        params = _form(await request.body())
        url = twilio_url("/twilio/status", request)

        def handle() -> WebhookOut:
            event = parse_twilio_status(
                url, params, signature, token, received_at=app.rt.clock.now()
            )
            return record("twilio", [event] if event is not None else [])

        return await run_in_threadpool(handle)

    @router.post(
        "/twilio/inbound",
        response_class=Response,
        responses={
            200: {
                "content": {"text/xml": {}},
                "description": "TwiML: the answer to HELP or STOP, else empty",
            },
            **responses,
        },
        openapi_extra={"requestBody": _twilio_body("NumMedia", "NumSegments", "OptOutType")},
    )
    async def twilio_inbound(request: Request, signature: TwilioSignature = None) -> Response:
        """Inbound SMS: STOP/START/HELP keywords change consent, anything else is a reply.

        HELP is answered with the help text, STOP with one confirmation. A redelivered
        webhook (same MessageSid) is answered empty, so nobody gets a second confirmation.
        With Twilio's Advanced Opt-Out, Twilio answers the keywords itself (the request then
        carries `OptOutType`), and the answer here is empty.
        """
        token = require_token()
        params = _form(await request.body())
        url = twilio_url("/twilio/inbound", request)

        def handle() -> str | None:
            event = parse_twilio_inbound(
                url, params, signature, token, received_at=app.rt.clock.now()
            )
            counts = record("twilio", [event])
            answered = bool(params.get("OptOutType"))
            return _keyword_answer(app, event, counts, twilio_answered=answered)

        answer = await run_in_threadpool(handle)
        return Response(_twiml(answer), media_type="text/xml")

    return router


def _keyword_answer(
    app: App, event: DeliveryEvent, counts: WebhookOut, *, twilio_answered: bool
) -> str | None:
    """The SMS reply to an inbound keyword, once: HELP gets the help text, a STOP recorded
    for a lead gets the confirmation; a duplicate, or what Twilio answered itself, gets none.

    A STOP from a number no lead has suppresses it and is confirmed the first time only.
    """
    if counts.duplicates or twilio_answered:
        return None
    if event.kind == "help":
        return app.settings.sms_help_text
    if event.kind == "opted_out" and counts.recorded:
        return STOP_CONFIRMATION.format(company=app.settings.company_name)
    return None


def _twiml(message: str | None) -> str:
    """TwiML with one reply SMS, its text XML-escaped, or the empty answer (no reply)."""
    if not message:
        return TWIML_EMPTY
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Message>{xml_escape(message)}</Message></Response>"
    )


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A minimal page that leaks nothing onwards (no referrer) and is never cached."""
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>"
        f'<body style="font-family: sans-serif; max-width: 32rem; margin: 3rem auto">'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(document, status_code=status, headers=headers)


_INVALID = ("Link not valid", "<p>This unsubscribe link is not valid.</p>")
_HTML_RESPONSES: Mapping[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}}, "description": "An HTML page"},
    404: {
        "content": {"text/html": {}},
        "description": "The token is not one we signed, or its lead no longer exists",
    },
}
_UNSUBSCRIBE_BODY = {
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {
                    "List-Unsubscribe": {
                        "type": "string",
                        "description": "One-Click (RFC 8058): leave the topic of the email",
                    },
                    "choice": {
                        "type": "string",
                        "enum": ["topic", "all"],
                        "description": "From the page: `topic` (the default) or `all` emails",
                    },
                },
            }
        }
    }
}


def unsubscribe_router(app: App, after: AfterTrack) -> APIRouter:
    """GET shows a confirmation page and changes nothing (scanners prefetch links); POST acts.

    A link names the lead and the topic of the email it was in. RFC 8058 one-click (or the
    page's first button) leaves that topic: later emails of sequences with that topic are
    skipped, the others still go. The page's `choice=all` leaves every email, as unsubscribing
    always did: email consent off and the address suppressed. Each is recorded once per link.
    """
    router = APIRouter(prefix="/u", tags=["unsubscribe"])
    company = html.escape(app.settings.company_name)

    def read(token: str) -> tuple[int, str] | None:
        """The lead and the topic a genuine token names; None for anything else."""
        try:
            lead_id, name = read_token(app.settings.secret_key, token)
        except InvalidTokenError:
            return None
        return lead_id, topic_named(app.rt.workflows, name)

    def choices(topic: str | None) -> str:
        """A form posting back to this URL: leave `topic` (escaped; when given) or everything."""
        button = '<p><button type="submit" name="choice" value="{}">{}</button></p>'
        leave_topic = button.format("topic", f"Unsubscribe from {topic}") if topic else ""
        leave_all = button.format("all", "Unsubscribe from all emails")
        return f'<form method="post">{leave_topic}{leave_all}</form>'

    @router.get("/{token}", response_class=HTMLResponse, responses=dict(_HTML_RESPONSES))
    def confirm(token: str) -> HTMLResponse:
        """A page whose form posts a choice back to this URL: leave this topic, or everything."""
        named = read(token)
        if named is None:
            return _page(*_INVALID, status=404)
        topic = html.escape(named[1])
        text = f"<p>You get <strong>{topic}</strong> emails from {company}.</p>"
        return _page("Unsubscribe", text + choices(topic))

    @router.post(
        "/{token}",
        response_class=HTMLResponse,
        responses=dict(_HTML_RESPONSES),
        openapi_extra={"requestBody": _UNSUBSCRIBE_BODY},
    )
    async def unsubscribe(token: str, request: Request) -> HTMLResponse:
        """Leave the email's topic (RFC 8058 one-click, `choice=topic`) or all (`choice=all`)."""
        named = read(token)
        if named is None:
            return _page(*_INVALID, status=404)
        lead_id, topic = named
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        everything = form.get("choice") == "all"
        via = "page" if "choice" in form else "one-click"

        def handle() -> HTMLResponse:
            with app.sessions.begin() as session:
                lead = lead_by_id(session, lead_id)  # a link from before a merge: the survivor
                if lead is None or lead.erased_at is not None:
                    return _page("Not found", "<p>There is nothing left to unsubscribe.</p>", 404)
                column, value = Identity.of(lead).key()
                result = track(
                    session,
                    app.rt,
                    {column: value},
                    "unsubscribed" if everything else TOPIC_EVENT,
                    {"topic": topic, "via": via},
                    # one event per link and choice: a repeat is a duplicate and changes nothing
                    event_id=f"unsubscribe:{token}" if everything else f"unsubscribe-topic:{token}",
                    source="unsubscribe",
                )
                if everything and not result.duplicate and lead.email:
                    reason = f"unsubscribed from all emails (link in a {topic} email)"
                    suppress(session, EMAIL, lead.email, reason, app.rt.clock.now())
            after(result)
            shown = html.escape(topic)
            if everything:
                text = f"<p>You will get no more emails from {company}.</p>"
                return _page("You are unsubscribed", text)
            text = (
                f"<p>You will get no more <strong>{shown}</strong> emails from {company}."
                " Other emails from us still reach you; to stop them too:</p>"
            )
            return _page(f"You left {topic}", text + choices(None))

        return await run_in_threadpool(handle)

    return router
