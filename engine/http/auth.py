"""Bearer API keys: where they come from, how long they must be, how a request is checked."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.errors import ConfigurationError
from engine.safety import weakness

BEARER = HTTPBearer(auto_error=False, description="An API key from NURTURE_API_KEYS.")


def check_keys(keys: Sequence[str], allow_no_auth: bool) -> None:
    """ConfigurationError for no keys (unless `allow_no_auth`) or for a weak key."""
    if not keys and not allow_no_auth:
        raise ConfigurationError(
            "NURTURE_API_KEYS is not set: the API refuses to run without keys "
            "(allow_no_auth=True is for the local demo only)"
        )
    for key in keys:
        if why := weakness(key):
            raise ConfigurationError(f"an API key in NURTURE_API_KEYS {why}")


def authoriser(keys: Sequence[str]) -> Callable[..., None]:
    """A dependency that accepts a bearer token equal to one of `keys`."""
    encoded = [key.encode() for key in keys]

    def authorise(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        if credentials is None:
            raise HTTPException(
                401,
                "missing API key: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = credentials.credentials.encode()
        # Compare with every key (no short cut), so timing says nothing about which is close.
        matches = [hmac.compare_digest(token, key) for key in encoded]
        if not any(matches):
            raise HTTPException(
                401, "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )

    return authorise
