"""nurture's engine: low floors here, sub-packages by concern above them.

Low floors: errors, clock, origins, contacts, settings, safety, starter, db, models (+ state
enums).
app.py wires one process.
Floors, lowest first: workflow -> funnel -> delivery -> runner, read -> http, cli.
"""
