"""The config file's YAML, read with bounds: aliases expand to at most ``MAX_NODES`` values, a key set twice
in one mapping is an error, and nothing is built before both are checked.

PyYAML's ``safe_load`` shares the object an alias points at, so nine levels of nine aliases load in
microseconds, but anything that then walks the value (a ``repr`` in an error message, a comparison)
walks 9**9 items: a 600-byte file took gigabytes. The node graph is composed first and its expanded size
counted, each anchored node once (a memo), before a Python object is built. Anchors and merge keys
(``<<: *base``) stay usable: they are how settings are shared. A key that overrides one a merge brought
in is not a duplicate; the same key twice in one mapping is (PyYAML would keep the last silently).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from etl.errors import ConfigError
from etl.files import MAX_CONFIG_BYTES, read_text

MAX_NODES = 100_000  # values in the file with every alias expanded; a real config has a few hundred
MERGE_TAG = "tag:yaml.org,2002:merge"
_PRINTABLE_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,60}")


def read_yaml_file(file: Path) -> dict[Any, Any]:
    """The mapping at the top of the YAML file; ConfigError (exit 2) naming the file for anything else."""
    text = read_text(str(file), where=f"config file {file}", limit=MAX_CONFIG_BYTES)
    try:
        raw = load_bounded(text, where=str(file)) or {}
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        # ValueError: an integer longer than Python converts (4300 digits)
        msg = f"{file}: cannot read YAML: {_clip_yaml_error(exc)}"
        raise ConfigError(msg) from None
    if not isinstance(raw, dict):
        msg = f"{file}: expected a mapping at the top level"
        raise ConfigError(msg)
    return raw


def load_bounded(text: str, *, where: str) -> Any:
    """``yaml.safe_load(text)``, refused (ConfigError naming ``where``) when a key repeats in a mapping or the
    aliases expand to more than MAX_NODES values."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _Expansion(where).size(node, "")
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _Expansion:
    """Counts the values of a node graph with its aliases expanded; checks each mapping's keys on the way."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.sizes: dict[int, int] = {}  # id(node) -> its expanded size; an alias is the same node object
        self.open: set[int] = set()  # nodes being counted: meeting one again is a loop

    def size(self, node: yaml.Node, path: str) -> int:
        known = self.sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in self.open:
            msg = f"{self.where}, line {node.start_mark.line + 1}: an alias refers to a value that holds it"
            raise ConfigError(msg)
        self.open.add(id(node))
        total = 1
        for child, child_path in self._children(node, path):
            total += self.size(child, child_path)
            if total > MAX_NODES:
                msg = (f"{self.where}: more than {MAX_NODES:,} values once its aliases are expanded; "
                       "refused (write the values out, or share fewer of them)")
                raise ConfigError(msg)
        self.open.discard(id(node))
        self.sizes[id(node)] = total
        return total

    def _children(self, node: yaml.Node, path: str) -> list[tuple[yaml.Node, str]]:
        if isinstance(node, yaml.SequenceNode):
            return [(item, path) for item in node.value]
        if not isinstance(node, yaml.MappingNode):
            return []
        seen: dict[tuple[str, str], int] = {}  # (tag, text) of each key -> its line
        children: list[tuple[yaml.Node, str]] = []
        for key, value in node.value:
            name = _key_text(key)
            dotted = f"{path}.{name}" if path else name
            if isinstance(key, yaml.ScalarNode) and key.tag != MERGE_TAG:
                line, ident = key.start_mark.line + 1, (key.tag, key.value)
                if ident in seen:
                    msg = (f"{self.where}, line {line}: {dotted} is set twice in one mapping "
                           f"(first on line {seen[ident]}); remove one")
                    raise ConfigError(msg)
                seen[ident] = line
            children += [(key, dotted), (value, dotted)]
        return children


def _key_text(node: yaml.Node) -> str:
    """A key as written when it is a short plain name; else a clipped repr (never the whole of a long value)."""
    if isinstance(node, yaml.ScalarNode):
        if _PRINTABLE_KEY.fullmatch(node.value):
            return str(node.value)
        text = repr(node.value[:60])
        return text if len(node.value) <= 60 else text[:-1] + "…'"
    return "(a key that is not a name)"


def _clip_yaml_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:299] + "…"
