"""References to registries: a config field that holds "a component of this registry", resolved at validation time.

Import them from `omnimm.config` (or `omnimm`). A reference looks its registry up through `omnimm.registry`, so
the installed plugins are loaded before the first name is resolved.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from omnimm.configbase import ComponentConfig
from omnimm.registry import Registry, get_registry, resolve_component


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
        return component_json_schema(self.registry)

    def _validate(self, value: Any) -> ComponentConfig:
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
ConnectorRef = Annotated[ComponentConfig, Ref("connectors")]
"""A field holding a connector's config."""
LLMRef = Annotated[ComponentConfig, Ref("llms")]
"""A field holding an LLM backbone's config."""
EvaluatorRef = Annotated[ComponentConfig, Ref("evaluators")]
"""A field holding an evaluator's config."""
ModelRef = Annotated[ComponentConfig, Ref("models")]
"""A field holding a composed model's config."""
MemoryRef = Annotated[ComponentConfig, Ref("memories")]
"""A field holding a memory store's config."""


# -- the JSON schema of a reference ------------------------------------------------------------------------------

schema_defs: ContextVar[dict[str, Any] | None] = ContextVar("omnimm_schema_defs", default=None)
"""While `omnimm.config.json_schema` runs: the definitions of the components met so far, by `kind:name`."""

REF_PLACEHOLDER = "x-omnimm-component"
"""The key a component's `$ref` travels under until `link_refs` turns it into a real `$ref`."""


def pointer(key: str) -> str:
    """The JSON pointer of a component definition in the schema's `$defs`."""
    return "#/$defs/" + key.replace("~", "~0").replace("/", "~1")


def entry_def(defs: dict[str, Any], registry: Registry[Any], name: str) -> str | None:
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
    schema = config_class.model_json_schema(ref_template=pointer(key) + "/$defs/{model}")
    schema["title"] = f"{registry.kind} {name}"
    schema.setdefault("properties", {})["name"] = {"const": name, "description": f"the {registry.kind} '{name}'"}
    schema["required"] = sorted({*schema.get("required", []), "name"})
    defs[key] = schema
    return key


def component_json_schema(plural: str) -> dict[str, Any]:
    """The schema of a field holding a component of the registry `plural`."""
    registry = get_registry(plural)
    names = registry.names()
    shorthand = {"type": "string", "enum": names, "description": f"{registry.a_kind} name, all options at defaults"}
    defs = schema_defs.get()
    if defs is None:  # a plain model_json_schema(): say which names are valid, no nested detail
        loose = {"type": "object", "properties": {"name": {"enum": names}}, "required": ["name"]}
        return {"anyOf": [loose, shorthand], "description": f"{registry.a_kind} config"}
    keys = [key for name in names if (key := entry_def(defs, registry, name)) is not None]
    # pydantic checks every "$ref" it sees against its own definitions, so ours travel under another key until the
    # whole schema is assembled (see link_refs).
    return {
        "anyOf": [*({REF_PLACEHOLDER: key} for key in keys), shorthand],
        "description": f"{registry.a_kind} config",
    }


def link_refs(node: Any) -> Any:
    """Replace every placeholder left by `component_json_schema` with a `$ref` to its definition."""
    if isinstance(node, dict):
        if set(node) == {REF_PLACEHOLDER}:
            return {"$ref": pointer(node[REF_PLACEHOLDER])}
        return {key: link_refs(value) for key, value in node.items()}
    if isinstance(node, list):
        return [link_refs(item) for item in node]
    return node
