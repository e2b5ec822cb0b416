"""Exceptions raised by omnimm.

Every error says what was wrong and where: the registry and name, the config field path, the file, the extra to
install. They subclass the built-in exception a caller would naturally catch (`LookupError`, `ImportError`,
`ValueError`) so existing `except` clauses keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class OmnimmError(Exception):
    """Base class of every error omnimm raises on purpose."""


class UnknownComponentError(OmnimmError, LookupError):
    """A name is not registered in a registry. The message lists close matches and how to get the component."""

    def __init__(self, message: str, *, kind: str, name: str, suggestions: list[str]) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.suggestions = suggestions

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return self.args[0]


class DuplicateComponentError(OmnimmError, ValueError):
    """A name is registered twice in the same registry. The message names both owners."""


class MissingDependencyError(OmnimmError, ImportError):
    """An optional dependency is not installed. The message names the `pip install` command that provides it."""

    def __init__(self, message: str, *, package: str, extra: str | None = None) -> None:
        super().__init__(message, name=package)
        self.package = package
        self.extra = extra


class PluginError(OmnimmError, RuntimeError):
    """A plugin could not be loaded or registered."""


def format_loc(loc: tuple[Any, ...]) -> str:
    """`('model', 'encoders', 'face', 'layers', 0)` -> `model.encoders.face.layers[0]`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: where (dotted field path, file line if known) and what."""

    path: str
    message: str
    line: int | None = None
    kind: str = "value_error"

    def format(self, source: str | None = None) -> str:
        what = f"{self.path}: {self.message}" if self.path else self.message
        if source and self.line is not None:
            return f"{source}:{self.line}: {what}"
        return f"{source}: {what}" if source else what


class ConfigError(OmnimmError, ValueError):
    """A config failed validation. `issues` holds each problem with its field path (and file line for YAML)."""

    def __init__(self, issues: list[ConfigIssue], *, source: str | None = None, title: str | None = None) -> None:
        self.issues = list(issues)
        self.source = source
        self.title = title
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.issues)
        head = f"{count} config error{'s' if count != 1 else ''}"
        if self.title:
            head += f" in {self.title}"
        if self.source:
            head = f"{self.source}: {head}"
        return "\n".join([head, *("  " + issue.format(self.source) for issue in self.issues)])

    def __str__(self) -> str:
        return self.args[0]


class BuildError(OmnimmError, ValueError):
    """A config validated but the component could not be built. The message names the part of the config (e.g.
    `model.llm`) and why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class MediaError(OmnimmError, ValueError):
    """A video or image file is missing, empty or cannot be decoded. The message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class StoreError(OmnimmError, RuntimeError):
    """A persisted store (index, memories, cache) is missing, corrupted, or does not match what loads it.

    The message names the folder or file and what was expected (dimension, model, checksum).
    """


class BackendError(OmnimmError, RuntimeError):
    """A served model could not be reached or answered something unusable. The message names the URL and why."""
