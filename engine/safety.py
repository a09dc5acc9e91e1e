"""Secrets a production process may start with: strong, not the development one, not a placeholder.

The development secret and the placeholders that shipped in `.env.example` are public (they are
in the source), so an unsubscribe token or a CRM signature made with one can be forged by anyone.
`nurture serve`, `worker`, `scheduler` (and `run` beyond loopback) refuse them, naming the
variable; `nurture init` writes values made by `new_secret` instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from engine.errors import ConfigurationError

MIN_SECRET_LENGTH = 32
# Used when NURTURE_SECRET_KEY is unset, so the local demo and tests need no set-up.
DEV_SECRET = "dev-only-secret-change-me"
# Every value .env.example has ever carried for a secret: copied unchanged, they are public.
PLACEHOLDERS = frozenset(
    {
        DEV_SECRET,
        "change-me-to-a-long-random-string",
        "change-me-to-a-long-random-key",
        "changeme",
        "secret",
    }
)
# The variables that hold our own secrets (provider credentials are the provider's to judge).
SECRET_VARIABLES = ("NURTURE_SECRET_KEY", "NURTURE_CRM_WEBHOOK_SECRET")
API_KEYS_VARIABLE = "NURTURE_API_KEYS"
# Write keys of Segment-spec sources (Segment, RudderStack, Jitsu) posting to /v1/segment.
WRITE_KEYS_VARIABLE = "NURTURE_SEGMENT_WRITE_KEYS"


def new_secret() -> str:
    """A random URL-safe secret of 64 characters (48 bytes from the OS's generator)."""
    return secrets.token_urlsafe(48)


def api_keys_from(environ: Mapping[str, str], variable: str = API_KEYS_VARIABLE) -> list[str]:
    """NURTURE_API_KEYS (or another keys `variable`) split on commas, blanks dropped: several
    keys let one be rotated."""
    return [key.strip() for key in environ.get(variable, "").split(",") if key.strip()]


def weakness(value: str) -> str | None:
    """Why a secret value is unsafe, or None when it is fit for production."""
    if value in PLACEHOLDERS or value.lower().startswith("change-me"):
        return "is a placeholder published in nurture's source"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is {len(value)} characters long; use at least {MIN_SECRET_LENGTH}"
    return None


def unsafe_settings(environ: Mapping[str, str]) -> list[str]:
    """Every unsafe secret in `environ`, one line each naming its variable; empty when safe."""
    problems = []
    if not environ.get("NURTURE_SECRET_KEY"):
        problems.append(
            "NURTURE_SECRET_KEY is not set: the development secret would sign unsubscribe "
            "links anyone can forge"
        )
    for name in SECRET_VARIABLES:
        value = environ.get(name)
        if value and (why := weakness(value)):
            problems.append(f"{name} {why}")
    for variable in (API_KEYS_VARIABLE, WRITE_KEYS_VARIABLE):
        keys = api_keys_from(environ, variable)
        for number, key in enumerate(keys, start=1):
            if why := weakness(key):
                which = f" (key {number} of {len(keys)})" if len(keys) > 1 else ""
                problems.append(f"{variable}{which} {why}")
    return problems


def refuse_unsafe(environ: Mapping[str, str]) -> None:
    """ConfigurationError listing every unsafe secret, with how to make good ones."""
    problems = unsafe_settings(environ)
    if problems:
        advice = (
            "set random values, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            " (`nurture init` writes them into a new project's .env)"
        )
        raise ConfigurationError("; ".join(problems) + f": {advice}")
