"""Hosted forms: `GET /f/{form}` serves a form from forms.yml, `POST /f/{form}` takes it (and a
site's own form with the same field names), `/f/confirm/{token}` confirms a double opt-in.

Decisions:
- A post is form-encoded (multipart too) or JSON. Form posts are answered with a 303 to the
  form's `redirect` (else `/f/{form}/thanks`), or, when a field is wrong, with the form again
  (422) showing each field's error and keeping the values. JSON posts (or `Accept:
  application/json`) get `{"ok": true, "message", "redirect"}`, or 422 `{"errors": {field:
  message}}`. The answer never says whether the address was known.
- Bots: a honeypot field (`fax`, hidden from people) that is filled gets the success answer
  and nothing is recorded. The hosted form carries a signed render time: sent back sooner than
  MIN_FILL after it was served, later than MAX_FILL, or altered, it is refused with a form-level
  error (the page asks to send again, with a fresh time). A site's own form carries no render
  time: it is taken (the honeypot, the origin check and the rate limit still apply); add
  the hidden field from the hosted page to opt in to the trap.
- Origin: a browser post whose `Origin` is neither nurture's own nor in NURTURE_SITE_ORIGINS is
  refused (403); posts without one (a server) are taken. Origins compare as `engine.origins`
  spells them: `https://www.example.com:443` is `https://www.example.com`. Answers to a site
  origin carry CORS headers, and `OPTIONS` answers its preflight (a JSON post), so a site's
  script can read them.
- Each client address may post QUOTA: a form a second in bursts of 10 (429, Retry-After).
- The visitor the snippet stamps into `nurture_visitor` is identified as the lead, so its
  page views so far join the lead, in time order, before the form's own event.
- The confirmation link opens a page with one button; only its POST confirms, so link scanners
  that open every link in an email never confirm on the person's behalf (as for unsubscribe).
"""

from __future__ import annotations

import html
import json
import logging
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from engine.app import App
from engine.delivery.confirmation import send_confirmation
from engine.delivery.pacing import Pacer
from engine.errors import InvalidLeadError
from engine.funnel.consents import Where, ask, confirm, read_confirm_token, withheld
from engine.funnel.lead_fields import normalise_email, normalise_phone, storable
from engine.funnel.visitors import FORM, Hit, take
from engine.http.public import client_address, cors, names_one_of, site_origin
from engine.http.routes import FollowUps, Workers
from engine.http.throttle import Quota, limiter, throttle
from engine.http.tracking import VISITOR
from engine.models import ConsentStatus
from engine.origins import origin
from engine.signing import InvalidTokenError, sign, unsign
from engine.workflow.forms import (
    CONSENT_FIELD,
    HONEYPOT,
    PAGE_FIELD,
    RENDERED_FIELD,
    VISITOR_FIELD,
)
from engine.workflow.spec import FieldType, Form

log = logging.getLogger(__name__)

QUOTA = Quota(rate=1.0, burst=10)  # form posts per second per client address, and at once
MIN_FILL = timedelta(seconds=3)  # faster than a person fills a form
MAX_FILL = timedelta(days=1)  # a hosted form's render time is good this long
_VISITOR = re.compile(VISITOR)
_YES = frozenset({"on", "true", "1", "yes"})
_TOO_FAST = "That was quick. Please check the form and send it again."


def _html(description: str) -> dict[str, Any]:
    return {"content": {"text/html": {}}, "description": description}


_DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}}


def _error(description: str) -> dict[str, Any]:
    """A JSON error (`{"detail": ...}`): the pages are HTML, their errors are not."""
    return {"content": {"application/json": {"schema": _DETAIL}}, "description": description}


_NO_FORM = _error("No such form in forms.yml")
_PAGE: dict[int | str, dict[str, Any]] = {200: _html("The form"), 404: _NO_FORM}
_CONFIRM: dict[int | str, dict[str, Any]] = {
    200: _html("A page saying what the link does or did"),
    404: _html("The link is forged, altered or expired, or its lead was erased"),
}
_PREFLIGHT: dict[int | str, dict[str, Any]] = {
    204: {"description": "CORS preflight allowed"},
    403: _error("The Origin is not one of NURTURE_SITE_ORIGINS"),
    404: _NO_FORM,
}
_SUBMIT: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/json": {}, "text/html": {}},
        "description": "JSON posts: taken (the same answer whether the address was known)",
    },
    303: {"description": "Form posts: taken; to the form's redirect or its thanks page"},
    403: _error("The Origin is neither nurture's own nor one of NURTURE_SITE_ORIGINS"),
    404: _NO_FORM,
    422: {
        "content": {"application/json": {}, "text/html": {}},
        "description": "Per-field errors: JSON {errors: {field: message}}, or the form again",
    },
    429: _error("Too many posts from this address; Retry-After says when to post again"),
}
_FIELDS = {"type": "object", "additionalProperties": {"type": "string"}}
_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": _FIELDS},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


@runtime_checkable
class Confirmations(Protocol):
    """Workers that send confirmation emails (`engine.runner.actors.Tasks`)."""

    def confirm_later(self, consent_id: int) -> None:
        """Enqueue the confirmation email of a pending consent."""


def forms_router(
    app: App,
    follow: FollowUps,
    tasks: Workers | None = None,
    pacer: Pacer | None = None,
    quota: Quota = QUOTA,
) -> APIRouter:
    """The hosted forms of forms.yml and the double opt-in confirmation (no API key)."""
    forms = app.rt.workflows.forms  # their confirmation templates checked by `load`
    router = APIRouter(prefix="/f", tags=["forms"])
    sites = frozenset(app.settings.site_origins)
    own = {origin(app.settings.public_url)}
    limit = pacer or limiter(app)
    queue = tasks if isinstance(tasks, Confirmations) else None
    secret = app.settings.secret_key

    def confirmation(consent_id: int) -> None:
        """Hand the email to a worker, or send it here when no worker takes it."""
        if queue is not None:
            try:
                queue.confirm_later(consent_id)
                return
            except Exception:  # noqa: BLE001 - the broker is down: send it from this process
                pass
        try:
            send_confirmation(app, consent_id)
        except Exception as error:  # noqa: BLE001 - the submission is recorded: answer it
            log.warning("confirmation email of consent %s not sent: %s", consent_id, error)

    @router.get("/confirm/{token}", response_class=HTMLResponse, responses=_CONFIRM)
    def confirm_page(token: str) -> HTMLResponse:
        """A page whose button confirms (GET changes nothing: scanners open links)."""
        if _consent_of(secret, token, app.rt.clock.now()) is None:
            return _invalid()
        body = (
            "<p>Please confirm your subscription.</p>"
            '<form method="post"><button type="submit">Yes, subscribe me</button></form>'
        )
        return _document("Confirm your subscription", body)

    @router.post("/confirm/{token}", response_class=HTMLResponse, responses=_CONFIRM)
    async def confirm_consent(token: str, request: Request) -> HTMLResponse:
        """Confirm the consent the link names: email consent on, `email_confirmed` recorded."""
        consent_id = _consent_of(secret, token, app.rt.clock.now())
        if consent_id is None:
            return _invalid()
        where = Where(client_address(request), request.headers.get("user-agent"))

        def handle() -> HTMLResponse:
            with app.sessions.begin() as session:
                done = confirm(session, app.rt, consent_id, where)
            if done is None:
                return _invalid()
            if done.outcome is not None:
                follow.after(done.outcome)
            company = html.escape(app.settings.company_name)
            return _document(
                "You are subscribed", f"<p>Thank you: {company} will keep you posted.</p>"
            )

        return await run_in_threadpool(handle)

    @router.get("/{name}", response_class=HTMLResponse, responses=_PAGE)
    def show(name: str, request: Request) -> HTMLResponse:
        """The form as a small page of its own, to link to or embed in an iframe."""
        form = _form(forms, name)
        visitor = request.query_params.get("visitor", "")
        page = request.query_params.get("page") or request.headers.get("referer", "")
        values = {VISITOR_FIELD: visitor if _VISITOR.fullmatch(visitor) else "", PAGE_FIELD: page}
        return _form_page(form, _render_token(secret, form, app.rt.clock.now()), values, {}, sites)

    @router.get("/{name}/thanks", response_class=HTMLResponse, responses=_PAGE)
    def thanks(name: str) -> HTMLResponse:
        """Where a form without its own redirect sends people."""
        form = _form(forms, name)
        return _document(form.title, f"<p>{html.escape(form.thanks)}</p>")

    @router.options("/{name}", status_code=204, response_class=Response, responses=_PREFLIGHT)
    def preflight(name: str, request: Request) -> Response:
        """CORS preflight of a JSON post from one of NURTURE_SITE_ORIGINS."""
        _form(forms, name)
        headers = cors(site_origin(request, sites)) | {
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        }
        return Response(status_code=204, headers=headers)

    @router.post(
        "/{name}", response_class=HTMLResponse, responses=_SUBMIT, openapi_extra=_SUBMIT_BODY
    )
    async def submit(name: str, request: Request) -> Response:
        """Take a filled form: check it, record its event on the lead, ask for confirmation."""
        form = _form(forms, name)
        header = request.headers.get("origin")
        cors_headers = cors(header) if header and names_one_of(header, sites) else {}
        allowed = own | sites | {origin(str(request.base_url))}
        if header is not None and not names_one_of(header, allowed):
            raise HTTPException(403, f"origin {header[:200]!r} may not post this form")
        values, is_json = await _values(request)
        wants_json = is_json or _prefers_json(request.headers.get("accept", ""))
        client = client_address(request)

        def handle() -> Response:
            try:
                throttle(limit, f"form:{client}", quota, "form posts")
            except HTTPException as error:
                error.headers = {**(error.headers or {}), **cors_headers}
                raise
            if str(values.get(HONEYPOT) or "").strip():
                return _done(form, wants_json, cors_headers)
            now = app.rt.clock.now()
            rendered = str(values.get(RENDERED_FIELD) or "")
            errors: dict[str, str] = {}
            if rendered and not _fill_time_ok(secret, form, rendered, now):
                errors["form"] = _TOO_FAST
            lead, given, field_errors = _check(form, values)
            errors |= field_errors
            if not errors:
                page = str(values.get(PAGE_FIELD) or request.headers.get("referer") or "")
                where = Where(client, request.headers.get("user-agent"), page[:2000] or None)
                try:
                    pending = record(form, lead, given, values, rendered, where)
                except IntegrityError as error:  # an identity another post took meanwhile
                    log.warning("form %s not recorded: %s", form.name, error.orig)
                    return _done(form, wants_json, cors_headers)  # never say whose address it is
                except InvalidLeadError as error:
                    errors[error.field or "form"] = error.reason
                else:
                    if pending is not None:
                        confirmation(pending)
                    return _done(form, wants_json, cors_headers)
            if wants_json:
                return JSONResponse({"errors": errors}, status_code=422, headers=cors_headers)
            token = _render_token(secret, form, now)
            return _form_page(form, token, values, errors, sites, status=422, headers=cors_headers)

        def record(
            form: Form,
            lead: dict[str, Any],
            given: bool,
            values: Mapping[str, Any],
            rendered: str,
            where: Where,
        ) -> int | None:
            """Record the form's event (identifying the visitor) and its consent; the id of a
            consent that waits for its confirmation email."""
            visitor = str(values.get(VISITOR_FIELD) or "")
            properties = {"form": form.name, "title": form.title, **form.properties}
            if where.page_url:
                properties["url"] = where.page_url
            # one submission of one rendering counts once (a double click, a resent post)
            event_id = f"form:{form.name}:{rendered.rsplit('.', 1)[-1]}" if rendered else None
            with app.sessions.begin() as session:
                data = withheld(session, form, lead, given)
                hit = Hit(
                    visitor if _VISITOR.fullmatch(visitor) else None,
                    data,
                    form.event,
                    properties,
                    event_id=event_id,
                    source=FORM,
                )
                taken = take(session, app.rt, [hit])[0]
                assert taken.outcome is not None
                consent = ask(session, app.rt, taken.outcome.lead, form, given, where)
                pending = (
                    consent.id if consent and consent.status == ConsentStatus.PENDING else None
                )
            for outcome in taken.outcomes:
                follow.after(outcome)
            return pending

        return await run_in_threadpool(handle)

    return router


def _form(forms: Mapping[str, Form], name: str) -> Form:
    form = forms.get(name)
    if form is None:
        raise HTTPException(404, f"no form {name[:100]!r} in forms.yml")
    return form


def _prefers_json(accept: str) -> bool:
    return "application/json" in accept and "text/html" not in accept


async def _values(request: Request) -> tuple[dict[str, Any], bool]:
    """The posted fields (the first value of each name) and whether they came as JSON."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise HTTPException(422, f"body: not JSON ({error})") from error
        if not isinstance(data, dict):
            raise HTTPException(422, "body: expected a JSON object of field names and values")
        return data, True
    if kind == "multipart/form-data":
        posted = await request.form()
        fields = [(k, v) for k, v in posted.multi_items() if isinstance(v, str)]
    else:
        fields = parse_qsl(
            (await request.body()).decode("utf-8", "replace"), keep_blank_values=True
        )
    values: dict[str, Any] = {}
    for key, value in fields:
        values.setdefault(key, value)
    return values, False


def _check(form: Form, values: Mapping[str, Any]) -> tuple[dict[str, Any], bool, dict[str, str]]:
    """The lead fields a post fills, whether consent was given, and each field's error."""
    lead: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in form.fields:
        raw = values.get(field.name)
        if isinstance(raw, dict | list):
            errors[field.name] = "expected text"
            continue
        text = "" if raw is None else str(raw).strip()
        if not text:
            if field.required:
                errors[field.name] = f"{field.label} is required"
            continue
        if len(text) > field.max_length:
            errors[field.name] = f"at most {field.max_length} characters"
            continue
        try:
            lead[field.name] = _normalised(field.type, text, field.name)
        except InvalidLeadError:
            errors[field.name] = _INVALID[field.type]
            continue
        if field.type == FieldType.SELECT and text not in field.choices:
            errors[field.name] = f"choose one of {', '.join(field.choices)}"
    if not errors and not {"email", "phone"} & lead.keys():
        first = next(f.name for f in form.fields if f.name in ("email", "phone"))
        errors[first] = "an email address or phone number is required"
    answer = values.get(CONSENT_FIELD)
    given = answer is True or str(answer or "").strip().lower() in _YES
    if form.consent is not None and form.consent.required and not given:
        errors[CONSENT_FIELD] = "please tick the box to agree"
    return lead, given, errors


_INVALID = {
    FieldType.EMAIL: "enter an email address like name@example.com",
    FieldType.TEL: "enter a phone number with its country code, like +14155550123",
    FieldType.TEXT: "contains characters that cannot be stored",
    FieldType.SELECT: "contains characters that cannot be stored",
}


def _normalised(kind: FieldType, text: str, name: str) -> str:
    if kind == FieldType.EMAIL:
        return normalise_email(text, name)
    if kind == FieldType.TEL:
        return normalise_phone(text, name)
    return storable(text, name)


def _render_token(secret: str, form: Form, now: datetime) -> str:
    """The signed time a hosted form was served, with a nonce: one rendering, one submission."""
    fields = [form.name, str(int(now.timestamp())), secrets.token_hex(8)]
    return sign(secret, fields, "form")


def _fill_time_ok(secret: str, form: Form, token: str, now: datetime) -> bool:
    """True when a hosted form came back from a person: signed by us for this form, sent after
    MIN_FILL and within MAX_FILL of being served."""
    try:
        name, served, _ = unsign(secret, token, 3, "form")
    except InvalidTokenError:
        return False
    if name != form.name or not served.isdigit():
        return False
    age = now.timestamp() - int(served)
    return MIN_FILL.total_seconds() <= age <= MAX_FILL.total_seconds()


def _consent_of(secret: str, token: str, now: datetime) -> int | None:
    try:
        return read_confirm_token(secret, token, now)
    except InvalidTokenError:
        return None


def _done(form: Form, wants_json: bool, headers: dict[str, str]) -> Response:
    """The answer to a good submission (and to a bot's: it learns nothing)."""
    if wants_json:
        body = {"ok": True, "message": form.thanks, "redirect": form.redirect}
        return JSONResponse(body, headers=headers)
    target = form.redirect or f"/f/{form.name}/thanks"
    return RedirectResponse(target, status_code=303, headers=headers)


def _invalid() -> HTMLResponse:
    return _document("Link not valid", "<p>This link is not valid, or it has expired.</p>", 404)


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;"
    "color:#1f2937}label{display:block;margin:.8rem 0 .2rem;font-weight:600}"
    "input,select{width:100%;box-sizing:border-box;padding:.5rem;font:inherit;"
    "border:1px solid #9ca3af;border-radius:4px}input[type=checkbox]{width:auto}"
    ".error{color:#b91c1c;font-size:.9rem;margin:.2rem 0}.hp{position:absolute;left:-10000px}"
    "button{margin-top:1rem;padding:.6rem 1.2rem;font:inherit;background:#4338ca;color:#fff;"
    "border:0;border-radius:4px}.consent{display:flex;gap:.5rem;font-weight:400}"
)


def _document(
    title: str,
    body: str,
    status: int = 200,
    frame_ancestors: frozenset[str] = frozenset(),
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A self-contained page (no scripts, no outside resources), never cached."""
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    policy = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'"
    if frame_ancestors:
        policy += "; frame-ancestors 'self' " + " ".join(sorted(frame_ancestors))
    extra = {
        "Cache-Control": "no-store",
        # nothing leaks to other sites; "no-referrer" would make browsers post `Origin: null`
        "Referrer-Policy": "same-origin",
        "Content-Security-Policy": policy,
        **(headers or {}),
    }
    return HTMLResponse(document, status_code=status, headers=extra)


def _form_page(
    form: Form,
    token: str,
    values: Mapping[str, Any],
    errors: Mapping[str, str],
    sites: frozenset[str],
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """The form, every text escaped, with the values given so far and each field's error."""
    esc = html.escape

    def value(name: str) -> str:
        raw = values.get(name)
        return "" if raw is None or isinstance(raw, dict | list) else esc(str(raw))

    def error(name: str) -> str:
        message = errors.get(name)
        return f'<p class="error" id="{esc(name)}-error">{esc(message)}</p>' if message else ""

    parts = [f"<p>{esc(form.description)}</p>"] if form.description else []
    parts.append(error("form"))
    parts.append(f'<form method="post" action="/f/{esc(form.name)}" novalidate>')
    for field in form.fields:
        name, required = esc(field.name), " required" if field.required else ""
        parts.append(f'<label for="{name}">{esc(field.label)}</label>')
        if field.type == FieldType.SELECT:
            chosen = str(values.get(field.name) or "")
            options = "".join(
                f'<option value="{esc(c)}"{" selected" if c == chosen else ""}>{esc(c)}</option>'
                for c in field.choices
            )
            parts.append(
                f'<select id="{name}" name="{name}"{required}><option value=""></option>'
                f"{options}</select>"
            )
        else:
            placeholder = f' placeholder="{esc(field.placeholder)}"' if field.placeholder else ""
            parts.append(
                f'<input id="{name}" name="{name}" type="{field.type}" value="{value(field.name)}"'
                f' maxlength="{field.max_length}"{placeholder}{required}>'
            )
        parts.append(error(field.name))
    if form.consent is not None:
        ticked = " checked" if str(values.get(CONSENT_FIELD) or "").lower() in _YES else ""
        required = " required" if form.consent.required else ""
        parts.append(
            f'<label class="consent"><input type="checkbox" name="{CONSENT_FIELD}" value="yes"'
            f"{ticked}{required}> {esc(form.consent.text)}</label>"
        )
        parts.append(error(CONSENT_FIELD))
    parts.append(
        f'<div class="hp" aria-hidden="true"><label for="{HONEYPOT}">Leave this empty</label>'
        f'<input id="{HONEYPOT}" name="{HONEYPOT}" tabindex="-1" autocomplete="off"></div>'
        f'<input type="hidden" name="{RENDERED_FIELD}" value="{esc(token)}">'
        f'<input type="hidden" name="{VISITOR_FIELD}" value="{value(VISITOR_FIELD)}">'
        f'<input type="hidden" name="{PAGE_FIELD}" value="{value(PAGE_FIELD)}">'
        f'<button type="submit">{esc(form.submit)}</button></form>'
    )
    return _document(form.title, "".join(parts), status, sites, headers)
