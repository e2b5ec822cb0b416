"""The base classes of every config, and the error reports that name each field's path (and file line).

Import them from `omnimm.config` (or `omnimm`); this module sits below the registries so that they can use
`ComponentConfig` without depending on everything `omnimm.config` offers on top (references, file loading, schema).
"""

from __future__ import annotations

import collections.abc
import difflib
import fnmatch
import json
import math
import os
import re
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from omnimm.configfiles import Positions, read_config_file
from omnimm.errors import ConfigError, ConfigIssue, format_loc
from omnimm.files import atomic_write_text

C = TypeVar("C", bound="Config")

MAX_CONFIG_INT = 2**53
"""Largest magnitude an integer field takes (every integer a float holds exactly): far past any size, count or seed
a run uses, and small enough that nothing downstream overflows."""


class Config(BaseModel):
    """Strict pydantic base: unknown keys are rejected with a close-match suggestion; defaults are validated.

    Numbers no run can use are refused for every subclass: `inf`/`nan` for a float field (a field opts in with
    `Field(allow_inf_nan=True)`), a boolean for an int or float field (pydantic would read `true` as 1), and an
    integer beyond `MAX_CONFIG_INT` for an int field.
    """

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        use_attribute_docstrings=True,
        validate_default=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="wrap")
    @classmethod
    def _refuse_unusable_input(cls, data: Any, handler: Any) -> Any:
        refused = list(_unusable_numbers(cls, data))
        try:
            result = handler(data)
        except ValidationError as error:
            line_errors = error.errors(include_url=False)
            unknown = any(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in line_errors)
            if not refused and not unknown:
                raise
            kept = [_rebuilt_line_error(cls, e) for e in line_errors if not _covered(e["loc"], refused)]
            merged = _in_input_order([*refused, *kept], data) if refused else kept
            raise ValidationError.from_exception_data(cls.__name__, merged) from None
        if refused:
            raise ValidationError.from_exception_data(cls.__name__, refused)
        return result

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


# -- numbers no run can use -------------------------------------------------------------------------------------

_INTEGER_TEXT = re.compile(r"^\s*[+-]?[0-9][0-9_]*\s*$")
_SEQUENCE_ORIGINS = (
    list,
    set,
    frozenset,
    collections.abc.Sequence,
    collections.abc.Set,
    collections.abc.MutableSequence,
)
_MAPPING_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _unusable_numbers(cls: type[BaseModel], data: Any) -> Iterator[Any]:
    """A pydantic line error for each boolean given for a number and each integer too large for an int field.

    Walks the raw input along each field's annotation (through unions, lists, tuples and dicts); nested configs
    check their own fields when they are validated.
    """
    if not isinstance(data, Mapping):
        return
    fields = {field.alias or name: field for name, field in cls.model_fields.items()}
    for key, value in data.items():
        field = fields.get(key)
        if field is not None:
            yield from _number_errors(field.annotation, value, (key,))


def _number_errors(annotation: Any, value: Any, loc: tuple[Any, ...]) -> Iterator[Any]:
    members = _union_members(annotation)
    if any(member is Any or member is object for member in members):
        return
    if isinstance(value, (bool, int, float, str)):
        problem = _scalar_problem(members, value)
        if problem is not None:
            kind, message = problem
            yield {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}
    elif isinstance(value, Mapping):
        item_type = _only([t for m in members if (t := _value_annotation(m)) is not None])
        if item_type is not None:
            for key, item in value.items():
                yield from _number_errors(item_type, item, (*loc, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            item_type = _only([t for m in members if (t := _item_annotation(m, index)) is not None])
            if item_type is not None:
                yield from _number_errors(item_type, item, (*loc, index))


def _union_members(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, with `Annotated`, `Optional` and nested unions unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _union_members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(annotation) for member in _union_members(arg)]
    return [annotation]


def _value_annotation(annotation: Any) -> Any:
    """The annotation of the values of a dict-like annotation (`dict[str, float]`), else None."""
    args = get_args(annotation)
    return args[1] if get_origin(annotation) in _MAPPING_ORIGINS and len(args) == 2 else None


def _item_annotation(annotation: Any, index: int) -> Any:
    """The annotation of item `index` of a list-like annotation (`list[int]`, `tuple[int, ...]`, `tuple[int, str]`)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[index] if index < len(args) else None
    if origin in _SEQUENCE_ORIGINS and len(args) == 1:
        return args[0]
    return None


def _only(candidates: list[Any]) -> Any:
    """The one annotation a value could be checked against, or None when there is none or the choice is unclear."""
    distinct = [c for i, c in enumerate(candidates) if c not in candidates[:i]]  # annotations need not be hashable
    return distinct[0] if len(distinct) == 1 else None


def _scalar_problem(members: list[Any], value: bool | int | float | str) -> tuple[str, str] | None:
    takes_int, takes_float = int in members, float in members
    if not (takes_int or takes_float):
        return None
    if isinstance(value, bool):
        if bool in members:
            return None
        expected = "an integer" if not takes_float else "a number"
        return "bool_for_number", f"expected {expected}, got a boolean ({str(value).lower()})"
    if takes_float or not _too_large(value):
        return None
    return "number_too_large", f"too large: an integer field takes at most {MAX_CONFIG_INT} (2**53) in magnitude"


def _too_large(value: int | float | str) -> bool:
    """Whether an int field's input, read as pydantic reads it, would exceed `MAX_CONFIG_INT`."""
    if isinstance(value, str):
        if not _INTEGER_TEXT.match(value):
            return False
        digits = value.strip().lstrip("+-").replace("_", "").lstrip("0")
        return len(digits) > 16 and (len(digits) > 4000 or int(digits) > MAX_CONFIG_INT)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return False  # pydantic's own messages cover fractions, inf and nan
    return abs(value) > MAX_CONFIG_INT


def _in_input_order(line_errors: list[Any], data: Mapping[str, Any]) -> list[Any]:
    """Line errors sorted by where their field sits in the input (a report reads top to bottom like the file)."""
    order = {key: index for index, key in enumerate(data)}
    return sorted(line_errors, key=lambda error: order.get(error["loc"][0] if error["loc"] else None, len(order)))


def _covered(loc: tuple[Any, ...], refused: list[Any]) -> bool:
    """Whether pydantic's error at `loc` is about an input already refused (its message is the less clear one)."""
    return any(loc[: len(error["loc"])] == error["loc"] for error in refused)


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
        elif item["type"] == "finite_number":
            message = f"must be a finite number, got {item.get('input')!r}"
        issues.append(ConfigIssue(format_loc(loc), message, line=_line_for(loc, positions), kind=item["type"]))
    return issues
