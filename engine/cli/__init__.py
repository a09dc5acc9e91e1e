"""The `nurture` command: click commands and their terminal output.

The top floor: may import everything; nothing imports it.
"""

from engine.cli.main import main

__all__ = ["main"]
