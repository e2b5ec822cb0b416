"""Hostile and careless plugins, installed for real (distributions with entry points on PYTHONPATH), in real
subprocesses: whatever a plugin does while importing or registering, the other plugins and every command keep
working, the registries are as they were before it, and `omnimm plugins` says what went wrong."""

from __future__ import annotations

import pytest
import tomllib

from omnimm.errors import PluginError
from omnimm.plugins import KNOWN_PLUGINS, OWN_PLUGIN_PACKAGE

from .conftest import REPO

pytestmark = pytest.mark.timeout(300)

OWNER_OF_THE_CORE = "plugin 'omnimm' (omnimm "

OVERRIDE_THEN_FAIL = """
from omnimm import hookimpl

@hookimpl
def omnimm_register(registries):
    registries.adapters.register("omnimm/mlp", object, override=True)
    registries.encoders.register_lazy("omnimm/tiny-vit", "nowhere.at_all:Encoder", override=True)
    registries.adapters.register("recse/reshape", object, override=True)  # another plugin's component
    registries.templates.unregister("omnimm/plain")
    registries.new("gadget").register("overrider/gadget", object)
    registries.encoders.register("overrider/encoder", object)
    raise ValueError("failed after replacing built-ins")
"""

EXIT_AT_IMPORT = """
import sys
sys.exit(3)
"""

BARE_EXIT_AT_IMPORT = """
import sys
sys.exit()
"""

EXIT_AT_REGISTRATION = """
import sys
from omnimm import hookimpl

@hookimpl
def omnimm_register(registries):
    registries.encoders.register("quitter/encoder", object)
    registries.adapters.register("omnimm/mlp", object, override=True)
    sys.exit("giving up")
"""

GENERATOR_EXIT_AT_REGISTRATION = """
from omnimm import hookimpl

@hookimpl
def omnimm_register(registries):
    registries.encoders.register("quitter/encoder", object)
    raise GeneratorExit
"""

CUSTOM_BASE_EXCEPTION_AT_REGISTRATION = """
from omnimm import hookimpl

class Abort(BaseException):
    pass

@hookimpl
def omnimm_register(registries):
    registries.encoders.register("quitter/encoder", object)
    raise Abort("not an Exception")
"""

EXIT_IN_CLI_HOOK = """
import sys
from omnimm import hookimpl

@hookimpl
def omnimm_cli(app):
    sys.exit(4)
"""

UNKNOWN_REGISTRY = """
from omnimm import hookimpl

@hookimpl
def omnimm_register(registries):
    registries.encoders.register("careless/encoder", object)
    registries.widgets.register("careless/widget", object)
"""

UNPRINTABLE_ERROR = """
from omnimm import hookimpl

class Weird(Exception):
    def __str__(self):
        raise RuntimeError("no message either")

@hookimpl
def omnimm_register(registries):
    raise Weird()
"""

IMPOSTOR = """
import os
from pathlib import Path
from omnimm import hookimpl

Path(os.environ["IMPOSTOR_MARKER"]).write_text("imported")

@hookimpl
def omnimm_register(registries):
    registries.connectors.register("impostor/connector", object)
"""


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each row of the `omnimm plugins` table."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines() if line.count("│") > 3]


def row_of(stdout: str, plugin: str, source: str | None = None) -> list[str]:
    (row,) = [r for r in table_rows(stdout) if r[0] == plugin and (source is None or r[1].startswith(source))]
    return row


# -- rollback restores what a failed plugin replaced ---------------------------------------------------------------


def test_a_failed_plugin_that_overrode_components_gives_them_back_exactly(cli, python, fake_site):
    fake_site.distribution(
        "override-dist", plugins={"overrider": "overrider_plugin"}, modules={"overrider_plugin": OVERRIDE_THEN_FAIL}
    )
    shown = cli("plugins", env=fake_site.env)
    assert shown.returncode == 0, shown.output
    assert row_of(shown.stdout, "overrider")[2:] == ["failed", "-", "ValueError: failed after replacing built-ins"]
    checked = python(
        """
        import omnimm
        from omnimm.registry import all_registries, templates
        mlp, vit = omnimm.adapters.entry("omnimm/mlp"), omnimm.encoders.entry("omnimm/tiny-vit")
        print(mlp.owner.label, mlp.target, vit.target)
        print(omnimm.adapters.entry("recse/reshape").owner.label)
        print("omnimm/plain" in templates, "gadgets" in all_registries(), "overrider/encoder" in omnimm.encoders)
        """,
        env=fake_site.env,
    )
    assert checked.returncode == 0, checked.output
    core_line, recse_line, rest = checked.stdout.strip().splitlines()
    assert core_line.startswith(OWNER_OF_THE_CORE)
    assert core_line.endswith(" omnimm.builtin.modules:MLPProjector omnimm.builtin.modules:TinyViT")
    assert recse_line.startswith("plugin 'recse' (omnimm ")
    assert rest == "True False False"
    built = cli("build", "configs/demo.yaml", env=fake_site.env)  # uses omnimm/tiny-vit and omnimm/mlp
    assert built.returncode == 0, built.output
    assert "adapter: MLPProjector [omnimm/mlp]" in built.stdout


def test_rollback_in_process_puts_back_the_very_same_entries():
    from omnimm import hookimpl, register_plugin
    from omnimm.registry import adapters, encoders, templates

    before = {name: adapters.entry(name) for name in adapters.names()}
    plain = templates.entry("omnimm/plain")

    class Overrider:
        @hookimpl
        def omnimm_register(self, registries):
            registries.adapters.register("omnimm/mlp", object, override=True)
            registries.adapters.register("omnimm/mlp", dict, override=True)  # twice: the first one must not stick
            registries.templates.unregister("omnimm/plain")
            registries.encoders.register("overrider-test/encoder", object)
            raise RuntimeError("halfway")

    with pytest.raises(PluginError, match="plugin 'overrider-test' failed: RuntimeError: halfway"):
        register_plugin(Overrider(), "overrider-test")
    assert {name: adapters.entry(name) for name in adapters.names()} == before
    assert all(adapters.entry(name) is entry for name, entry in before.items())
    assert templates.entry("omnimm/plain") is plain
    assert "overrider-test/encoder" not in encoders


# -- sys.exit and other BaseExceptions are contained ---------------------------------------------------------------

EXITING = {
    "sys.exit(3) at import": (EXIT_AT_IMPORT, "SystemExit: the plugin called sys.exit(3)"),
    "sys.exit() at import": (BARE_EXIT_AT_IMPORT, "SystemExit: the plugin called sys.exit(None)"),
    "sys.exit at registration": (EXIT_AT_REGISTRATION, "SystemExit: the plugin called sys.exit('giving up')"),
    "GeneratorExit at registration": (GENERATOR_EXIT_AT_REGISTRATION, "GeneratorExit"),
    "BaseException subclass at registration": (CUSTOM_BASE_EXCEPTION_AT_REGISTRATION, "Abort: not an Exception"),
}


@pytest.mark.parametrize("case", list(EXITING))
def test_a_plugin_that_exits_is_reported_and_every_command_still_runs(cli, fake_site, case):
    source, reason = EXITING[case]
    fake_site.distribution("quitter-dist", plugins={"quitter": "quitter_plugin"}, modules={"quitter_plugin": source})
    shown = cli("plugins", env=fake_site.env)
    assert shown.returncode == 0, shown.output
    assert row_of(shown.stdout, "quitter")[1:] == ["quitter-dist 0.1.0", "failed", "-", reason]
    assert row_of(shown.stdout, "valley")[2] == "loaded"  # the others load as usual
    assert cli("plugins", "--check", env=fake_site.env).returncode == 1
    built = cli("build", "configs/demo.yaml", env=fake_site.env)
    assert built.returncode == 0, built.output
    assert "adapter: MLPProjector [omnimm/mlp]" in built.stdout  # rolled back to the core's
    assert "quitter/encoder" not in cli("list", "encoders", env=fake_site.env).stdout


def test_a_plugin_that_exits_while_adding_commands_only_warns(cli, fake_site):
    fake_site.distribution(
        "exitcli-dist", plugins={"exitcli": "exitcli_plugin"}, modules={"exitcli_plugin": EXIT_IN_CLI_HOOK}
    )
    listed = cli("list", "adapters", env=fake_site.env)
    assert listed.returncode == 0, listed.output
    assert "omnimm/mlp" in listed.stdout
    assert "warning: plugin 'exitcli' could not add its commands: SystemExit: the plugin called sys.exit(4)" in (
        listed.stderr
    )


def test_a_keyboard_interrupt_while_loading_goes_through_after_the_rollback():
    from omnimm import hookimpl, plugin_records, register_plugin
    from omnimm.registry import encoders

    class Interrupted:
        @hookimpl
        def omnimm_register(self, registries):
            registries.encoders.register("interrupted-test/encoder", object)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        register_plugin(Interrupted(), "interrupted-test")
    assert "interrupted-test/encoder" not in encoders
    (record,) = [r for r in plugin_records() if r.name == "interrupted-test"]
    assert (record.status, record.reason) == ("failed", "interrupted while loading")


def test_sys_exit_in_a_plugin_registered_in_process_raises_a_plugin_error():
    from omnimm import encoders, hookimpl, register_plugin

    class Quitter:
        @hookimpl
        def omnimm_register(self, registries):
            registries.encoders.register("quitter-test/encoder", object)
            raise SystemExit(2)

    with pytest.raises(PluginError, match=r"plugin 'quitter-test' failed: SystemExit: the plugin called sys.exit\(2\)"):
        register_plugin(Quitter(), "quitter-test")
    assert "quitter-test/encoder" not in encoders


# -- the project's own plugins keep their names --------------------------------------------------------------------


@pytest.mark.parametrize("allow", [None, "valley"])
def test_a_third_party_entry_point_named_like_an_own_plugin_is_a_clash(cli, fake_site, tmp_path, allow):
    marker = tmp_path / "impostor-was-imported"
    fake_site.distribution(
        "impostor-dist", plugins={"valley": "impostor_plugin"}, modules={"impostor_plugin": IMPOSTOR}
    )
    env = {**fake_site.env, "IMPOSTOR_MARKER": str(marker), **({"OMNIMM_PLUGINS": allow} if allow else {})}
    shown = cli("plugins", env=env)
    assert shown.returncode == 0, shown.output
    own = row_of(shown.stdout, "valley", "omnimm ")
    assert own[2] == "loaded" and "connector" in own[3]
    clash = row_of(shown.stdout, "valley", "impostor-dist")
    assert clash[2] == "failed"
    assert clash[4].startswith("name clash: 'valley' is already omnimm's own plugin (omnimm ")
    assert "omnimm_plugins.valley.plugin" in clash[4]
    assert "this entry point (impostor-dist 0.1.0, impostor_plugin) is not loaded" in clash[4]
    assert not marker.exists()  # never imported
    listed = cli("list", "connectors", env=env)
    assert "valley/stpool" in listed.stdout and "impostor" not in listed.stdout


def test_a_third_party_entry_point_named_omnimm_is_a_clash(cli, fake_site, tmp_path):
    marker = tmp_path / "impostor-was-imported"
    fake_site.distribution(
        "impostor-dist", plugins={"omnimm": "impostor_plugin"}, modules={"impostor_plugin": IMPOSTOR}
    )
    shown = cli("plugins", env={**fake_site.env, "IMPOSTOR_MARKER": str(marker)})
    assert row_of(shown.stdout, "omnimm", "omnimm ")[2] == "loaded"
    clash = row_of(shown.stdout, "omnimm", "impostor-dist")
    assert clash[2] == "failed" and "omnimm.builtin.plugin" in clash[4] and "impostor_plugin" in clash[4]
    assert not marker.exists()


# -- careless plugins ---------------------------------------------------------------------------------------------


def test_careless_plugins_are_each_reported_with_a_clear_reason(cli, fake_site):
    fake_site.distribution(
        "careless-dist", plugins={"careless": "careless_plugin"}, modules={"careless_plugin": UNKNOWN_REGISTRY}
    )
    fake_site.distribution("weird-dist", plugins={"weird": "weird_plugin"}, modules={"weird_plugin": UNPRINTABLE_ERROR})
    fake_site.distribution("absent-dist", plugins={"absent": "absent_plugin_zz.plugin"}, modules={})
    fake_site.distribution("noattr-dist", plugins={"noattr": "noattr_plugin:plugin"}, modules={"noattr_plugin": ""})
    fake_site.distribution("garbled-dist", plugins={"garbled": "not a module path!"}, modules={})
    shown = cli("plugins", env=fake_site.env)
    assert shown.returncode == 0, shown.output
    reasons = {row[0]: row[4] for row in table_rows(shown.stdout) if row[2] == "failed"}
    assert reasons["careless"].startswith("UnknownComponentError: unknown registry 'widgets'; registries: adapters,")
    assert "registries.new(kind)" in reasons["careless"]
    assert reasons["weird"] == "Weird: (its message could not be shown)"
    assert reasons["absent"] == (
        "PluginError: entry point 'absent = absent_plugin_zz.plugin': its module 'absent_plugin_zz.plugin' is not "
        "installed (No module named 'absent_plugin_zz')"
    )
    assert reasons["noattr"] == "AttributeError: module 'noattr_plugin' has no attribute 'plugin'"
    assert reasons["garbled"] == (
        "PluginError: entry point 'garbled = not a module path!' is not 'package.module' or 'package.module:attribute'"
    )
    assert "careless/encoder" not in cli("list", "encoders", env=fake_site.env).stdout
    assert cli("build", "configs/demo.yaml", env=fake_site.env).returncode == 0


def test_every_plugin_the_distribution_declares_is_known_as_its_own(python):
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["omnimm.plugins"]
    assert set(declared) == set(KNOWN_PLUGINS)
    assert all(target.startswith(f"{OWN_PLUGIN_PACKAGE}.") for target in declared.values())
    seen = python(
        """
        from omnimm import plugin_records
        print(sorted(r.name for r in plugin_records() if r.own))
        """
    )
    assert seen.stdout.strip() == repr(sorted(declared)), seen.output
