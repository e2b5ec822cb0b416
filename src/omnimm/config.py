"""Typed configs: pydantic models that compose components by name.

A component's config subclasses `ComponentConfig`. A parent config says "this field is an encoder" with
`EncoderRef` (or `Annotated[ComponentConfig, Ref("my-registry")]`); the reference is resolved when the
parent is validated, through the registry, so components registered by plugins loaded later are found.

```python
class MyModelConfig(ComponentConfig):
    encoder: EncoderRef
    fuser: FuserRef | None = None
    lr: float = 1e-4

cfg = MyModelConfig.model_validate({"encoder": {"name": "omnimm/tiny-vit", "dim": 64}})
cfg.encoder            # a TinyViTConfig instance
load_config("run.yaml")  # RunConfig, or a component config when the file has a top-level `name`
```

Errors are `ConfigError` with the field path and, for YAML files, the line:
`run.yaml:7: model.fuser.top_k: must be <= num_experts (4)`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError, model_validator
from pydantic_core import PydanticCustomError, core_schema

from omnimm.errors import ConfigError, ConfigIssue, UnknownComponentError
from omnimm.files import atomic_write_text

if TYPE_CHECKING:
    from omnimm.registry import Registry

C = TypeVar("C", bound="Config")

Positions = dict[tuple[Any, ...], int]
"""Maps a field path (as a pydantic `loc` tuple) to its 1-based line in the source file."""

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# -- the base classes --------------------------------------------------------------------------------------------


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
        return cast(C, load_config(path, into=cls))

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str | None = None) -> C:
        """Validate a mapping; `ConfigError` (with field paths) instead of pydantic's `ValidationError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(issues_from_validation_error(error), source=source, title=cls.__name__) from None


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


# -- references to registries ------------------------------------------------------------------------------------


class Ref:
    """Marks a field as "a component of this registry": `Annotated[ComponentConfig, Ref("encoders")]`.

    The field accepts a mapping with a `name` key, a bare name (all defaults), or a config instance, and holds the
    registered config class's instance after validation. The registry is looked up by its plural name at validation
    time, so registries and components created by plugins work.
    """

    def __init__(self, registry: str) -> None:
        self.registry = registry

    def __repr__(self) -> str:
        return f"Ref({self.registry!r})"

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(_dump_component, info_arg=True),
        )

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        return _component_json_schema(self.registry)

    def _validate(self, value: Any) -> ComponentConfig:
        from omnimm.registry import get_registry

        return resolve_component(get_registry(self.registry), value)


def _dump_component(value: Any, info: Any) -> Any:
    if not isinstance(value, BaseModel):
        return value
    return value.model_dump(
        mode=info.mode,
        by_alias=info.by_alias,
        exclude_unset=info.exclude_unset,
        exclude_defaults=info.exclude_defaults,
        exclude_none=info.exclude_none,
        round_trip=info.round_trip,
    )


EncoderRef = Annotated[ComponentConfig, Ref("encoders")]
"""A field holding an encoder's config."""
AdapterRef = Annotated[ComponentConfig, Ref("adapters")]
"""A field holding an adapter's config."""
FuserRef = Annotated[ComponentConfig, Ref("fusers")]
"""A field holding a fuser's config."""
LLMRef = Annotated[ComponentConfig, Ref("llms")]
"""A field holding an LLM backbone's config."""
EvaluatorRef = Annotated[ComponentConfig, Ref("evaluators")]
"""A field holding an evaluator's config."""
ModelRef = Annotated[ComponentConfig, Ref("models")]
"""A field holding a composed model's config."""
MemoryRef = Annotated[ComponentConfig, Ref("memories")]
"""A field holding a memory store's config."""


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
    import fnmatch

    items = patterns.keys() if isinstance(patterns, Mapping) else range(len(patterns))
    for item in items:
        pattern = item if isinstance(patterns, Mapping) else patterns[item]
        if not fnmatch.filter(parts, pattern):
            message = f"'{pattern}' matches no part (parts: {', '.join(parts)})"
            raise field_error((*loc, item), message, pattern)


def resolve_component(registry: Registry[Any], value: Any) -> ComponentConfig:
    """Validate `value` as a config of `registry`; raises pydantic's `ValidationError` with relative paths.

    Used inside pydantic validation (where nested paths must compose); call `validate_component` otherwise.
    """
    if isinstance(value, ComponentConfig):
        return _check_instance(registry, value)
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, (dict, Mapping)):  # dict first: the common case skips the slower ABC check
        raise field_error(
            (),
            f"expected {registry.a_kind} config (a mapping with a 'name', or just a name), got {type(value).__name__}",
            value,
            kind="component_type",
        )
    name = value.get("name")
    if name is None:
        listed = (
            ", ".join(registry.names()) or f"none registered; is the plugin that provides {registry.plural} installed?"
        )
        raise field_error(("name",), f"which {registry.kind}? set 'name' to one of: {listed}", value, kind="missing")
    if not isinstance(name, str):
        raise field_error(
            ("name",), f"{registry.a_kind} name must be a string, got {type(name).__name__}", name, kind="string_type"
        )
    try:
        config_class = registry.entry(name).config_class()
    except UnknownComponentError:
        raise field_error(("name",), registry.unknown_message(name), name, kind="unknown_component") from None
    except ImportError as error:
        raise field_error(("name",), str(error), name, kind="component_unavailable") from None
    return config_class.model_validate(value if isinstance(value, dict) else dict(value))


def _check_instance(registry: Registry[Any], value: ComponentConfig) -> ComponentConfig:
    name = registry.name_of(value)
    if name is None:
        raise field_error(
            ("name",),
            f"set 'name': {type(value).__name__} is not registered as exactly one {registry.kind}",
            value,
            kind="missing",
        )
    try:
        expected = registry.entry(name).config_class()
    except UnknownComponentError:
        raise field_error(("name",), registry.unknown_message(name), name, kind="unknown_component") from None
    if not isinstance(value, expected):
        raise field_error(
            (),
            f"{registry.kind} '{name}' takes a {expected.__name__}, got a {type(value).__name__}",
            value,
            kind="component_config_class",
        )
    return value if value.name == name else value.model_copy(update={"name": name})


def validate_component(
    registry: Registry[Any], value: Any, *, source: str | None = None, positions: Positions | None = None
) -> ComponentConfig:
    """Validate `value` as a config of `registry`; `ConfigError` with field paths if it is wrong."""
    try:
        return resolve_component(registry, value)
    except ValidationError as error:
        raise ConfigError(
            issues_from_validation_error(error, positions), source=source, title=f"{registry.kind} config"
        ) from None


# -- files -------------------------------------------------------------------------------------------------------

_YAML_SUFFIXES = (".yaml", ".yml")


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
    text = file.read_text(encoding="utf-8")
    if suffix == ".json":
        return _parse_json(text, str(file)), {}
    return _parse_yaml(text, str(file))


_PACKAGED = re.compile(r"^(?P<plugin>[A-Za-z0-9_.-]+):(?P<name>[A-Za-z0-9_./-]+)$")


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """A file path, or `plugin:name` for a config a plugin ships (`<its package>/configs/<name>.yaml`).

    `omnimm build valley:demo` reads the demo config of the `valley` plugin wherever it is installed.
    """
    file = Path(path)
    match = _PACKAGED.match(str(path))
    if file.exists() or match is None:
        return file
    from omnimm.plugins import plugin_records

    record = next((r for r in plugin_records() if r.name == match["plugin"] and r.plugin is not None), None)
    if record is None or not getattr(record.plugin, "__file__", None):
        return file
    folder = Path(record.plugin.__file__).parent / "configs"
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


def load_config(path: str | os.PathLike[str], into: Any = None) -> Config:
    """Read, parse and validate a config file.

    Args:
        path: a `.yaml`, `.yml` or `.json` file.
        into: what the file holds: a `Config` subclass, a registry (or its plural name, e.g.
            `"encoders"`), or `None` to decide from the content (see `validate_config`).
    """
    data, positions = read_config_file(path)
    return validate_config(data, into, source=str(path), positions=positions)


def validate_config(
    data: Any, into: Any = None, *, source: str | None = None, positions: Positions | None = None
) -> Config:
    """Validate parsed data as `into` (see `config_target`); `ConfigError` with paths if wrong."""
    from omnimm.registry import Registry

    target = config_target(data, into, source=source)
    if isinstance(target, Registry):
        return validate_component(target, data, source=source, positions=positions)
    try:
        return target.model_validate(data)
    except ValidationError as error:
        raise ConfigError(
            issues_from_validation_error(error, positions), source=source, title=target.__name__
        ) from None


def config_target(data: Any, into: Any = None, *, source: str | None = None) -> Registry[Any] | type[Config]:
    """What `data` should be validated as.

    `into` may be a `Config` subclass, a registry or its plural name. With `into=None`, a mapping with a
    top-level `name` is one component's config (the registry that has the name), anything else a
    `RunConfig`.
    """
    from omnimm.registry import Registry, get_registry

    if not isinstance(data, Mapping):
        kind = "nothing (the file is empty)" if data is None else f"a {type(data).__name__}"
        raise ConfigError([ConfigIssue("", f"expected a mapping at the top level, got {kind}", line=1)], source=source)
    if isinstance(into, str):
        return get_registry(into)
    if isinstance(into, Registry) or (isinstance(into, type) and issubclass(into, Config)):
        return into
    if into is not None:
        raise TypeError(f"into= takes a Config subclass, a registry or a registry name, got {into!r}")
    if "name" in data:
        return _registry_for_root(data, source)
    from omnimm.run import RunConfig

    return RunConfig


def _registry_for_root(data: Mapping[str, Any], source: str | None) -> Registry[Any]:
    from omnimm.registry import all_registries

    name = data["name"]
    registries = list(all_registries().values())
    owners = [r for r in registries if isinstance(name, str) and name in r]
    if len(owners) == 1:
        return owners[0]
    if owners:
        kinds = " and ".join(f"{r.kind} (--kind {r.plural})" for r in owners)
        message = f"'{name}' is registered as {kinds}; say which"
    else:
        from omnimm.plugins import hint_for_name

        close = sorted({s for r in registries for s in r.suggestions(str(name))})
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        plugin_hint = hint_for_name(name) if isinstance(name, str) else None
        hint += f"; {plugin_hint}" if plugin_hint else ""
        message = (
            f"no component is registered as {name!r}{hint} (a run file has no top-level 'name': "
            f"put the model under 'model:')"
        )
    raise ConfigError([ConfigIssue("name", message, line=1, kind="unknown_component")], source=source)


# -- error reports -----------------------------------------------------------------------------------------------

_PREFIXES = ("Value error, ", "Assertion failed, ")


def format_loc(loc: tuple[Any, ...]) -> str:
    """`('model', 'encoders', 'face', 'layers', 0)` -> `model.encoders.face.layers[0]`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


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


# -- JSON schema -------------------------------------------------------------------------------------------------

_schema_defs: ContextVar[dict[str, Any] | None] = ContextVar("omnimm_schema_defs", default=None)


def _pointer(key: str) -> str:
    return "#/$defs/" + key.replace("~", "~0").replace("/", "~1")


def _entry_def(defs: dict[str, Any], registry: Registry[Any], name: str) -> str | None:
    """Add the schema of one registered component to `defs`; return its key (None if its config can't import)."""
    key = f"{registry.kind}:{name}"
    if key in defs:
        return key
    defs[key] = {}  # placeholder: a config that refers to its own registry must not recurse forever
    try:
        config_class = registry.config_class(name)
    except ImportError:
        del defs[key]
        return None
    schema = config_class.model_json_schema(ref_template=_pointer(key) + "/$defs/{model}")
    schema["title"] = f"{registry.kind} {name}"
    schema.setdefault("properties", {})["name"] = {"const": name, "description": f"the {registry.kind} '{name}'"}
    schema["required"] = sorted({*schema.get("required", []), "name"})
    defs[key] = schema
    return key


def _component_json_schema(plural: str) -> dict[str, Any]:
    from omnimm.registry import get_registry

    registry = get_registry(plural)
    names = registry.names()
    shorthand = {"type": "string", "enum": names, "description": f"{registry.a_kind} name, all options at defaults"}
    defs = _schema_defs.get()
    if defs is None:  # a plain model_json_schema(): say which names are valid, no nested detail
        loose = {"type": "object", "properties": {"name": {"enum": names}}, "required": ["name"]}
        return {"anyOf": [loose, shorthand], "description": f"{registry.a_kind} config"}
    keys = [key for name in names if (key := _entry_def(defs, registry, name)) is not None]
    # pydantic checks every "$ref" it sees against its own definitions, so ours travel under another key until the
    # whole schema is assembled (see _link_refs).
    return {
        "anyOf": [*({_REF_PLACEHOLDER: key} for key in keys), shorthand],
        "description": f"{registry.a_kind} config",
    }


_REF_PLACEHOLDER = "x-omnimm-component"


def _link_refs(node: Any) -> Any:
    if isinstance(node, dict):
        if set(node) == {_REF_PLACEHOLDER}:
            return {"$ref": _pointer(node[_REF_PLACEHOLDER])}
        return {key: _link_refs(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_link_refs(item) for item in node]
    return node


def json_schema(root: Any = None) -> dict[str, Any]:
    """A JSON schema (2020-12) for config files, with a definition for every registered component.

    Args:
        root: what a file holds: a `Config` subclass (default `RunConfig`), or a registry (or its
            plural name) for files that hold one component.
    """
    from omnimm.registry import Registry, all_registries, get_registry

    defs: dict[str, Any] = {}
    token = _schema_defs.set(defs)
    try:
        if isinstance(root, str):
            root = get_registry(root)
        if isinstance(root, Registry):
            schema = _component_json_schema(root.plural)
            schema["title"] = f"omnimm {root.kind} config"
        else:
            from omnimm.run import RunConfig

            schema = (root or RunConfig).model_json_schema()
        for registry in all_registries().values():
            for name in registry.names():
                _entry_def(defs, registry, name)
    finally:
        _schema_defs.reset(token)
    merged_defs = {**schema.pop("$defs", {}), **defs}
    return _link_refs({"$schema": JSON_SCHEMA_DIALECT, **schema, "$defs": merged_defs})
