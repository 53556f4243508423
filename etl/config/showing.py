"""Showing the configuration: ``config show``'s rows, the table of variables in docs/configuration.md, values
as people write them."""

from __future__ import annotations

from typing import Any

from etl.config.loading import DEFAULT, FILE
from etl.config.parsers import span
from etl.config.schema import KEYS, SCHEMA, Config, Key


def _value(config: Config, key: Key) -> Any:
    found = SCHEMA.section(key.section)
    holder = config if found is None or found.cls is None else getattr(config, key.section)  # database.url
    if key.secret_file:
        return getattr(holder, key.key)  # the file's name, not the secret
    return getattr(holder, key.attr)


def effective_settings(config: Config) -> list[dict[str, Any]]:
    """Every setting's effective value and where it came from, for ``config show``; secrets as set or unset.

    Each row: ``key`` (dotted), ``value``, ``source`` (default, file, environment, option) and ``origin``
    (the variable or option that set it, or the config file).
    """
    rows = []
    for key in KEYS:
        rows.append(_row(config, key.dotted, _value(config, key)))
        if key.secret_file:
            dotted = f"{key.section}.{key.attr}"
            secret = getattr(getattr(config, key.section), key.attr)
            rows.append(_row(config, dotted, "set" if secret is not None else "unset"))
    for found in (s for s in SCHEMA.sections if s.many):
        for index, entry in enumerate(getattr(config, found.name)):
            rows += _entry_rows(config, found.keys, f"{found.name}[{index}]", entry)
    return rows


def _entry_rows(config: Config, keys: tuple[Key, ...], at: str, entry: Any) -> list[dict[str, Any]]:
    """The rows of one entry of a list-valued section (``applications[0].client_id``); secrets as set or unset."""
    rows = []
    for key in keys:
        rows.append(_row(config, f"{at}.{key.key}", getattr(entry, key.key if key.secret_file else key.attr)))
        if key.secret_file:
            rows.append(_row(config, f"{at}.{key.attr}", "set" if getattr(entry, key.attr) is not None else "unset"))
    return rows


def _row(config: Config, dotted: str, value: Any) -> dict[str, Any]:
    source, origin = config.sources.get(dotted, (DEFAULT, None))
    if source == FILE:
        origin = config.source
    return {"key": dotted, "value": value, "source": source, "origin": origin}


def variables_table() -> list[str]:
    """The table of environment variables in docs/configuration.md, generated from ``KEYS`` (a test holds it)."""
    lines = ["| variable | key | default | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        shown = "none" if key.default is None else f"`{_default_text(key, key.default)}`"
        names = ", ".join(f"`{name}`" for name in (key.variable, *key.aliases))
        lines.append(f"| {names} | `{key.dotted}` | {shown} | {key.help} |")
    for key in KEYS:
        if key.secret_variable:
            lines.append(f"| `{key.secret_variable}` | (secret) | none | the {key.attr.replace('_', ' ')}; "
                         f"or name a file in `{key.dotted}` |")
    return lines


def setting_text(dotted: str, value: Any) -> str:
    """A setting's value as people write it in the config file: a duration as ``15m``, ``true``, ``null``."""
    key = SCHEMA.key(dotted)
    if value is None:
        return "null"
    return _default_text(key, value) if key is not None else str(value)


def _default_text(key: Key, value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float) and key.is_duration:
        return span(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
