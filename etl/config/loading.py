"""Loading the configuration: defaults, a YAML file, environment variables and options, each value's source.

Every problem is collected and reported at once, each naming its YAML path (``api.concurrency``,
``applications[1].name``), its environment variable or its option. Secrets are only read from the
environment or from a file the config names.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.config.parsers import check_secret, yaml_name
from etl.config.schema import KEYS, SCHEMA, Config, Key, Schema, Section
from etl.errors import ConfigError
from etl.files import group_or_other_access
from etl.yamlfile import read_yaml_file

DEFAULT_CONFIG_FILE = "config.yaml"
DEFAULT, FILE, ENVIRONMENT, OPTION = "default", "file", "environment", "option"
NUMBER_RE = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
OFF_WORDS = ("off", "none", "null")
# SMARTCAR_ETL_ variables that set the secret itself: refused, and named, so that nobody pastes a secret there.
REFUSED_VARIABLES = {f"SMARTCAR_ETL_{key.section}_{key.attr}".upper(): key for key in KEYS if key.secret_variable}
# SMARTCAR_ETL_ variables that are not config keys but are read (or refused) on purpose.
OTHER_VARIABLES = {"SMARTCAR_ETL_CONFIG", *REFUSED_VARIABLES}


def _from_text(key: Key, text: str) -> Any:
    """An environment variable's text as the config file would hold it; the key's parser judges the result."""
    text = text.strip()
    # 40 digits are more than any range here; int() of thousands would raise instead of the parser naming it
    if key.kind in ("number", "whole") and len(text) <= 40 and NUMBER_RE.fullmatch(text):
        return float(text) if "." in text else int(text)
    if key.kind == "bool" and text.lower() in TRUE_WORDS + FALSE_WORDS:
        return text.lower() in TRUE_WORDS
    return text


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """Pick the config file: --config, else $SMARTCAR_ETL_CONFIG, else ./config.yaml."""
    for where, name in (("--config", explicit), ("SMARTCAR_ETL_CONFIG", env.get("SMARTCAR_ETL_CONFIG"))):
        if name:
            path = Path(name).expanduser()
            if not path.is_file():
                msg = f"{where}: config file {name} does not exist"
                raise ConfigError(msg)
            return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


@dataclass
class _Loading:
    """Values parsed so far (section -> attribute -> value; a list of those for a list-valued section), where
    each came from, and every problem."""

    schema: Schema
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = {s.name: [] if s.many else {} for s in self.schema.sections}

    def set(self, key: Key, value: Any, where: str, source: str, *, entry: int | None = None) -> None:
        """Parse ``value`` for ``key`` (of entry number ``entry`` of a list-valued section; an error names
        ``where``) and record it with its source."""
        parsed = key.parser(where, value, self.errors) if value is not None else None
        if parsed is None and value is not None:
            return
        at = key.section if entry is None else f"{key.section}[{entry}]"
        target = self.values[key.section] if entry is None else self.values[key.section][entry]
        target[key.attr] = parsed
        self.sources[f"{at}.{key.key}"] = (source, where)  # where: the variable, option or dotted key in the file
        if key.secret_file:  # the file's name is no secret; the secret is its content
            target[key.key] = str(value).strip()
            self.sources[f"{at}.{key.attr}"] = (source, where)
            mode = group_or_other_access(str(value).strip())
            if mode is not None:  # as ssh says of a private key; the file's name is not echoed either
                self.warnings.append(f"{where}: the secret's file is open to its group or others (mode "
                                     f"{mode:04o}); chmod 600 it")

    def secret(self, key: Key, variable: str, text: str) -> None:
        """The secret of a ``*_file`` key, given itself in ``variable``."""
        secret = check_secret(variable, text.strip(), self.errors)
        if secret is not None:
            self.values[key.section][key.attr] = secret
            self.sources[f"{key.section}.{key.attr}"] = (ENVIRONMENT, variable)


def _take_file(raw: Mapping[Any, Any], loading: _Loading) -> None:
    errors = loading.errors
    for name, body in raw.items():
        found = loading.schema.section(name)
        if found is None:
            expected = ", ".join(s.name for s in loading.schema.sections)
            errors.append(f"{yaml_name(name)}: unknown section (expected one of {expected})")
        elif body is None:
            continue
        elif found.many:
            _take_entries(found, body, loading)
        elif not isinstance(body, dict):
            errors.append(f"{name}: expected a mapping")
        else:
            _take_keys(found, body, loading)


def _take_keys(found: Section, body: Mapping[Any, Any], loading: _Loading, entry: int | None = None) -> None:
    """The keys of one section, or of entry number ``entry`` of a list-valued one."""
    at = found.name if entry is None else f"{found.name}[{entry}]"
    secrets = {key.attr: key for key in found.keys if key.secret_file}
    for name, value in body.items():
        key = found.key(name)
        if name in secrets:
            loading.errors.append(f"{at}.{name}: secrets are not read from the config file; set "
                                  f"the environment variable or {at}.{secrets[name].key}")
        elif key is None:
            loading.errors.append(f"{at}.{yaml_name(name)}: unknown key")
        elif value is not None or key.nullable:  # null: the default, unless null means off
            loading.set(key, value, f"{at}.{key.key}", FILE, entry=entry)


def _take_entries(found: Section, body: Any, loading: _Loading) -> None:
    """A list-valued section: each entry a mapping of the section's keys; required keys must be there."""
    if not isinstance(body, list):
        loading.errors.append(f"{found.name}: expected a list of entries")
        return
    for index, item in enumerate(body):
        loading.values[found.name].append({})
        if not isinstance(item, dict):
            loading.errors.append(f"{found.name}[{index}]: expected a mapping")
            continue
        item = _flattened(item, f"{found.name}[{index}]", loading.errors)
        _take_keys(found, item, loading, index)
        for key in found.keys:
            if key.required and item.get(key.key) is None:
                loading.errors.append(f"{found.name}[{index}].{key.key}: required")


def _flattened(item: Mapping[Any, Any], at: str, errors: list[str]) -> dict[Any, Any]:
    """An entry's nested mappings (``rate_limit: {capacity: 120}``) as dotted keys (``rate_limit.capacity``)."""
    flat: dict[Any, Any] = {}
    for name, value in item.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{inner}": v for inner, v in value.items()})
        else:
            flat[name] = value
            if name == "rate_limit":
                errors.append(f"{at}.rate_limit: expected a mapping (capacity, per_minute)")
    return flat


def entry_variable(section: Section, key: Key, name: str) -> str:
    """The variable that sets ``key`` of the entry named ``name``: ``SMARTCAR_ETL_APPLICATIONS_EU_WEST_CLIENT_ID``."""
    return f"SMARTCAR_ETL_{section.name}_{name.replace('-', '_')}_{key.key.replace('.', '_')}".upper()


def _entry_of(found: Section, variable: str) -> tuple[str, Key] | None:
    """(entry name, key) that ``variable`` sets in a list-valued section, or None; the longest key wins."""
    prefix = f"SMARTCAR_ETL_{found.name}_".upper()
    if not variable.startswith(prefix):
        return None
    rest = variable[len(prefix):]
    for key in sorted((k for k in found.keys if not k.required), key=lambda k: -len(k.key)):
        suffix = "_" + key.key.replace(".", "_").upper()
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return rest[: -len(suffix)].lower().replace("_", "-"), key
    return None


def _take_entry_environment(env: Mapping[str, str], loading: _Loading) -> None:
    """``SMARTCAR_ETL_<SECTION>_<NAME>_<KEY>``: a key of the entry named NAME (created if the file has none)."""
    for found in (s for s in loading.schema.sections if s.many):
        prefix = f"SMARTCAR_ETL_{found.name}_".upper()
        for variable in sorted(v for v in env if v.startswith(prefix) and env[v].strip()):
            parsed = _entry_of(found, variable)
            if parsed is None:
                names = ", ".join(k.key.replace(".", "_").upper() for k in found.keys if not k.required)
                loading.errors.append(f"{variable}: not a key of an entry of {found.name} (expected "
                                      f"{prefix}<NAME>_<KEY>, KEY one of {names})")
                continue
            name, key = parsed
            entries = loading.values[found.name]
            index = next((i for i, v in enumerate(entries) if v.get("name") == name), None)
            if index is None:
                entries.append({})
                index = len(entries) - 1
                loading.set(found.key("name"), name, variable, ENVIRONMENT, entry=index)  # type: ignore[arg-type]
            loading.set(key, _from_text(key, env[variable]), variable, ENVIRONMENT, entry=index)


def _take_environment(env: Mapping[str, str], loading: _Loading) -> None:
    for key in loading.schema.keys:
        given = {name: env[name] for name in (key.variable, *key.aliases) if env.get(name, "").strip()}
        if len({text.strip() for text in given.values()}) > 1:
            loading.errors.append(f"{' and '.join(given)} are both set and differ (they are the same setting, "
                                  f"{key.dotted}): unset one")
        elif given:
            name, text = next(iter(given.items()))
            off = key.nullable and text.strip().lower() in OFF_WORDS
            loading.set(key, None if off else _from_text(key, text), name, ENVIRONMENT)
    for key in loading.schema.keys:
        if key.secret_variable and env.get(key.secret_variable, "").strip():
            loading.secret(key, key.secret_variable, env[key.secret_variable])
    for variable, key in REFUSED_VARIABLES.items():
        if env.get(variable):  # never echoed: it holds a secret
            loading.errors.append(f"{variable}: secrets are read from {key.secret_variable} or "
                                  f"{key.variable}, not from this variable")
    _take_entry_environment(env, loading)
    _secrets_from_variables(env, loading)


def _secrets_from_variables(env: Mapping[str, str], loading: _Loading) -> None:
    """An entry's ``client_secret_variable``: the secret is that variable's value (never echoed)."""
    for found in (s for s in loading.schema.sections if s.many):
        for index, values in enumerate(loading.values[found.name]):
            variable = values.get("client_secret_variable")
            if variable is None:
                continue
            where = f"{found.name}[{index}].client_secret_variable"
            if not env.get(variable, "").strip():  # its name is not echoed: it may be the secret, put there by mistake
                loading.errors.append(f"{where}: the environment variable it names is not set")
                continue
            secret = check_secret(variable, env[variable].strip(), loading.errors)
            if secret is not None:
                values["client_secret"] = secret
                loading.sources[f"{found.name}[{index}].client_secret"] = (ENVIRONMENT, variable)


def _assemble(loading: _Loading) -> Any:
    """The root object from what was parsed (defaults for the rest); each section's own problems appended."""
    fields: dict[str, Any] = {}
    checked: list[tuple[str, Any]] = []
    for found in loading.schema.sections:
        values = loading.values[found.name]
        if found.cls is None:
            fields.update(values)
        elif found.many:  # an entry without its required keys is left out: its error is already recorded
            built = [(i, found.cls(**v)) for i, v in enumerate(values)
                     if all(key.attr in v for key in found.keys if key.required)]
            fields[found.name] = tuple(entry for _, entry in built)
            checked += [(f"{found.name}[{i}]", entry) for i, entry in built]
        else:
            fields[found.name] = found.cls(**values)
            checked.append((found.name, fields[found.name]))
    for where, part in checked:
        if hasattr(part, "problems"):
            loading.errors.extend(part.problems(where))
    return loading.schema.root(**fields)


def build(schema: Schema, *, raw: Mapping[Any, Any] | None, env: Mapping[str, str],
          overrides: Mapping[str, Any] | None = None, option_names: Mapping[str, str] | None = None,
          ) -> tuple[Any, _Loading]:
    """An instance of ``schema.root`` from the file's mapping, the environment and options (the last wins);
    raise ConfigError listing all problems."""
    loading = _Loading(schema)
    if raw is not None:
        _take_file(raw, loading)
    _take_environment(env, loading)
    for dotted, value in (overrides or {}).items():
        key = schema.key(dotted)
        if value is not None and key is not None:
            loading.set(key, value, (option_names or {}).get(dotted, dotted), OPTION)
    root = _assemble(loading)
    if hasattr(root, "problems"):
        loading.errors.extend(root.problems(loading.sources))
    if loading.errors:
        raise ConfigError(loading.errors)
    return root, loading


def load_config(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    option_names: Mapping[str, str] | None = None,
) -> Config:
    """Build the config from defaults, a YAML file, the environment and options, in that order of precedence
    (the last wins); raise ConfigError listing all problems.

    ``overrides`` maps dotted keys (``logging.level``) to values from the command line; ``option_names``
    names their options (``--log-level``) for error messages and ``config show``.
    """
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    raw = read_yaml_file(file) if file is not None else None
    config: Config
    config, loading = build(SCHEMA, raw=raw, env=env, overrides=overrides, option_names=option_names)
    return dataclasses.replace(config, source=str(file) if file else "built-in defaults", sources=loading.sources,
                               warnings=tuple(loading.warnings))


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """``SMARTCAR_ETL_*`` variables that set nothing (a typo?), each with the nearest real name.

    Not an error: a Kubernetes Service named smartcar-etl puts ``SMARTCAR_ETL_SERVICE_HOST`` and the
    like into every pod of its namespace.
    """
    import difflib

    known = {name for key in KEYS for name in (key.variable, *key.aliases)} | OTHER_VARIABLES
    lists = [s for s in SCHEMA.sections if s.many]
    found = []
    for name in sorted(env):
        if name.startswith("SMARTCAR_ETL_") and name not in known and not any(_entry_of(s, name) for s in lists):
            near = difflib.get_close_matches(name, sorted(known), n=1)
            found.append(yaml_name(name) + (f" (did you mean {near[0]}?)" if near else ""))
    return found

