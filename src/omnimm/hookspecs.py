"""The hooks a plugin can implement. Each is an empty, documented function; pluggy checks implementations against it.

A plugin is a module (or object) named by an entry point in the group `omnimm.plugins`:

```toml
# pyproject.toml of your package
[project.entry-points."omnimm.plugins"]
mything = "my_package.plugin"
```

```python
# my_package/plugin.py: registration only, cheap to import
from omnimm import hookimpl

@hookimpl
def omnimm_register(registries):
    registries.encoders.register_lazy(
        "mything/encoder", "my_package.model:Encoder", config="my_package.config:EncoderConfig"
    )
```

A misspelt hook name (`omnimm_registr`) makes the plugin fail to load with a message naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from omnimm.registry_core import Registries

PROJECT = "omnimm"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def omnimm_register(registries: Registries) -> None:
    """Register the plugin's components.

    Called once per process, the first time any registry is read. Prefer `register_lazy` with the config class in
    a light module, so listing and validating never import heavy dependencies. If the hook raises (anything,
    `sys.exit` included), every registry change it made is undone (entries it replaced with `override=True` come
    back) and the plugin is reported as failed by `omnimm plugins`.

    Args:
        registries: every registry by attribute (`registries.encoders`, `registries.models`, ...);
            `registries.new(kind)` creates a registry of the plugin's own.
    """


@hookspec
def omnimm_cli(app: Any) -> None:
    """Add sub-commands to the `omnimm` command line.

    Args:
        app: the root `typer.Typer`; add a group with `app.add_typer(my_app, name="mything")` or a command
            with `app.command("mything")(function)`. Import heavy modules inside the command functions.
    """


@hookspec
def omnimm_serve_modes(modes: dict[str, Any]) -> None:
    """Add ways for `omnimm serve` to answer besides a saved model (e.g. `--character DIR`: a character in role).

    Set `modes[name] = "package.module:factory"` (a string, so nothing is imported until the mode is used). The
    factory is called as `factory(target, options)`: `target` is the path given to the mode's option, `options` a
    dict of the command's other choices (`llm`: an LLM config file or None, `name`: the model name to serve under,
    or None). It returns an object with `name`, `mode`, `max_batch`, `prepare(conversation)` and
    `generate(prepared, options, sinks)`, as `omnimm.serve.backends.Backend` describes; bad input raises one of the
    errors the command line reports in one line (`ValueError`, `OSError`, ...).

    Args:
        modes: mode name -> `"module:function"`; the core's `serve` command offers `character`.
    """
