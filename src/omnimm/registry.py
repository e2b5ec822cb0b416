"""Registries: components by name, each with its pydantic config class.

```python
from omnimm import ComponentConfig, encoders

class TinyConfig(ComponentConfig):
    width: int = 32

@encoders.register("my/tiny", config=TinyConfig)
class Tiny:
    def __init__(self, config: TinyConfig): ...

encoders.register_lazy("my/big", "my_pkg.big:BigEncoder", config="my_pkg.configs:BigConfig")
encoders.names("my/*")                       # ['my/big', 'my/tiny']
encoders.build({"name": "my/tiny", "width": 8})
```

A component is any callable taking `(config, **deps)`: usually a class whose `__init__` takes its config.
Lazy entries import their module on first `get`/`build`, so heavy dependencies load only when used.

The registries are defined in `omnimm.registry_core`, below the plugin layer; this module puts the plugin layer
under them (importing `omnimm.plugins` installs its loader), so reading any registry imported from here loads the
installed plugins first.
"""

from __future__ import annotations

from omnimm import plugins as _plugins  # noqa: F401  (installs the plugin loader into the registries)
from omnimm.registry_core import (
    _REGISTRIES,  # noqa: F401  (the table of every registry, for tests that add one)
    Entry,
    Owner,
    PluginLoader,
    Registries,
    Registry,
    RegistryChanges,
    adapters,
    all_registries,
    connectors,
    datasets,
    encoders,
    evaluators,
    fusers,
    get_registry,
    import_string,
    llms,
    memories,
    models,
    recording_changes,
    registering_as,
    registries,
    resolve_component,
    templates,
    use_plugin_loader,
    validate_component,
)

__all__ = [
    "Entry",
    "Owner",
    "PluginLoader",
    "Registries",
    "Registry",
    "RegistryChanges",
    "adapters",
    "all_registries",
    "connectors",
    "datasets",
    "encoders",
    "evaluators",
    "fusers",
    "get_registry",
    "import_string",
    "llms",
    "memories",
    "models",
    "recording_changes",
    "registering_as",
    "registries",
    "resolve_component",
    "templates",
    "use_plugin_loader",
    "validate_component",
]
