"""Plugin discovery: entry points in the group `omnimm.plugins`, loaded once per process, failures isolated.

Environment switches (the lesson pytest learned when autoloading broke unrelated projects):

- `OMNIMM_DISABLE_PLUGIN_AUTOLOAD=1`: load no installed plugin except those named in `OMNIMM_PLUGINS`.
- `OMNIMM_PLUGINS=valley,recse`: load only these installed plugins.

The core's own components (`omnimm/...`) are always there. A plugin that raises while importing or registering
(any exception, `SystemExit` from a `sys.exit` included; only `KeyboardInterrupt` goes through) is recorded with its
error (see `omnimm plugins`); every registry change it made is undone (the entries it replaced come back) and every
other plugin works as usual.

The project's own plugins (entry points of the `omnimm` distribution whose module is under `omnimm_plugins.`) keep
their names: an entry point of another distribution with the same name is reported as a clash and not loaded.

The registries (`omnimm.registry_core`) sit below this module and never import it: importing this module installs
the plugin manager into them as their loader (and into `omnimm.configfiles` as the finder of plugins' packaged
configs). `omnimm.registry`, the module registries are imported from, imports this one, so that always happens.
"""

from __future__ import annotations

import importlib
import os
import threading
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pluggy

from omnimm import hookspecs
from omnimm.configfiles import use_plugin_folders
from omnimm.errors import PluginError
from omnimm.registry_core import (
    Owner,
    RegistryChanges,
    all_registries,
    recording_changes,
    registering_as,
    registries,
    use_plugin_loader,
)

ENTRY_POINT_GROUP = "omnimm.plugins"
ENV_DISABLE_AUTOLOAD = "OMNIMM_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOWLIST = "OMNIMM_PLUGINS"
BUILTIN = "omnimm"
BUILTIN_PLUGIN = "omnimm.builtin.plugin"
"""The core's own plugin module. Imported by name, like every installed plugin: it imports `omnimm.registry`."""
OWN_PLUGIN_PACKAGE = "omnimm_plugins"
"""The package of the project's own plugins (the `plugins/` folder of the checkout)."""

# The project's own plugins and the extra that installs each one's dependencies: used to tell a user how to get a
# component whose plugin is not loaded (e.g. a trimmed install, or one switched off by OMNIMM_PLUGINS).
KNOWN_PLUGINS: dict[str, str] = {
    "valley": "valley",
    "favchat": "favchat",
    "recse": "recse",
    "simct": "simct",
    "haruhi": "haruhi",
    "fakenews": "fakenews",
}

Status = Literal["loaded", "failed", "skipped", "missing"]


@dataclass
class PluginRecord:
    """What happened to one plugin: where it comes from, whether it loaded, and why not."""

    name: str
    target: str
    distribution: str | None = None
    version: str | None = None
    status: Status = "skipped"
    reason: str | None = None
    traceback: str | None = None
    builtin: bool = False
    extra: str | None = None
    own: bool = False
    """One of the project's own plugins (`valley`, `recse`, ...), shipped in the omnimm distribution."""
    plugin: Any = field(default=None, repr=False)

    @property
    def source(self) -> str:
        """Where the plugin comes from, for messages: its distribution and version, and its module."""
        if not self.distribution:
            return self.target
        return f"{self.distribution} {self.version or ''}".strip() + f", {self.target}"

    @property
    def owner(self) -> Owner:
        source = f"{self.distribution} {self.version}" if self.distribution else self.target
        return Owner(
            label=f"plugin '{self.name}' ({source})",
            plugin=self.name,
            extra=self.extra,
            distribution=self.distribution,
        )

    def components(self) -> dict[str, list[str]]:
        """Names this plugin registered, by registry."""
        owner = self.owner
        found: dict[str, list[str]] = {}
        for plural, registry in all_registries().items():
            names = [entry.name for entry in registry.entries() if entry.owner == owner]
            if names:
                found[plural] = names
        return found


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


class PluginManager:
    """Finds, loads and calls omnimm plugins through pluggy. One per process: `get_plugin_manager`."""

    def __init__(self) -> None:
        self.hooks = pluggy.PluginManager(hookspecs.PROJECT)
        self.hooks.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.loaded = False
        self.loading = False
        self._lock = threading.RLock()

    # -- loading --------------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the core's components and every allowed installed plugin. Safe to call again (no-op)."""
        with self._lock:
            if self.loaded or self.loading:
                return
            self.loading = True
            try:
                self._load_builtin()
                self._load_entry_points()
            finally:
                self.loading = False
                self.loaded = True

    def _load_builtin(self) -> None:
        builtin_plugin = importlib.import_module(BUILTIN_PLUGIN)
        record = PluginRecord(BUILTIN, BUILTIN_PLUGIN, BUILTIN, _version(BUILTIN), builtin=True, extra="torch")
        self._activate(record, lambda: builtin_plugin)

    def _load_entry_points(self) -> None:
        disabled = _env_flag(ENV_DISABLE_AUTOLOAD)
        allow = _env_list(ENV_ALLOWLIST)
        found: set[str] = set()
        for entry_point, record in _discover():
            name = entry_point.name
            found.add(name)
            if name in self.records:
                self._record_clash(record, self.records[name])
                continue
            if disabled and (allow is None or name not in allow):
                record.reason = f"autoload disabled by {ENV_DISABLE_AUTOLOAD}=1 (name it in {ENV_ALLOWLIST} to load it)"
                self.records[name] = record
            elif allow is not None and name not in allow:
                record.reason = f"not listed in {ENV_ALLOWLIST}={','.join(allow)}"
                self.records[name] = record
            else:
                self._activate(record, lambda entry_point=entry_point: _load_entry_point(entry_point))
        for name in allow or ():
            if name not in found and name != BUILTIN:
                installed = ", ".join(sorted(found)) or "none"
                self.records[name] = PluginRecord(
                    name,
                    "",
                    status="missing",
                    reason=f"named in {ENV_ALLOWLIST} but not installed (installed: {installed})",
                )

    def _record_clash(self, record: PluginRecord, holder: PluginRecord) -> None:
        """`record` wants a name `holder` already has: report it, never load it under that name."""
        whose = "omnimm's own plugin" if holder.builtin or holder.own else "another plugin"
        record.status = "failed"
        record.reason = (
            f"name clash: '{record.name}' is already {whose} ({holder.source}); this entry point "
            f"({record.source}) is not loaded: its distribution must rename it"
        )
        key = f"{record.name} ({record.distribution or record.target})"
        while key in self.records:  # the same distribution declaring it twice
            key += "'"
        self.records[key] = record

    def register(self, plugin: Any, name: str, *, extra: str | None = None) -> PluginRecord:
        """Register a plugin object by hand (a module or an object with `@hookimpl` methods) and run its hooks.

        Useful in notebooks and tests; installed packages should use the entry-point group instead.
        """
        self.load()
        record = PluginRecord(name, getattr(plugin, "__name__", type(plugin).__qualname__), extra=extra)
        if name in self.records and self.records[name].status == "loaded":
            raise ValueError(f"a plugin named '{name}' is already loaded; pick another name")
        self._activate(record, lambda: plugin)
        if record.status == "failed":
            raise PluginError(f"plugin '{name}' failed: {record.reason}")
        return record

    def _activate(self, record: PluginRecord, load: Any) -> None:
        """Import, register with pluggy and run the registration hook; on any error, undo all of it.

        A broken plugin must not take the others (or the command) down, so everything it raises is contained,
        `sys.exit` and other `BaseException`s included; a `KeyboardInterrupt` is the user's and goes on, after the
        rollback.
        """
        self.records[record.name] = record
        owner = record.owner
        with recording_changes() as changes:
            try:
                with registering_as(owner):
                    plugin = load()
                    self.hooks.register(plugin, name=record.name)
                    record.plugin = plugin
                    self._check_hook_names(plugin, record.name)
                    self._call_plugin(plugin, "omnimm_register", registries=registries)
            except KeyboardInterrupt:
                self._fail(record, owner, changes, "interrupted while loading")
                raise
            except BaseException as error:  # contained: see the docstring
                self._fail(record, owner, changes, describe_error(error))
                return
        record.status = "loaded"

    def _fail(self, record: PluginRecord, owner: Owner, changes: RegistryChanges, reason: str) -> None:
        record.traceback = traceback.format_exc()
        self._rollback(record, owner, changes)
        record.status = "failed"
        record.reason = reason

    def _check_hook_names(self, plugin: Any, name: str) -> None:
        for attribute in dir(plugin):
            if attribute.startswith("omnimm_") and self.hooks.parse_hookimpl_opts(plugin, attribute) is not None:
                if not hasattr(hookspecs, attribute):
                    known = ", ".join(a for a in dir(hookspecs) if a.startswith("omnimm_"))
                    raise pluggy.PluginValidationError(
                        plugin, f"plugin '{name}' implements unknown hook '{attribute}' (hooks: {known})"
                    )

    def _rollback(self, record: PluginRecord, owner: Owner, changes: RegistryChanges) -> None:
        changes.undo()  # entries it added go, entries it replaced or removed come back, its registries go
        for registry in all_registries().values():
            registry._drop_owner(owner)  # anything attributed to it that was not recorded (made in another context)
        if record.plugin is not None and self.hooks.is_registered(record.plugin):
            self.hooks.unregister(record.plugin)
        record.plugin = None

    def _call_plugin(self, plugin: Any, hook_name: str, **kwargs: Any) -> None:
        for implementation in getattr(self.hooks.hook, hook_name).get_hookimpls():
            if implementation.plugin is plugin:
                implementation.function(**{arg: kwargs[arg] for arg in implementation.argnames})

    def call_each(self, hook_name: str, **kwargs: Any) -> dict[str, str]:
        """Call a hook on every loaded plugin separately; return `{plugin: error}` for those that raised."""
        self.load()
        errors: dict[str, str] = {}
        for record in self.loaded_records():
            try:
                self._call_plugin(record.plugin, hook_name, **kwargs)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # a plugin's sys.exit must not end the command
                errors[record.name] = describe_error(error)
        return errors

    # -- queries --------------------------------------------------------------------------------------------------

    def loaded_records(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "loaded" and r.plugin is not None]

    def hint_for(self, component_name: str) -> str | None:
        """Why a `plugin/...` name may be missing: its plugin is switched off, broken, or not installed."""
        prefix = component_name.split("/", 1)[0] if "/" in component_name else None
        if prefix is None:
            return None
        record = self.records.get(prefix)
        if record is not None and record.status == "skipped":
            return f"the plugin '{prefix}' is installed but not loaded: {record.reason}"
        if record is not None and record.status == "failed":
            return f"the plugin '{prefix}' failed to load ({record.reason}); run `omnimm plugins -v` for details"
        if record is None and prefix in KNOWN_PLUGINS:
            from omnimm.deps import install_hint

            return f"'{prefix}/...' components come with the {prefix} plugin: {install_hint(KNOWN_PLUGINS[prefix])}"
        return None


def describe_error(error: BaseException) -> str:
    """One line for a plugin's error: its type and message (a `sys.exit` says so, with its code)."""
    if isinstance(error, SystemExit):
        return f"SystemExit: the plugin called sys.exit({error.code!r})"
    try:
        message = " ".join(str(error).split())
    except Exception:  # an exception whose __str__ raises is still reported
        message = "(its message could not be shown)"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _load_entry_point(entry_point: metadata.EntryPoint) -> Any:
    """`entry_point.load()`, saying in plain words when the entry point itself is wrong (not its plugin's code)."""
    declared = f"entry point '{entry_point.name} = {entry_point.value}'"
    match = entry_point.pattern.match(entry_point.value)
    if match is None:
        raise PluginError(f"{declared} is not 'package.module' or 'package.module:attribute'")
    module = match.group("module")
    try:
        return entry_point.load()
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module == missing or module.startswith(f"{missing}.")):
            raise PluginError(f"{declared}: its module '{module}' is not installed ({error})") from error
        raise


def _discover() -> list[tuple[metadata.EntryPoint, PluginRecord]]:
    """The installed entry points with their records, by name; among equal names the project's own plugin comes
    first, so that it keeps its name whatever the order of `sys.path`."""
    found = [(entry_point, _record_for(entry_point)) for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    return sorted(found, key=lambda pair: (pair[0].name, not pair[1].own))


def _is_own(entry_point: metadata.EntryPoint, distribution: str | None) -> bool:
    """One of the project's own plugins: declared by the omnimm distribution, its module under `omnimm_plugins.`."""
    return (
        distribution == BUILTIN
        and entry_point.name in KNOWN_PLUGINS
        and entry_point.value.startswith(f"{OWN_PLUGIN_PACKAGE}.")
    )


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _record_for(entry_point: metadata.EntryPoint) -> PluginRecord:
    dist = getattr(entry_point, "dist", None)
    meta = dist.metadata if dist is not None else None  # parsed once: it is the slow part of discovery
    dist_name = meta["Name"] if meta is not None else None
    record = PluginRecord(entry_point.name, entry_point.value, dist_name, meta["Version"] if meta is not None else None)
    # The project's own plugins have an extra of the same name that installs their dependencies.
    if _is_own(entry_point, dist_name):
        record.own = True
        record.extra = KNOWN_PLUGINS[entry_point.name]
    return record


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use, plugins not loaded until needed)."""
    global _manager
    if _manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = PluginManager()
    return _manager


def ensure_plugins_loaded() -> None:
    """Load plugins unless done already or in progress (registries call this before every read)."""
    manager = get_plugin_manager()
    if not manager.loaded and not manager.loading:
        manager.load()


def hint_for_name(component_name: str) -> str | None:
    """See `hint_for`."""
    return get_plugin_manager().hint_for(component_name)


def plugin_records() -> list[PluginRecord]:
    """Every plugin seen, loaded or not, sorted with the core first."""
    manager = get_plugin_manager()
    manager.load()
    return sorted(manager.records.values(), key=lambda r: (not r.builtin, r.name))


def register_plugin(plugin: Any, name: str, *, extra: str | None = None) -> PluginRecord:
    """See `register`."""
    return get_plugin_manager().register(plugin, name, extra=extra)


def plugin_folder(name: str) -> Path | None:
    """The folder of a loaded plugin's package (where its packaged `configs/` live); None if it is not loaded."""
    record = next((r for r in plugin_records() if r.name == name and r.plugin is not None), None)
    if record is None or not getattr(record.plugin, "__file__", None):
        return None
    return Path(record.plugin.__file__).parent


class _RegistryLoader:
    """The `PluginLoader` of the registries: this process's plugin manager."""

    def load(self) -> bool:
        ensure_plugins_loaded()
        return get_plugin_manager().loaded

    def hint_for(self, component_name: str) -> str | None:
        return hint_for_name(component_name)


use_plugin_loader(_RegistryLoader())
use_plugin_folders(plugin_folder)
