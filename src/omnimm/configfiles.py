"""Config files: parse YAML or JSON once, keeping the line of every key, and find the configs plugins ship.

This module knows files only: validation lives in `omnimm.configbase` and `omnimm.config`. Where a plugin's package
is on disk is known to the plugin layer, which installs that lookup here when it is imported
(`use_plugin_folders`), so `plugin:name` paths work wherever `omnimm.config` or `omnimm.registry` is imported.
"""

from __future__ import annotations

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

_YAML_SUFFIXES = (".yaml", ".yml")
_PACKAGED = re.compile(r"^(?P<plugin>[A-Za-z0-9_.-]+):(?P<name>[A-Za-z0-9_./-]+)$")

_plugin_folder: PluginFolder | None = None


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
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            [ConfigIssue("", f"not UTF-8 text: byte 0x{raw[error.start]:02x} at offset {error.start}", line=line)],
            source=str(file),
        ) from None
    if suffix == ".json":
        return _parse_json(text, str(file)), {}
    return _parse_yaml(text, str(file))


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
    candidates = [folder / name, folder / f"{name}.yaml", folder / f"{name}.yml", folder / f"{name}.json"]
    found = next((c for c in candidates if c.is_file()), None)
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

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise ConfigError(
            [ConfigIssue("", f"invalid JSON: {error.msg}", line=error.lineno, kind="syntax")], source=source
        ) from None


def _parse_yaml(text: str, source: str) -> tuple[Any, Positions]:
    import yaml  # only files need it: keeps `import omnimm.config` lighter

    try:
        loader = yaml.SafeLoader(text)  # one parse: the node tree gives lines, the same tree gives the data
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
    positions: Positions = {}
    duplicates: list[ConfigIssue] = []
    if node is not None:
        _walk_yaml(node, (), positions, duplicates)
    if duplicates:
        raise ConfigError(duplicates, source=source)
    return data, positions


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
