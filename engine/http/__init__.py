"""The FastAPI app: schemas, validators, auth, limits, routes, webhooks, unsubscribe pages.

May import: runner, read, app and everything below. Imported only by the CLI.
"""

from __future__ import annotations

from engine.http.api import create_api

__all__ = ["create_api"]
