"""The `nurture` command: click commands and their terminal output.

The top floor: may import everything; nothing imports it.
"""
