"""smartcar-etl: mirror Smartcar connections into SQL with exact permission history."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("smartcar-etl")  # one source of truth: pyproject.toml, through the package metadata
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
