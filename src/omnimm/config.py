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

This module is the top of the config layers and gathers their names: the base classes and error reports
(`omnimm.configbase`), file parsing (`omnimm.configfiles`), component validation (`omnimm.registry`), references
(`omnimm.refs`). What it adds needs all of them: loading a file as whatever it holds, and the JSON schema.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from omnimm import plugins
from omnimm.configbase import (
    ComponentConfig,
    Config,
    check_identifier_keys,
    check_part_patterns,
    field_error,
    issues_from_validation_error,
    require_mapping,
    validate_as,
)
from omnimm.configfiles import Positions, read_config_file, resolve_config_path
from omnimm.errors import ConfigError, ConfigIssue, format_loc
from omnimm.refs import (
    AdapterRef,
    ConnectorRef,
    EncoderRef,
    EvaluatorRef,
    FuserRef,
    LLMRef,
    MemoryRef,
    ModelRef,
    Ref,
    component_json_schema,
    entry_def,
    link_refs,
    schema_defs,
)
from omnimm.registry import Registry, all_registries, get_registry, resolve_component, validate_component

__all__ = [
    "JSON_SCHEMA_DIALECT",
    "AdapterRef",
    "ComponentConfig",
    "Config",
    "ConnectorRef",
    "EncoderRef",
    "EvaluatorRef",
    "FuserRef",
    "LLMRef",
    "MemoryRef",
    "ModelRef",
    "Positions",
    "Ref",
    "check_identifier_keys",
    "check_part_patterns",
    "config_target",
    "field_error",
    "format_loc",
    "issues_from_validation_error",
    "json_schema",
    "load_config",
    "read_config_file",
    "resolve_component",
    "resolve_config_path",
    "validate_component",
    "validate_config",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# -- files -------------------------------------------------------------------------------------------------------


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
    target = config_target(data, into, source=source)
    if isinstance(target, Registry):
        return validate_component(target, data, source=source, positions=positions)
    return validate_as(target, data, source=source, positions=positions)


def config_target(data: Any, into: Any = None, *, source: str | None = None) -> Registry[Any] | type[Config]:
    """What `data` should be validated as.

    `into` may be a `Config` subclass, a registry or its plural name. With `into=None`, a mapping with a
    top-level `name` is one component's config (the registry that has the name), anything else a
    `RunConfig`.
    """
    require_mapping(data, source)
    if isinstance(into, str):
        return get_registry(into)
    if isinstance(into, Registry) or (isinstance(into, type) and issubclass(into, Config)):
        return into
    if into is not None:
        raise TypeError(f"into= takes a Config subclass, a registry or a registry name, got {into!r}")
    if "name" in data:
        return _registry_for_root(data, source)
    from omnimm.run import RunConfig  # a layer below; imported on first use to keep `import omnimm.config` light

    return RunConfig


def _registry_for_root(data: Mapping[str, Any], source: str | None) -> Registry[Any]:
    name = data["name"]
    registries = list(all_registries().values())
    owners = [r for r in registries if isinstance(name, str) and name in r]
    if len(owners) == 1:
        return owners[0]
    if owners:
        kinds = " and ".join(f"{r.kind} (--kind {r.plural})" for r in owners)
        message = f"'{name}' is registered as {kinds}; say which"
    else:
        close = sorted({s for r in registries for s in r.suggestions(str(name))})
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        plugin_hint = plugins.hint_for_name(name) if isinstance(name, str) else None
        hint += f"; {plugin_hint}" if plugin_hint else ""
        message = (
            f"no component is registered as {name!r}{hint} (a run file has no top-level 'name': "
            f"put the model under 'model:')"
        )
    raise ConfigError([ConfigIssue("name", message, line=1, kind="unknown_component")], source=source)


# -- JSON schema -------------------------------------------------------------------------------------------------


def json_schema(root: Any = None) -> dict[str, Any]:
    """A JSON schema (2020-12) for config files, with a definition for every registered component.

    Args:
        root: what a file holds: a `Config` subclass (default `RunConfig`), or a registry (or its
            plural name) for files that hold one component.
    """
    defs: dict[str, Any] = {}
    token = schema_defs.set(defs)
    try:
        if isinstance(root, str):
            root = get_registry(root)
        if isinstance(root, Registry):
            schema = component_json_schema(root.plural)
            schema["title"] = f"omnimm {root.kind} config"
        else:
            from omnimm.run import RunConfig

            schema = (root or RunConfig).model_json_schema()
        for registry in all_registries().values():
            for name in registry.names():
                entry_def(defs, registry, name)
    finally:
        schema_defs.reset(token)
    merged_defs = {**schema.pop("$defs", {}), **defs}
    return link_refs({"$schema": JSON_SCHEMA_DIALECT, **schema, "$defs": merged_defs})
