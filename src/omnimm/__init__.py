"""omnimm: published multimodal and LLM methods as plugins that compose.

`import omnimm` is cheap: it imports neither torch nor pydantic nor any plugin. Names below load their module on
first access, and registries load the installed plugins the first time they are read.

```python
import omnimm

omnimm.encoders.names("*vit*")
model = omnimm.models.build(omnimm.load_config("run.yaml").model)
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # registries
    "Registry": "omnimm.registry",
    "Registries": "omnimm.registry",
    "registries": "omnimm.registry",
    "get_registry": "omnimm.registry",
    "encoders": "omnimm.registry",
    "adapters": "omnimm.registry",
    "fusers": "omnimm.registry",
    "connectors": "omnimm.registry",
    "llms": "omnimm.registry",
    "evaluators": "omnimm.registry",
    "models": "omnimm.registry",
    "memories": "omnimm.registry",
    # configs
    "Config": "omnimm.config",
    "ComponentConfig": "omnimm.config",
    "RunConfig": "omnimm.run",
    "Ref": "omnimm.config",
    "EncoderRef": "omnimm.config",
    "AdapterRef": "omnimm.config",
    "FuserRef": "omnimm.config",
    "ConnectorRef": "omnimm.config",
    "LLMRef": "omnimm.config",
    "EvaluatorRef": "omnimm.config",
    "ModelRef": "omnimm.config",
    "MemoryRef": "omnimm.config",
    "field_error": "omnimm.config",
    "load_config": "omnimm.config",
    "validate_config": "omnimm.config",
    "json_schema": "omnimm.config",
    # plugins
    "hookimpl": "omnimm.hookspecs",
    "plugin_records": "omnimm.plugins",
    "register_plugin": "omnimm.plugins",
    # dependencies
    "require": "omnimm.deps",
    # errors
    "OmnimmError": "omnimm.errors",
    "ConfigError": "omnimm.errors",
    "UnknownComponentError": "omnimm.errors",
    "DuplicateComponentError": "omnimm.errors",
    "MissingDependencyError": "omnimm.errors",
    "PluginError": "omnimm.errors",
    "StoreError": "omnimm.errors",
    "BackendError": "omnimm.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'omnimm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from omnimm.config import (
        AdapterRef,
        ComponentConfig,
        Config,
        ConnectorRef,
        EncoderRef,
        EvaluatorRef,
        FuserRef,
        LLMRef,
        MemoryRef,
        ModelRef,
        Ref,
        field_error,
        json_schema,
        load_config,
        validate_config,
    )
    from omnimm.deps import require
    from omnimm.errors import (
        BackendError,
        ConfigError,
        DuplicateComponentError,
        MissingDependencyError,
        OmnimmError,
        PluginError,
        StoreError,
        UnknownComponentError,
    )
    from omnimm.hookspecs import hookimpl
    from omnimm.plugins import plugin_records, register_plugin
    from omnimm.registry import (
        Registries,
        Registry,
        adapters,
        connectors,
        encoders,
        evaluators,
        fusers,
        get_registry,
        llms,
        memories,
        models,
        registries,
    )
    from omnimm.run import RunConfig
