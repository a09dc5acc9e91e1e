"""Exception handlers: engine refusals as 4xx, conflicts as 409, validation errors as 422,
and a 405 whose `Allow` names every method of the path; a validation error as one line."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from channels.webhooks import SignatureError
from engine.errors import (
    ConfigurationError,
    InvalidLeadError,
    NurtureError,
    UnknownLeadError,
)
from engine.http.schemas import EVENTS_PATH, EVENTS_TAGS

log = logging.getLogger(__name__)

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_STATUS: dict[type[NurtureError], int] = {
    UnknownLeadError: 404,
    SignatureError: 403,
    ConfigurationError: 503,
}


def _nurture_error(request: Request, error: Exception) -> Response:
    """Refusals as 4xx: unknown lead 404, bad lead data 422, bad signature 403, the rest 400."""
    status = next((s for kind, s in _STATUS.items() if isinstance(error, kind)), None)
    if status is None and isinstance(error, InvalidLeadError):
        detail = [{"loc": ["body"], "msg": str(error), "type": "invalid_lead"}]
        return JSONResponse({"detail": detail}, status_code=422)
    return JSONResponse({"detail": str(error)}, status_code=status or 400)


def _conflict(request: Request, error: Exception) -> Response:
    """A unique value (email, phone, external_id) that belongs to another lead."""
    log.info("conflict: %s", error)
    detail = "conflicts with another lead: an email, phone or external_id given belongs to it"
    return JSONResponse({"detail": detail}, status_code=409)


async def _validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's 422 without echoing input (it may not even be JSON: NaN), union tags untold."""
    assert isinstance(error, RequestValidationError)
    errors = []
    for item in error.errors():
        loc = tuple(item.get("loc", ()))
        if request.url.path == EVENTS_PATH and loc[:1] == ("body",) and loc[1:2] in EVENTS_TAGS:
            loc = (loc[0], *loc[2:])
        errors.append({"type": item["type"], "loc": loc, "msg": item["msg"]})
    return await request_validation_exception_handler(request, RequestValidationError(errors))


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's answer, but a 405 names every method the path serves in `Allow`.

    Starlette answers a 405 from the first route whose path matched, so a path served by two
    routes (GET and POST of /u/{token}) would name one method only: ask every route instead.
    """
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]
        allowed = [
            method
            for method in _METHODS
            if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
        ]
        if allowed:
            headers = {**(error.headers or {}), "Allow": ", ".join(allowed)}
            error = HTTPException(405, error.detail, headers=headers)
    return await http_exception_handler(request, error)


def invalid(loc: Sequence[str | int], message: str) -> RequestValidationError:
    """A 422 for a value only the endpoint can judge, shaped like FastAPI's own."""
    return RequestValidationError([{"loc": tuple(loc), "msg": message, "type": "value_error"}])


def field_path(path: Sequence[Any]) -> str:
    """A place in a body as people write it: batch[3].timestamp."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def first_error(errors: Sequence[Mapping[str, Any]], skip: int = 0, whole: str = "body") -> str:
    """The first of pydantic's errors as one line, `field.path: message`, for the endpoints that
    answer one: its path less the first `skip` parts, `whole` when it is about the whole."""
    first = errors[0]
    return f"{field_path(tuple(first['loc'])[skip:]) or whole}: {first['msg']}"


def install_error_handlers(api: FastAPI) -> None:
    """Answer engine refusals, unique-value conflicts and validation errors as above."""
    api.add_exception_handler(NurtureError, _nurture_error)
    api.add_exception_handler(IntegrityError, _conflict)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(HTTPException, _http_error)
