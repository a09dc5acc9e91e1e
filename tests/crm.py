"""A CRM webhook receiver for tests: records handoffs, can be told to fail first."""

from __future__ import annotations

import json
from typing import Any

from engine.delivery.handoff import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.channels.servers import FakeProvider, Reply, Request


class CrmReceiver(FakeProvider):
    """Accepts POST /handoffs whose signature checks out; 401 otherwise."""

    def __init__(self, secret: str = "crm-secret") -> None:
        super().__init__()
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.keys: list[str] = []

    @property
    def endpoint(self) -> str:
        """Where nurture should POST handoffs."""
        return f"{self.url}/handoffs"

    def handle(self, request: Request) -> Reply:
        headers = {k.lower(): v for k, v in request.headers.items()}
        expected = sign(self.secret, headers.get(TIMESTAMP_HEADER.lower(), ""), request.body)
        if headers.get(SIGNATURE_HEADER.lower()) != expected:
            return Reply.json(401, {"error": "bad signature"})
        self.received.append(json.loads(request.body))
        self.keys.append(headers.get("idempotency-key", ""))
        return Reply.json(200, {"ok": True})
