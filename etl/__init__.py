"""smartcar-etl: mirror Smartcar connections into SQL with exact permission history."""

__version__ = "0.1.0"
