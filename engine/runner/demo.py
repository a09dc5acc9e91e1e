"""Synthetic leads for `nurture demo`: hot, warm, cold and slipping personas over two months."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from engine.runner.simulation import ScriptedEvent

FIRST = [
    "Ana",
    "Ben",
    "Chen",
    "Dana",
    "Eli",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
    "Mateo",
    "Nia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
    "Uma",
    "Viktor",
]
LAST = ["Okafor", "Schmidt", "Tanaka", "Silva", "Novak", "Haddad", "Larsen", "Moreau", "Rossi"]
COMPANIES = [
    "Initech",
    "Globex",
    "Umbrella",
    "Hooli",
    "Stark",
    "Wayne",
    "Acme Corp",
    "Vandelay",
    "Soylent",
    "Cyberdyne",
    "Tyrell",
    "Wonka",
    "Aperture",
    "Massive Dynamic",
]
TITLES = [
    "VP Marketing",
    "Head of Growth",
    "Marketing Manager",
    "Director of Sales",
    "Analyst",
    "CTO",
    "Founder",
    "Marketing Coordinator",
    "Student",
]
INDUSTRIES = ["software", "saas", "fintech", "retail", "e-commerce", "education", "marketing"]
ZONES = [
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Singapore",
]
REPORTS = ["The 2026 Benchmark Report", "Attribution Playbook", "Dashboard Templates"]
PERSONAS = (("hot", 0.12), ("warm", 0.33), ("slipping", 0.2), ("cold", 0.35))


@dataclass(frozen=True)
class Persona:
    """How one synthetic lead behaves: who it is and what it does when."""

    kind: str
    lead: dict[str, Any]
    events: list[ScriptedEvent]


def _lead(rng: random.Random, index: int, kind: str) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    company = rng.choice(COMPANIES)
    domain = (
        "gmail.com"
        if kind == "cold" and rng.random() < 0.4
        else f"{company.lower().replace(' ', '')}.test"
    )
    senior = kind == "hot" or rng.random() < 0.3
    return {
        "email": f"{first.lower()}.{last.lower()}.{index}@{domain}",
        "first_name": first,
        "last_name": last,
        "company": company,
        "title": rng.choice(TITLES[:4] if senior else TITLES[4:]),
        "timezone": rng.choice(ZONES),
        "company_size": rng.choice([12, 40, 80, 250, 1200]) if kind != "cold" else 8,
        "industry": rng.choice(INDUSTRIES),
        "phone": f"+1555{index:07d}" if rng.random() < 0.5 else None,
        "sms_consent": rng.random() < 0.4,
    }


def persona(rng: random.Random, index: int, start: datetime) -> Persona:
    """One lead and its scripted behaviour, drawn from the persona mix."""
    kind = rng.choices([k for k, _ in PERSONAS], [w for _, w in PERSONAS])[0]
    lead = {k: v for k, v in _lead(rng, index, kind).items() if v is not None}
    first = start + timedelta(days=rng.uniform(0, 20), hours=rng.uniform(0, 10))
    events: list[ScriptedEvent] = []

    def at(days: float, event: str, of: str | None = None, **properties: Any) -> None:
        events.append(ScriptedEvent(first + timedelta(days=days), lead, event, properties, of))

    report = {"title": rng.choice(REPORTS)}
    if kind == "cold":
        at(0, "newsletter_subscribed")
        if rng.random() < 0.3:
            at(rng.uniform(1, 10), "email_opened")
    elif kind == "warm":
        at(0, "content_downloaded", **report)
        at(rng.uniform(0.5, 2), "email_opened", of="welcome")
        at(rng.uniform(2, 4), "email_clicked", of="welcome", url="https://acme.test/blog")
        if rng.random() < 0.6:
            at(rng.uniform(4, 8), "page_viewed", url="https://acme.test/pricing")
        if rng.random() < 0.3:
            at(rng.uniform(9, 15), "email_clicked", of="pricing_guide")
    elif kind == "slipping":
        at(0, "form_submitted")
        at(rng.uniform(0.2, 1), "content_downloaded", **report)
        at(rng.uniform(1, 3), "page_viewed", url="https://acme.test/pricing")
        if rng.random() < 0.35:  # wakes up again when re-engaged
            at(rng.uniform(40, 50), "email_clicked", of="win_back", url="https://acme.test/new")
            at(rng.uniform(50, 52), "page_viewed", url="https://acme.test/pricing")
    else:  # hot
        at(0, "content_downloaded", **report)
        at(rng.uniform(0.2, 2), "email_clicked", of="welcome", url="https://acme.test/case-study")
        at(rng.uniform(2, 5), "page_viewed", url="https://acme.test/pricing")
        at(rng.uniform(5, 12), "demo_requested")
    return Persona(kind, lead, events)
