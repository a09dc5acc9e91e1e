"""One settings object from the environment, with defaults that run locally with no services."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.contacts import check_region
from engine.errors import ConfigurationError
from engine.models import MergeMode
from engine.origins import origin
from engine.safety import DEV_SECRET

# The Dramatiq queues of a deployment, by the work they carry: workers, the CLI's --queues and
# the API's broker probe all name them from here.
QUEUES = ("events", "journeys", "sends", "handoffs", "maintenance")
DEFAULT_DATABASE_URL = "sqlite:///nurture.db"
HELP_TEXT = "{company}: reply STOP to opt out. Msg&data rates may apply."


@dataclass(frozen=True)
class Settings:
    """Where the database, broker, workflows and templates are; secrets stay in the environment."""

    database_url: str
    redis_url: str | None
    workflows_dir: Path
    templates_dir: Path
    public_url: str
    secret_key: str
    notify_from: str = "nurture@localhost"
    company_name: str = "Acme Analytics"
    postal_address: str = "Acme Analytics, 1 Example Street, Springfield"
    # The answer to an SMS HELP (unless Twilio's Advanced Opt-Out answers keywords itself).
    sms_help_text: str = HELP_TEXT.format(company="Acme Analytics")
    # The websites (scheme://host[:port]) whose pages run the tracking snippet; tracked email
    # links to them carry the lead's signed token so the snippet can identify the visitor.
    site_origins: tuple[str, ...] = ()
    # Leads idle (no activity) for this many months are erased by the scheduler; None keeps all.
    retention_months: int | None = None
    # The country (ISO 3166 code) of phone numbers written the national way, without +.
    default_region: str | None = None
    # One call naming identities of two leads: merge them at once, or list the conflict.
    merge: MergeMode = MergeMode.ASK

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read NURTURE_* variables; unset ones fall back to a local SQLite setup."""
        env = os.environ if environ is None else environ
        company = env.get("NURTURE_COMPANY_NAME") or "Acme Analytics"
        return cls(
            database_url=env.get("NURTURE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("NURTURE_REDIS_URL") or None,
            workflows_dir=Path(env.get("NURTURE_WORKFLOWS") or "workflows"),
            templates_dir=Path(env.get("NURTURE_TEMPLATES") or "templates"),
            public_url=(env.get("NURTURE_PUBLIC_URL") or "http://localhost:8000").rstrip("/"),
            secret_key=env.get("NURTURE_SECRET_KEY") or DEV_SECRET,
            notify_from=env.get("NURTURE_NOTIFY_FROM") or "nurture@localhost",
            company_name=company,
            postal_address=env.get("NURTURE_POSTAL_ADDRESS")
            or "Acme Analytics, 1 Example Street, Springfield",
            sms_help_text=env.get("NURTURE_SMS_HELP_TEXT") or HELP_TEXT.format(company=company),
            site_origins=_origins(env.get("NURTURE_SITE_ORIGINS") or ""),
            retention_months=_months(env.get("NURTURE_RETENTION_MONTHS") or ""),
            default_region=_region(env.get("NURTURE_DEFAULT_REGION") or ""),
            merge=_merge(env.get("NURTURE_MERGE") or "ask"),
        )


def _merge(text: str) -> MergeMode:
    """NURTURE_MERGE: auto or ask."""
    try:
        return MergeMode(text.strip().lower())
    except ValueError:
        raise ConfigurationError(f"NURTURE_MERGE: {text!r} is not auto or ask") from None


def _origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins, each checked to be scheme://host[:port] and stored as
    `engine.origins.origin` spells it, so every comparison with a site is of one spelling."""
    origins = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        site = origin(item, exact=True)
        if site is None:
            raise ConfigurationError(
                f"NURTURE_SITE_ORIGINS: {item!r} is not an origin like https://www.example.com"
            )
        origins.append(site)
    return tuple(origins)


def _region(text: str) -> str | None:
    """A two-letter country code phone numbers know, or None when unset."""
    if not text.strip():
        return None
    try:
        return check_region(text)
    except ValueError as error:
        raise ConfigurationError(f"NURTURE_DEFAULT_REGION: {error}") from error


def _months(text: str) -> int | None:
    """A whole number of months of at least 1, or None when unset."""
    if not text.strip():
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigurationError(
            f"NURTURE_RETENTION_MONTHS: {text!r} is not a whole number of months (1 or more)"
        )
    return int(text)
