"""The command line of smartcar-etl (`smartcar-etl`, `python -m etl`).

Commands live by topic in the modules of this package; importing them attaches
them to the root group ``cli``.
"""

from etl.cli import archive, data, health, reports, runs, tools  # noqa: F401 - they register their commands
from etl.cli.base import cli


def main() -> None:
    """Console script entry point."""
    cli(prog_name="smartcar-etl")


__all__ = ["cli", "main"]
