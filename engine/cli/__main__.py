"""Run the CLI as `python -m engine.cli`."""

from engine.cli.main import cli

cli()
