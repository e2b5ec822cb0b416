"""Registries: components by name, each with its pydantic config class. Import them from `omnimm.registry`.

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

This module sits below the plugin layer and never imports it. Reading a registry asks the installed
`PluginLoader` to load the plugins first; `omnimm.plugins` installs one when it is imported, and `omnimm.registry`
(the module to import registries from) imports `omnimm.plugins`, so plugins are always found through it.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, overload

from pydantic import ValidationError

from omnimm.configbase import ComponentConfig, field_error, issues_from_validation_error
from omnimm.configfiles import Positions
from omnimm.errors import ConfigError, DuplicateComponentError, UnknownComponentError

T = TypeVar("T")

_MAX_LISTED = 20


@dataclass(frozen=True)
class Owner:
    """Who registered an entry: a plugin (with the extra that installs its dependencies) or a plain module."""

    label: str
    plugin: str | None = None
    extra: str | None = None
    distribution: str | None = None


class PluginLoader(Protocol):
    """What the registries ask of the plugin layer: load the plugins, and say why a name may be missing."""

    def load(self) -> bool:
        """Load the installed plugins unless done or under way; True once they are all loaded."""

    def hint_for(self, component_name: str) -> str | None:
        """Why a `plugin/...` name may be missing (its plugin is switched off, broken or not installed)."""


_loader: PluginLoader | None = None
_plugins_ready = False


def use_plugin_loader(loader: PluginLoader | None) -> None:
    """Install what loads the plugins on the first read of any registry (`omnimm.plugins` does it on import)."""
    global _loader, _plugins_ready
    _loader = loader
    _plugins_ready = False


_current_owner: ContextVar[Owner | None] = ContextVar("omnimm_registry_owner", default=None)


@contextmanager
def registering_as(owner: Owner) -> Iterator[None]:
    """Attribute every registration made inside the block to `owner` (used by the plugin manager)."""
    token = _current_owner.set(owner)
    try:
        yield
    finally:
        _current_owner.reset(token)


class RegistryChanges:
    """Every change made to the registries inside `recording_changes()`, in order, so that `undo()` can put back
    exactly what was there before: entries added, entries replaced with `override=True`, entries unregistered,
    registries created."""

    def __init__(self) -> None:
        self._undo_steps: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._undo_steps)

    def entry_set(self, registry: Registry[Any], name: str, previous: Entry | None) -> None:
        """`name` was added to `registry` (or replaced `previous`)."""
        if previous is None:
            self._undo_steps.append(lambda: registry._entries.pop(name, None))
        else:
            self._undo_steps.append(lambda: registry._entries.__setitem__(name, previous))

    def entry_removed(self, registry: Registry[Any], entry: Entry) -> None:
        self._undo_steps.append(lambda: registry._entries.__setitem__(entry.name, entry))

    def registry_created(self, registry: Registry[Any]) -> None:
        self._undo_steps.append(lambda: _REGISTRIES.pop(registry.plural, None))

    def undo(self) -> None:
        """Revert every recorded change, newest first."""
        while self._undo_steps:
            self._undo_steps.pop()()


_current_changes: ContextVar[RegistryChanges | None] = ContextVar("omnimm_registry_changes", default=None)


@contextmanager
def recording_changes() -> Iterator[RegistryChanges]:
    """Record every registry change made inside the block (the plugin manager undoes a failed plugin's)."""
    changes = RegistryChanges()
    token = _current_changes.set(changes)
    try:
        yield changes
    finally:
        _current_changes.reset(token)


def _owner_for(module: str | None) -> Owner:
    owner = _current_owner.get()
    if owner is not None:
        return owner
    return Owner(label=f"module '{module}'" if module else "unknown module")


def import_string(target: str) -> Any:
    """Import `"package.module:attribute"` (the entry-point notation) and return the attribute."""
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"'{target}': module '{module_name}' has no attribute '{attribute}'") from None
    return obj


def _check_target(target: str) -> None:
    module, colon, attribute = target.partition(":")
    if not (module and colon and attribute):
        raise ValueError(f"lazy target must look like 'package.module:Attribute', got {target!r}")


@dataclass
class Entry:
    """One registered component. `target` and `config` may be import strings until first use."""

    name: str
    kind: str
    target: Any
    config: type[ComponentConfig] | str
    owner: Owner
    extra: str | None = None
    description: str | None = None
    _loaded: Any = field(default=None, repr=False)

    @property
    def lazy(self) -> bool:
        """True while the component's module has not been imported."""
        return isinstance(self.target, str) and self._loaded is None

    @property
    def install_extra(self) -> str | None:
        return self.extra or self.owner.extra

    def load(self) -> Any:
        """The component factory (importing its module on first call)."""
        if not isinstance(self.target, str):
            return self.target
        if self._loaded is None:
            self._loaded = self._import(self.target)
        return self._loaded

    def config_class(self) -> type[ComponentConfig]:
        """The pydantic config class (importing its module on first call)."""
        if isinstance(self.config, str):
            loaded = self._import(self.config)
            if not (isinstance(loaded, type) and issubclass(loaded, ComponentConfig)):
                raise TypeError(f"{self.kind} '{self.name}': config {self.config!r} is not a ComponentConfig subclass")
            self.config = loaded
        return self.config

    def summary(self) -> str:
        """One line describing the component: its description, else its config's (or factory's) docstring."""
        doc = self.description
        if not doc and self.config is not ComponentConfig:  # the bare base's docstring says nothing specific
            try:
                doc = self.config_class().__doc__
            except ImportError:
                doc = None
        if not doc and not isinstance(self.target, str):
            doc = self.target.__doc__
        lines = (doc or "").strip().splitlines()
        return lines[0] if lines else ""

    def _import(self, target: str) -> Any:
        try:
            return import_string(target)
        except ModuleNotFoundError as error:
            raise self._missing(target, error) from error

    def _missing(self, target: str, error: ModuleNotFoundError) -> Exception:
        from omnimm.deps import missing_dependency

        missing = error.name or ""
        own_package = target.split(".")[0].split(":")[0]
        if not missing or missing.split(".")[0] == own_package:
            return error  # the component's own code is broken: not a dependency problem
        purpose = f"{self.kind} '{self.name}'"
        if self.install_extra is None and self.owner.distribution:
            err = missing_dependency(missing, pip=None, purpose=purpose)
            err.args = (f"{err.args[0]} (it is a dependency of '{self.owner.distribution}')",)
            return err
        return missing_dependency(missing, extra=self.install_extra, purpose=purpose)


class Registry(Generic[T]):
    """Named components of one kind (encoders, adapters, ...), each with its pydantic config class.

    Reading a registry (`get`, `build`, `names`, `in`) first loads the installed plugins, once per process,
    so components from any installed package are there without imports.
    """

    def __init__(self, kind: str, plural: str | None = None, *, description: str = "") -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.description = description
        self._entries: dict[str, Entry] = {}
        _register_registry(self)

    def __repr__(self) -> str:
        return f"Registry({self.plural!r}, {len(self._entries)} entries)"

    @property
    def a_kind(self) -> str:
        """The kind with its article, for messages: "an encoder", "a model"."""
        article = "an" if self.kind[:1].lower() in "aeiou" or self.kind.lower() == "llm" else "a"
        return f"{article} {self.kind}"

    # -- registration ---------------------------------------------------------------------------------------------

    @overload
    def register(
        self,
        name: str,
        obj: None = None,
        *,
        config: type[ComponentConfig] | str | None = None,
        extra: str | None = None,
        description: str | None = None,
        override: bool = False,
    ) -> Callable[[T], T]: ...

    @overload
    def register(
        self,
        name: str,
        obj: T,
        *,
        config: type[ComponentConfig] | str | None = None,
        extra: str | None = None,
        description: str | None = None,
        override: bool = False,
    ) -> T: ...

    def register(
        self,
        name: str,
        obj: T | None = None,
        *,
        config: type[ComponentConfig] | str | None = None,
        extra: str | None = None,
        description: str | None = None,
        override: bool = False,
    ) -> T | Callable[[T], T]:
        """Register `obj` under `name`; without `obj`, return a decorator that does.

        Args:
            name: the name configs use (convention: `"plugin/component"`).
            obj: a factory called as `obj(config, **deps)`, usually a class.
            config: its `ComponentConfig` subclass (or an import string); defaults to the bare base.
            extra: the omnimm extra that installs its dependencies (defaults to the registering plugin's).
            description: one line for listings; defaults to the first docstring line.
            override: replace an existing entry instead of raising `DuplicateComponentError`.
        """
        if obj is None:

            def decorator(component: T) -> T:
                self.register(name, component, config=config, extra=extra, description=description, override=override)
                return component

            return decorator
        owner = _owner_for(getattr(obj, "__module__", None))
        self._add(Entry(name, self.kind, obj, self._config_or_base(config), owner, extra, description), override)
        return obj

    def register_lazy(
        self,
        name: str,
        target: str,
        *,
        config: type[ComponentConfig] | str | None = None,
        extra: str | None = None,
        description: str | None = None,
        override: bool = False,
    ) -> None:
        """Register `"package.module:Factory"` under `name` without importing it.

        Keep `config` in a light module (pydantic only) so validating a config never imports heavy dependencies.
        """
        _check_target(target)
        if isinstance(config, str):
            _check_target(config)
        owner = _owner_for(target.partition(":")[0])
        self._add(Entry(name, self.kind, target, self._config_or_base(config), owner, extra, description), override)

    def unregister(self, name: str) -> Entry:
        """Remove and return an entry."""
        self._load_plugins()
        if name not in self._entries:
            raise self._unknown(name)
        entry = self._entries.pop(name)
        changes = _current_changes.get()
        if changes is not None:
            changes.entry_removed(self, entry)
        return entry

    def _config_or_base(self, config: type[ComponentConfig] | str | None) -> type[ComponentConfig] | str:
        if config is None:
            return ComponentConfig
        if isinstance(config, type) and not issubclass(config, ComponentConfig):
            raise TypeError(f"config for {self.a_kind} must subclass omnimm.ComponentConfig, got {config.__name__}")
        return config

    def _add(self, entry: Entry, override: bool) -> None:
        if not entry.name or not isinstance(entry.name, str):
            raise ValueError(f"{self.a_kind} name must be a non-empty string, got {entry.name!r}")
        self._load_plugins()
        existing = self._entries.get(entry.name)
        if existing is not None and not override:
            raise DuplicateComponentError(
                f"{self.kind} '{entry.name}' is already registered by {existing.owner.label}; "
                f"{entry.owner.label} tried to register it again. Rename one of them, "
                f"or pass override=True to replace it on purpose."
            )
        self._entries[entry.name] = entry
        changes = _current_changes.get()
        if changes is not None:
            changes.entry_set(self, entry.name, existing)

    def _drop_owner(self, owner: Owner) -> int:
        """Remove every entry registered by `owner` (the entries it replaced are not restored: see
        `recording_changes`, which the plugin manager uses to roll a failed plugin back)."""
        names = [name for name, entry in self._entries.items() if entry.owner == owner]
        for name in names:
            del self._entries[name]
        return len(names)

    # -- lookup ---------------------------------------------------------------------------------------------------

    def names(self, *patterns: str) -> list[str]:
        """Sorted registered names, optionally filtered by shell-style wildcards (`"*vit*"`), case-insensitive."""
        self._load_plugins()
        if not patterns:
            return sorted(self._entries)
        lowered = [pattern.lower() for pattern in patterns]
        return sorted(n for n in self._entries if any(fnmatch.fnmatchcase(n.lower(), p) for p in lowered))

    def entry(self, name: str) -> Entry:
        """The `Entry` for `name`; `UnknownComponentError` with suggestions if there is none."""
        self._load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self._unknown(name) from None

    def get(self, name: str) -> T:
        """The registered factory (imports a lazy entry's module)."""
        return self.entry(name).load()

    def config_class(self, name: str) -> type[ComponentConfig]:
        """The config class registered with `name`."""
        return self.entry(name).config_class()

    def validate(
        self, config: ComponentConfig | Mapping[str, Any] | str, *, source: str | None = None
    ) -> ComponentConfig:
        """Turn a mapping (or a bare name) into the registered config class; `ConfigError` if it is wrong."""
        return validate_component(self, config, source=source)

    def build(self, config: ComponentConfig | Mapping[str, Any] | str, /, **deps: Any) -> T:
        """Validate `config` and call the registered factory as `factory(config, **deps)`."""
        validated = self.validate(config)
        assert validated.name is not None  # validate() fills the name in
        return self.get(validated.name)(validated, **deps)

    def name_of(self, config: ComponentConfig) -> str | None:
        """The name a config refers to: its `name`, else the only entry registered with its class."""
        if config.name is not None:
            return config.name
        self._load_plugins()
        cls = type(config)
        target = f"{cls.__module__}:{cls.__qualname__}"  # matches lazy entries without importing anything
        matches = [n for n, e in self._entries.items() if e.config is cls or e.config == target]
        return matches[0] if len(matches) == 1 else None

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """Every entry, sorted by name."""
        self._load_plugins()
        return [self._entries[name] for name in sorted(self._entries)]

    # -- errors ---------------------------------------------------------------------------------------------------

    def suggestions(self, name: str) -> list[str]:
        """Registered names close to `name` (typos, a missing `plugin/` prefix, wrong case)."""
        names = list(self._entries)
        if not isinstance(name, str):
            return []
        lowered = {n.lower(): n for n in names}
        close = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
        short = name.lower().rsplit("/", 1)[-1]
        by_suffix = {n.rsplit("/", 1)[-1].lower(): n for n in names}
        close += [by_suffix[m] for m in difflib.get_close_matches(short, list(by_suffix), n=3, cutoff=0.75)]
        return list(dict.fromkeys(close))[:3]

    def unknown_message(self, name: object) -> str:
        """The text of the unknown-name error: close matches, the registries that do have the name, what is
        available, how to get more."""
        suggestions = self.suggestions(name) if isinstance(name, str) else []
        parts = [f"unknown {self.kind} {name!r}"]
        elsewhere = self.other_registries_with(name)
        if elsewhere:
            parts[0] += f": it is {' and '.join(r.a_kind for r in elsewhere)}, not {self.a_kind}"
        if suggestions:
            parts[0] += " (did you mean " + " or ".join(repr(s) for s in suggestions) + "?)"
        hint = _loader.hint_for(name) if isinstance(name, str) and _loader is not None else None
        if hint:
            parts.append(hint)
        names = sorted(self._entries)
        if not names:
            parts.append(f"no {self.plural} are registered")
        else:
            listed = ", ".join(names[:_MAX_LISTED])
            more = (
                f", ... and {len(names) - _MAX_LISTED} more (omnimm list {self.plural})"
                if len(names) > _MAX_LISTED
                else ""
            )
            parts.append(f"available {self.plural}: {listed}{more}")
        return "; ".join(parts)

    def other_registries_with(self, name: object) -> list[Registry[Any]]:
        """The other registries where `name` is registered (a config that puts a component in the wrong field)."""
        if not isinstance(name, str):
            return []
        return [r for r in _REGISTRIES.values() if r is not self and name in r._entries]

    def _unknown(self, name: object) -> UnknownComponentError:
        suggestions = self.suggestions(name) if isinstance(name, str) else []
        return UnknownComponentError(
            self.unknown_message(name), kind=self.kind, name=str(name), suggestions=suggestions
        )

    @staticmethod
    def _load_plugins() -> None:
        global _plugins_ready
        if _plugins_ready or _loader is None:  # the hot path: every lookup passes here
            return
        _plugins_ready = _loader.load()


# -- validating a component's config -----------------------------------------------------------------------------


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


# -- every registry ----------------------------------------------------------------------------------------------

_REGISTRIES: dict[str, Registry[Any]] = {}


def _register_registry(registry: Registry[Any]) -> None:
    existing = _REGISTRIES.get(registry.plural)
    if existing is not None:
        raise DuplicateComponentError(
            f"a registry named '{registry.plural}' already exists ({existing!r}); pick another plural name"
        )
    _REGISTRIES[registry.plural] = registry
    changes = _current_changes.get()
    if changes is not None:
        changes.registry_created(registry)


def get_registry(plural: str) -> Registry[Any]:
    """A registry by its plural name (`"encoders"`), including registries that plugins created."""
    if plural not in _REGISTRIES:
        Registry._load_plugins()  # plugins create their registries when they load
    try:
        return _REGISTRIES[plural]
    except KeyError:
        close = difflib.get_close_matches(plural, list(_REGISTRIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownComponentError(
            f"unknown registry {plural!r}{hint}; registries: {', '.join(sorted(_REGISTRIES))} "
            f"(a plugin creates a registry of its own with registries.new(kind))",
            kind="registry",
            name=plural,
            suggestions=close,
        ) from None


def all_registries() -> dict[str, Registry[Any]]:
    """Every registry by plural name, in creation order (plugins' registries included)."""
    Registry._load_plugins()
    return dict(_REGISTRIES)


class Registries:
    """Every registry by attribute (`registries.encoders`) or key (`registries["encoders"]`).

    Passed to the `omnimm_register` hook; `new()` lets a plugin add a registry of its own kind.
    """

    def __getattr__(self, plural: str) -> Registry[Any]:
        if plural.startswith("__"):
            raise AttributeError(plural)
        return get_registry(plural)

    def __getitem__(self, plural: str) -> Registry[Any]:
        return get_registry(plural)

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRIES)

    def __contains__(self, plural: object) -> bool:
        return plural in _REGISTRIES

    def new(self, kind: str, plural: str | None = None, *, description: str = "") -> Registry[Any]:
        """Create a registry (`new("template")` -> `registries.templates`), or return it if it exists."""
        existing = _REGISTRIES.get(plural or f"{kind}s")
        if existing is not None:
            if existing.kind != kind:
                raise DuplicateComponentError(
                    f"registry '{existing.plural}' already exists for kind '{existing.kind}', not '{kind}'"
                )
            return existing
        return Registry(kind, plural, description=description)


registries = Registries()


encoders: Registry[Any] = Registry(
    "encoder", description="Turn raw inputs (images, video frames, text, faces) into features."
)
adapters: Registry[Any] = Registry(
    "adapter", description="Map features token by token to another width (projectors: linear, MLP)."
)
connectors: Registry[Any] = Registry(
    "connector",
    description="Map the token groups of a clip's encoders to an LLM's visual tokens (poolers, MoE adapters).",
)
fusers: Registry[Any] = Registry("fuser", description="Combine features from several encoders into one sequence.")
llms: Registry[Any] = Registry("llm", description="Language-model backbones (causal LMs with their tokenizers).")
evaluators: Registry[Any] = Registry("evaluator", description="Score models or outputs: metrics, gates, benchmarks.")
models: Registry[Any] = Registry("model", description="Composed models built from the components above.")
templates: Registry[Any] = Registry("template", description="Chat formats: system prompt, role prefixes, stop string.")
datasets: Registry[Any] = Registry("dataset", description="Training and evaluation data sources.")
memories: Registry[Any] = Registry(
    "memory", "memories", description="Vector memory stores: add, delete, search by embedding, persist safely."
)
