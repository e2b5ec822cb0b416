"""Config files: parse YAML or JSON once, keeping the line of every key, and find the configs plugins ship.

This module knows files only: validation lives in `omnimm.configbase` and `omnimm.config`. Where a plugin's package
is on disk is known to the plugin layer, which installs that lookup here when it is imported
(`use_plugin_folders`), so `plugin:name` paths work wherever `omnimm.config` or `omnimm.registry` is imported.

A file is refused before it can cost much: it must be printable UTF-8 of at most `MAX_CONFIG_BYTES`, nested at most
`MAX_NESTING` levels, and hold at most `MAX_NODES` keys and values once every YAML alias is expanded (so an alias
bomb of a few hundred bytes fails at once instead of expanding to a billion nodes); an alias may not point into the
node that contains it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnimm.errors import ConfigError, ConfigIssue, format_loc

Positions = dict[tuple[Any, ...], int]
"""Maps a field path (as a pydantic `loc` tuple) to its 1-based line in the source file."""

PluginFolder = Callable[[str], Path | None]
"""Given a plugin's name, the folder of its package (None when no such plugin is loaded)."""

MAX_CONFIG_BYTES = 1024 * 1024
"""Largest config file read (1 MiB): real configs are a few KB, and the YAML parser takes about 1 s per MiB."""
MAX_NESTING = 100
"""Deepest nesting of mappings and lists (aliases expanded); real configs nest under 10."""
MAX_NODES = 100_000
"""Most keys, items and scalars in a file once every YAML alias is expanded; real configs hold a few hundred."""

_YAML_SUFFIXES = (".yaml", ".yml")
_PACKAGED = re.compile(r"^(?P<plugin>[A-Za-z0-9_.-]+):(?P<name>[A-Za-z0-9_./-]+)$")

# What YAML 1.1 calls printable (tab, newlines, everything from space up but DEL, C1 controls, surrogates, U+FFFE/F);
# applied to JSON too: a control character in a config file is never meant.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

_plugin_folder: PluginFolder | None = None


class _Refused(Exception):
    """A file that parses, but past a limit or with a value that cannot be read; becomes one `ConfigIssue`."""

    def __init__(self, message: str, line: int | None, kind: str) -> None:
        super().__init__(message)
        self.issue = ConfigIssue("", message, line=line, kind=kind)


def use_plugin_folders(find: PluginFolder | None) -> None:
    """Install how `plugin:name` paths find a plugin's package (the plugin layer does it when imported)."""
    global _plugin_folder
    _plugin_folder = find


def read_config_file(path: str | os.PathLike[str]) -> tuple[Any, Positions]:
    """Parse a YAML or JSON file; return the data and, for YAML, the line of every key and list item.

    Raises `ConfigError` for a syntax error or a duplicated key (with lines), `FileNotFoundError` if the
    file is missing.
    """
    file = resolve_config_path(path)
    suffix = file.suffix.lower()
    if suffix not in (*_YAML_SUFFIXES, ".json"):
        raise ConfigError(
            [ConfigIssue("", f"unsupported config file type '{suffix or file.name}' (use .yaml, .yml or .json)")],
            source=str(file),
        )
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}")
    text = _read_text(file)
    try:
        if suffix == ".json":
            return _parse_json(text, str(file)), {}
        return _parse_yaml(text, str(file))
    except _Refused as refused:
        raise ConfigError([refused.issue], source=str(file)) from None


def _read_text(file: Path) -> str:
    """The file's text: at most `MAX_CONFIG_BYTES` of printable UTF-8 (a leading byte order mark is dropped)."""
    with file.open("rb") as stream:
        raw = stream.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file claims to be
    if len(raw) > MAX_CONFIG_BYTES:
        size = max(file.stat().st_size, len(raw))
        message = f"file is too large ({size} bytes; config files are limited to {MAX_CONFIG_BYTES / 2**20:g} MiB)"
        raise ConfigError([ConfigIssue("", message, kind="too_large")], source=str(file))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        if raw.startswith(_UTF16_BOMS):
            problem = "UTF-16 text (save it as UTF-8)"
        else:
            problem = f"not UTF-8 text: byte 0x{raw[error.start]:02x} at offset {error.start}"
        raise ConfigError([ConfigIssue("", problem, line=line, kind="encoding")], source=str(file)) from None
    text = text.removeprefix("\ufeff")
    bad = _UNPRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        message = (
            f"control character U+{ord(bad.group()):04X} at column {column} (config files hold printable text only)"
        )
        raise ConfigError([ConfigIssue("", message, line=line, kind="encoding")], source=str(file))
    return text


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """A file path, or `plugin:name` for a config a plugin ships (`<its package>/configs/<name>.yaml`).

    `omnimm build valley:demo` reads the demo config of the `valley` plugin wherever it is installed.
    """
    file = Path(path)
    match = _PACKAGED.match(str(path))
    if file.exists() or match is None or _plugin_folder is None:
        return file
    package = _plugin_folder(match["plugin"])
    if package is None:
        return file
    folder = package / "configs"
    name = match["name"]
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ConfigError(
            [
                ConfigIssue(
                    "",
                    f"config name '{name}' leaves the plugin's configs folder (no leading '/', '.' or '..' parts)",
                    kind="unsafe_name",
                )
            ],
            source=str(path),
        )
    candidates = [folder / name, folder / f"{name}.yaml", folder / f"{name}.yml", folder / f"{name}.json"]
    inside = folder.resolve()
    found = next((c for c in candidates if c.is_file() and c.resolve().is_relative_to(inside)), None)
    if found is None:
        shipped = sorted(p.stem for p in folder.glob("*.y*ml")) if folder.is_dir() else []
        raise FileNotFoundError(
            f"plugin '{match['plugin']}' ships no config '{name}' (it ships: {', '.join(shipped) or 'none'})"
        )
    return found


def _parse_json(text: str, source: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ConfigError(
                    [ConfigIssue(key, "key appears twice in the same mapping", kind="duplicate_key")], source=source
                )
            seen[key] = value
        return seen

    def integer(digits: str) -> int:
        try:
            return int(digits)
        except ValueError:  # past Python's int-string conversion limit
            line = text.count("\n", 0, text.find(digits)) + 1
            raise _Refused(_too_many_digits(digits), line, "too_large") from None

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates, parse_int=integer)
    except json.JSONDecodeError as error:
        raise ConfigError(
            [ConfigIssue("", f"invalid JSON: {error.msg}", line=error.lineno, kind="syntax")], source=source
        ) from None
    except RecursionError:  # deeper than the decoder can go: far past MAX_NESTING
        raise _Refused(_TOO_DEEP, _json_line_too_deep(text), "too_deep") from None
    _check_json_size(data, text)
    return data


_TOO_DEEP = f"nested more than {MAX_NESTING} levels deep"
_TOO_MANY = f"holds more than {MAX_NODES} keys and values"
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_many_digits(digits: str) -> str:
    return f"integer with {len(digits.lstrip('+-'))} digits is too large"


def _check_json_size(data: Any, text: str) -> None:
    """Refuse parsed JSON nested deeper than `MAX_NESTING` or holding more than `MAX_NODES` keys and values."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if isinstance(value, dict):
            count += len(value)
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth + 1 > MAX_NESTING:
            raise _Refused(_TOO_DEEP, _json_line_too_deep(text), "too_deep")
        if count > MAX_NODES:
            raise _Refused(_TOO_MANY, None, "too_large")
        stack.extend((child, depth + 1) for child in children)
    if count > MAX_NODES:
        raise _Refused(_TOO_MANY, None, "too_large")


def _json_line_too_deep(text: str) -> int | None:
    """The line where JSON text opens its `MAX_NESTING + 1`-th nested bracket (strings skipped)."""
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING:
                return text.count("\n", 0, token.start()) + 1
        elif bracket in ("]", "}"):
            depth -= 1
    return None


def _parse_yaml(text: str, source: str) -> tuple[Any, Positions]:
    import yaml  # only files need it: keeps `import omnimm.config` lighter

    try:
        loader = _bounded_loader()(text)  # one parse: the node tree gives lines, the same tree gives the data
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark is not None else None
        problem = error.problem or str(error)
        raise ConfigError(
            [ConfigIssue("", f"invalid YAML: {problem}", line=line, kind="syntax")], source=source
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError([ConfigIssue("", f"invalid YAML: {error}", kind="syntax")], source=source) from None
    positions: Positions = {}
    duplicates: list[ConfigIssue] = []
    if node is not None:
        _walk_yaml(node, (), positions, duplicates)
    if duplicates:
        raise ConfigError(duplicates, source=source)
    return data, positions


@functools.cache
def _bounded_loader() -> type:
    """A `yaml.SafeLoader` that refuses, while composing, what `MAX_NESTING` and `MAX_NODES` forbid and alias cycles,
    and reports a scalar it cannot construct (`!!float nope`, a 5000-digit integer) with its line."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.expanded = 0  # nodes so far, each alias counted as everything it stands for
            self.depth = 0  # collections open around the node being composed
            self.reach = 0  # deepest collection level met so far inside the node being composed
            self.measured: dict[int, tuple[int, int]] = {}  # anchored node -> (expanded size, collection height)

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                return self._compose_alias(event, parent, index)
            collection = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
            before, outer_reach = self.expanded, self.reach
            self._count(1, event)
            self.depth += collection
            self.reach = self.depth
            self._check_depth(self.depth, event)
            node = super().compose_node(parent, index)
            self.depth -= collection
            if event.anchor is not None:
                self.measured[id(node)] = (self.expanded - before, self.reach - self.depth)
            self.reach = max(outer_reach, self.reach)
            return node

        def _compose_alias(self, event: Any, parent: Any, index: Any) -> Any:
            node = super().compose_node(parent, index)  # raises for an undefined alias
            measured = self.measured.get(id(node))
            if measured is None:  # anchored but not finished: the alias sits inside its own anchor
                raise _Refused(
                    f"alias '*{event.anchor}' refers to a node that contains it (a cycle)", _line(event), "alias_cycle"
                )
            size, height = measured
            self._count(size, event)
            self._check_depth(self.depth + height, event)
            self.reach = max(self.reach, self.depth + height)
            return node

        def _count(self, nodes: int, event: Any) -> None:
            self.expanded += nodes
            if self.expanded > MAX_NODES:
                message = _TOO_MANY + (" once its aliases are expanded" if isinstance(event, yaml.AliasEvent) else "")
                raise _Refused(message, _line(event), "too_large")

        def _check_depth(self, depth: int, event: Any) -> None:
            if depth > MAX_NESTING:
                raise _Refused(_TOO_DEEP, _line(event), "too_deep")

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except (ValueError, TypeError, OverflowError) as error:
                raise _Refused(_unreadable(node, error), node.start_mark.line + 1, "syntax") from None

    return BoundedLoader


def _line(event: Any) -> int:
    return event.start_mark.line + 1


def _unreadable(node: Any, error: Exception) -> str:
    """Why a scalar node could not be constructed, e.g. `cannot read 'nope' as a float`."""
    kind = str(node.tag).rsplit(":", 1)[-1]
    value = str(node.value)
    if kind == "int" and "limit" in str(error):
        return _too_many_digits(value)
    shown = value if len(value) <= 40 else value[:40] + "..."
    return f"invalid YAML: cannot read {shown!r} as {kind}"


def _walk_yaml(node: Any, loc: tuple[Any, ...], positions: Positions, duplicates: list[ConfigIssue]) -> None:
    import yaml

    positions.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in first_line:
                duplicates.append(
                    ConfigIssue(
                        format_loc((*loc, key)),
                        f"key appears twice (first on line {first_line[key]})",
                        line=line,
                        kind="duplicate_key",
                    )
                )
                continue
            first_line[key] = line
            positions[(*loc, key)] = line
            _walk_yaml(value_node, (*loc, key), positions, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_yaml(item, (*loc, index), positions, duplicates)
