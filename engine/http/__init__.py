"""The FastAPI app: schemas, validators, auth, limits, routes, webhooks, unsubscribe pages.

May import: runner, read, app and everything below. Imported only by the CLI.
"""
