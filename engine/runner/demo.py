"""Synthetic leads for `nurture demo`: hot, warm, cold and slipping personas over two months.

A share of each persona finds the website first: it browses as an anonymous visitor (page
views the snippet would send), and a hosted form names it; its later page views come from the
same browser. A few visitors browse and never fill a form. The simulation sends these through
`funnel.visitors.take`, as `/t/collect` and the forms endpoint do, so the demo's leads show
their anonymous history joined to them, scored once.
"""

from __future__ import annotations

import random
import uuid
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
# Every INTERNATIONAL_EVERY-th lead is one of these people, named in their own script, with a
# national number (read in its country) and an address on an internationalised domain.
INTERNATIONAL = [  # first, last, mailbox, domain, number as written, country, zone
    ("Zofia", "Wójcik", "zofia.wojcik", "wiśniowy.test", "512 {n:06d}", "PL", None),
    ("Дмитрий", "Соколов", "dmitry", "сталь.test", "8 912 {n:07d}", "RU", "Europe/Moscow"),
    ("Søren", "Bækgaard", "soren.baekgaard", "blåbær.test", "+45 20 {n:06d}", "DK", None),
    ("Łukasz", "Dąbrowski", "lukasz.dabrowski", "gdańsk.test", "601 {n:06d}", "PL", None),
]
INTERNATIONAL_EVERY = 25
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
SITE = "https://acme.test"
PAGES = {
    "/": "Acme: analytics for marketing teams",
    "/blog/attribution-101": "Attribution 101",
    "/blog/benchmarks-2026": "What 400 teams spend on marketing",
    "/features": "Features",
    "/customers": "Customers",
    "/pricing": "Pricing",
}
READING = ["/", "/blog/attribution-101", "/blog/benchmarks-2026", "/features", "/customers"]
REFERRERS = [
    "",
    "https://www.google.com/",
    "https://www.linkedin.com/",
    "https://news.ycombinator.com/",
]
# The share of each persona that browses the site before a form names it (the others arrive
# by other paths: an import, another tool's events); cold ones read, the others also price.
ON_SITE = {"hot": 0.7, "warm": 0.6, "slipping": 0.5, "cold": 0.3}
PRICING_SHARE = {"hot": 0.6, "warm": 0.4, "slipping": 0.5, "cold": 0.0}
BROWSERS = 0.25  # visitors per lead who browse and never fill a form
# The page each of the site's forms sits on (hosted forms record it as `url`).
FORMS = {
    "newsletter": "/blog/attribution-101",
    "report": "/blog/benchmarks-2026",
    "contact": "/customers",
    "demo-request": "/pricing",
}


@dataclass(frozen=True)
class Persona:
    """How one synthetic lead behaves: who it is and what it does when."""

    kind: str
    lead: dict[str, Any]  # empty for a visitor who never fills a form
    events: list[ScriptedEvent]
    visitor: str | None = None  # its browser's anonymous id, when it comes through the site


def lead_of(rng: random.Random, index: int, kind: str) -> dict[str, Any]:
    """Who one synthetic lead is: drawn from `rng`, or one of the international people."""
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
        "phone": f"+1415{2_000_000 + index:07d}" if rng.random() < 0.5 else None,
        "sms_consent": rng.random() < 0.4,
    } | _international(index)


def _international(index: int) -> dict[str, Any]:
    """Who an international lead is instead, drawn without the random stream (so every other
    lead stays the same); nothing for the others."""
    if index % INTERNATIONAL_EVERY != INTERNATIONAL_EVERY - 1:
        return {}
    n = index // INTERNATIONAL_EVERY
    first, last, local, domain, phone, country, zone = INTERNATIONAL[n % len(INTERNATIONAL)]
    return {
        "email": f"{local}.{index}@{domain}",
        "first_name": first,
        "last_name": last,
        "phone": phone.format(n=100_000 + n),  # read in the lead's country
        "country": country,
        "timezone": zone,  # None: the number's area tells it
    }


def persona(rng: random.Random, index: int, start: datetime) -> Persona:
    """One lead and its scripted behaviour, drawn from the persona mix; for a share of each
    kind (ON_SITE), what it does on the website comes from one anonymous browser."""
    kind = rng.choices([k for k, _ in PERSONAS], [w for _, w in PERSONAS])[0]
    lead = {k: v for k, v in lead_of(rng, index, kind).items() if v is not None}
    first = start + timedelta(days=rng.uniform(0, 20), hours=rng.uniform(0, 10))
    site = _visitor_id(rng) if rng.random() < ON_SITE[kind] else None
    events: list[ScriptedEvent] = []

    def at(days: float, event: str, of: str | None = None, **properties: Any) -> None:
        events.append(ScriptedEvent(first + timedelta(days=days), lead, event, properties, of))

    def form(days: float, event: str, name: str, **properties: Any) -> None:
        """A form fill: on the site a hosted form names the visitor, else the event as sent."""
        if site is None:
            at(days, event, **properties)
        else:
            when = first + timedelta(days=days)
            filled = {"form": name, "url": f"{SITE}{FORMS[name]}", **properties}
            events.append(ScriptedEvent(when, lead, event, filled, None, site))

    def pricing(days: float) -> None:
        if site is None:
            at(days, "page_viewed", url=f"{SITE}/pricing")
        else:
            events.append(_view(rng, site, first + timedelta(days=days), "/pricing"))

    if site is not None:  # browsing in the week before the first form, not before the start
        days_before = min(7.0, (first - start) / timedelta(days=1))
        for _ in range(rng.randint(1, 4)):
            prices = rng.random() < PRICING_SHARE[kind]
            path = "/pricing" if prices else rng.choice(READING)
            events.append(
                _view(rng, site, first - timedelta(days=rng.uniform(0, days_before)), path)
            )
    report = {"title": rng.choice(REPORTS)}
    if kind == "cold":
        form(0, "newsletter_subscribed", "newsletter")
        if rng.random() < 0.3:
            at(rng.uniform(1, 10), "email_opened")
    elif kind == "warm":
        form(0, "content_downloaded", "report", **report)
        at(rng.uniform(0.5, 2), "email_opened", of="welcome")
        at(rng.uniform(2, 4), "email_clicked", of="welcome", url=f"{SITE}/blog")
        if rng.random() < 0.6:
            pricing(rng.uniform(4, 8))
        if rng.random() < 0.3:
            at(rng.uniform(9, 15), "email_clicked", of="pricing_guide")
    elif kind == "slipping":
        form(0, "form_submitted", "contact")
        at(rng.uniform(0.2, 1), "content_downloaded", **report)
        pricing(rng.uniform(1, 3))
        if rng.random() < 0.35:  # wakes up again when re-engaged
            at(rng.uniform(40, 50), "email_clicked", of="win_back", url=f"{SITE}/new")
            pricing(rng.uniform(50, 52))
    else:  # hot
        form(0, "content_downloaded", "report", **report)
        at(rng.uniform(0.2, 2), "email_clicked", of="welcome", url=f"{SITE}/case-study")
        pricing(rng.uniform(2, 5))
        form(rng.uniform(5, 12), "demo_requested", "demo-request")
    return Persona(kind, lead, events, site)


def browser(rng: random.Random, start: datetime) -> Persona:
    """A visitor who reads a few pages over some days and never fills a form."""
    visitor = _visitor_id(rng)
    first = start + timedelta(days=rng.uniform(0, 30))
    events = [
        _view(rng, visitor, first + timedelta(days=rng.uniform(0, 5)), rng.choice(list(PAGES)))
        for _ in range(rng.randint(1, 3))
    ]
    return Persona("browser", {}, events, visitor)


def crowd(rng: random.Random, count: int, start: datetime) -> list[Persona]:
    """`count` leads, then the visitors who never fill a form (BROWSERS per lead)."""
    leads = [persona(rng, index, start) for index in range(count)]
    return leads + [browser(rng, start) for _ in range(round(count * BROWSERS))]


def _visitor_id(rng: random.Random) -> str:
    """An anonymous id as the snippet's cookie holds one, drawn from the seed."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _view(rng: random.Random, visitor: str, when: datetime, path: str) -> ScriptedEvent:
    """A page view as the snippet sends it: url, path, title and referrer, no lead named."""
    properties = {
        "url": f"{SITE}{path}",
        "path": path,
        "title": PAGES[path],
        "referrer": rng.choice(REFERRERS),
    }
    return ScriptedEvent(when, {}, "page_viewed", properties, None, visitor)
