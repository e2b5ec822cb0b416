"""The base classes of every config, and the error reports that name each field's path (and file line).

Import them from `omnimm.config` (or `omnimm`); this module sits below the registries so that they can use
`ComponentConfig` without depending on everything `omnimm.config` offers on top (references, file loading, schema).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from omnimm.configfiles import Positions, read_config_file
from omnimm.errors import ConfigError, ConfigIssue, format_loc
from omnimm.files import atomic_write_text

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Strict pydantic base: unknown keys are rejected with a close-match suggestion; defaults are validated."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        use_attribute_docstrings=True,
        validate_default=True,
    )

    @model_validator(mode="wrap")
    @classmethod
    def _explain_unknown_fields(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as error:
            line_errors = error.errors(include_url=False)
            if not any(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in line_errors):
                raise
            raise ValidationError.from_exception_data(
                cls.__name__, [_rebuilt_line_error(cls, e) for e in line_errors]
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data; `type(self).model_validate(cfg.to_dict()) == cfg`."""
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as YAML (`.yaml`/`.yml`) or JSON (`.json`), atomically: a crash never leaves half a file."""
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix in (".yaml", ".yml"):
            return atomic_write_text(target, self.to_yaml())
        if suffix == ".json":
            return atomic_write_text(target, self.to_json() + "\n")
        raise ValueError(f"cannot save a config as '{suffix or target.name}': use a .yaml, .yml or .json path")

    @classmethod
    def load(cls: type[C], path: str | os.PathLike[str]) -> C:
        """Read and validate a YAML or JSON file as this class; `ConfigError` with file lines if invalid."""
        data, positions = read_config_file(path)
        source = str(path)
        require_mapping(data, source)
        return validate_as(cls, data, source=source, positions=positions)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str | None = None) -> C:
        """Validate a mapping; `ConfigError` (with field paths) instead of pydantic's `ValidationError`."""
        return validate_as(cls, data, source=source)


class ComponentConfig(Config):
    """Base of every component's config. `name` selects the registered component."""

    name: str | None = None
    """Registered name of the component (e.g. `omnimm/mlp`); set when the config sits inside a parent config."""

    def without_weights(self) -> ComponentConfig:
        """A copy that builds the same architecture without loading pretrained weights.

        Used before loading saved weights (`from_pretrained`). Components with a weights path override it; the base
        applies it to every nested component config.
        """
        updates = {}
        for field_name in type(self).model_fields:
            value = getattr(self, field_name)
            stripped = _without_weights(value)
            if stripped is not value:
                updates[field_name] = stripped
        return self.model_copy(update=updates) if updates else self


def _without_weights(value: Any) -> Any:
    if isinstance(value, ComponentConfig):
        return value.without_weights()
    if isinstance(value, dict):
        stripped = {key: _without_weights(item) for key, item in value.items()}
        return stripped if any(stripped[k] is not value[k] for k in value) else value
    if isinstance(value, (list, tuple)):
        items = [_without_weights(item) for item in value]
        return type(value)(items) if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def _rebuilt_line_error(cls: type[BaseModel], error: Any) -> Any:
    message = error["msg"]
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
        message = _unknown_field_message(cls, str(error["loc"][0]))
    return {"type": PydanticCustomError(error["type"], message), "loc": error["loc"], "input": error["input"]}


def _unknown_field_message(cls: type[BaseModel], key: str) -> str:
    fields = sorted(name for name in cls.model_fields)
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown field '{key}'{hint} ({cls.__name__} accepts: {', '.join(fields)})"


def require_mapping(data: Any, source: str | None = None) -> None:
    """`ConfigError` unless the top level of a config file is a mapping."""
    if not isinstance(data, Mapping):
        kind = "nothing (the file is empty)" if data is None else f"a {type(data).__name__}"
        raise ConfigError([ConfigIssue("", f"expected a mapping at the top level, got {kind}", line=1)], source=source)


def validate_as(cls: type[C], data: Any, *, source: str | None = None, positions: Positions | None = None) -> C:
    """`cls.model_validate(data)`, with `ConfigError` (field paths, file lines) instead of `ValidationError`."""
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(issues_from_validation_error(error, positions), source=source, title=cls.__name__) from None


# -- checks for validators ---------------------------------------------------------------------------------------


def field_error(
    field: str | tuple[Any, ...], message: str, value: Any = None, kind: str = "value_error"
) -> ValidationError:
    """An error pointing at `field` (a name, a dotted path or a `loc` tuple), for cross-field checks.

    Raise it from a `model_validator(mode="after")` so the report names the field, not the whole config:

    ```python
    if self.top_k > self.num_experts:
        raise field_error("top_k", f"must be <= num_experts ({self.num_experts})", self.top_k)
    ```
    """
    loc = tuple(field.split(".")) if isinstance(field, str) else tuple(field)
    return ValidationError.from_exception_data(
        "config", [{"type": PydanticCustomError(kind, message), "loc": loc, "input": value}]
    )


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier_keys(mapping: Mapping[str, Any], what: str) -> None:
    """Raise a `field_error` at the first key that is not a Python identifier (keys that name model parts)."""
    for key in mapping:
        if not _IDENTIFIER.match(key):
            raise field_error((key,), f"{what} must be a Python identifier (letters, digits, _)", key)


def check_part_patterns(
    patterns: Sequence[str] | Mapping[str, Any], parts: Sequence[str], loc: tuple[Any, ...]
) -> None:
    """Raise a `field_error` for the first pattern (list item or mapping key) that matches none of `parts`."""
    items = patterns.keys() if isinstance(patterns, Mapping) else range(len(patterns))
    for item in items:
        pattern = item if isinstance(patterns, Mapping) else patterns[item]
        if not fnmatch.filter(parts, pattern):
            message = f"'{pattern}' matches no part (parts: {', '.join(parts)})"
            raise field_error((*loc, item), message, pattern)


# -- error reports -----------------------------------------------------------------------------------------------

_PREFIXES = ("Value error, ", "Assertion failed, ")


def _line_for(loc: tuple[Any, ...], positions: Positions | None) -> int | None:
    if not positions:
        return None
    for end in range(len(loc), -1, -1):  # a missing field points at its parent's line
        line = positions.get(tuple(loc[:end]))
        if line is not None:
            return line
    return None


def issues_from_validation_error(error: ValidationError, positions: Positions | None = None) -> list[ConfigIssue]:
    """One `ConfigIssue` per pydantic line error, with dotted paths and (given positions) file lines."""
    issues = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        message = item["msg"]
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        if item["type"] == "missing" and message == "Field required":
            message = "required field is missing"
        issues.append(ConfigIssue(format_loc(loc), message, line=_line_for(loc, positions), kind=item["type"]))
    return issues
