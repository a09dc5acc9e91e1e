"""What leads do and become: identity, facts, scoring, stages, journey; service.py fronts it.

May import: workflow and the low floors. Never delivery, runner, read, http or cli.
"""
