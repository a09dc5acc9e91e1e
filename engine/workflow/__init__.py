"""The YAML language marketers write: spec, conditions, durations, readers, loading.

May import: engine's low floors (errors, clock). Imported by every floor above.
"""
