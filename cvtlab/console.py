"""The rich console that command output goes to (tables), shared by `cli.py` and the sub-commands' printers."""
import sys

from rich.console import Console

# wide enough for the zoo table when output is piped (rich would fall back to 80 columns)
console = Console(width=None if sys.stdout.isatty() else 160)
