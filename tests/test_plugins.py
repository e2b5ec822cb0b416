"""Plugin discovery through real entry points (distributions on disk), in real subprocesses."""

from __future__ import annotations

import pytest

from omnimm.errors import PluginError

GOOD_PLUGIN = '''
from omnimm import ComponentConfig, hookimpl

class GoodConfig(ComponentConfig):
    """A good plugin's encoder."""
    width: int = 4

class GoodEncoder:
    def __init__(self, config):
        self.config = config

@hookimpl
def omnimm_register(registries):
    registries.encoders.register("good/encoder", GoodEncoder, config=GoodConfig)
'''

BROKEN_ON_IMPORT = """
raise RuntimeError("this plugin is broken on purpose")
"""

BROKEN_HALFWAY = """
from omnimm import hookimpl

@hookimpl
def omnimm_register(registries):
    registries.encoders.register("halfway/first", object)
    raise ValueError("second registration failed")
"""

MISSPELT_HOOK = """
from omnimm import hookimpl

@hookimpl
def omnimm_registr(registries):
    registries.encoders.register("misspelt/encoder", object)
"""

CLI_PLUGIN = '''
import typer
from omnimm import hookimpl

def hello(who: str = "world") -> None:
    """Say hello."""
    print(f"hello {who} from a plugin")

@hookimpl
def omnimm_cli(app):
    app.command("hello")(hello)
'''

CLI_BROKEN = """
from omnimm import hookimpl

@hookimpl
def omnimm_cli(app):
    raise RuntimeError("no commands today")
"""


@pytest.fixture
def site(fake_site):
    fake_site.distribution("good-dist", plugins={"good": "good_plugin"}, modules={"good_plugin": GOOD_PLUGIN})
    fake_site.distribution(
        "broken-dist", plugins={"broken": "broken_plugin"}, modules={"broken_plugin": BROKEN_ON_IMPORT}
    )
    return fake_site


def test_installed_plugin_is_discovered_and_its_component_builds(cli, site, python):
    listed = cli("list", "encoders", env=site.env)
    assert listed.returncode == 0, listed.output
    assert "good/encoder" in listed.stdout and "good" in listed.stdout
    built = python(
        """
        import omnimm
        encoder = omnimm.encoders.build({"name": "good/encoder", "width": 9})
        print(type(encoder).__name__, encoder.config.width)
        """,
        env=site.env,
    )
    assert built.stdout.strip() == "GoodEncoder 9", built.output


def test_a_plugin_that_raises_on_import_is_reported_and_others_still_work(cli, site, tmp_path):
    shown = cli("plugins", env=site.env)
    assert shown.returncode == 0, shown.output
    rows = {line.split("│")[1].strip(): line for line in shown.stdout.splitlines() if line.count("│") > 3}
    assert "failed" in rows["broken"]
    assert "RuntimeError: this plugin is broken on purpose" in rows["broken"]
    assert "loaded" in rows["good"] and "1 encoder" in rows["good"]
    assert "loaded" in rows["omnimm"]
    verbose = cli("plugins", "-v", env=site.env)
    assert "Traceback" in verbose.stdout and "broken_plugin.py" in verbose.stdout
    assert cli("plugins", "--check", env=site.env).returncode == 1
    # the rest of omnimm is unaffected
    assert cli("build", "configs/demo.yaml", env=site.env).returncode == 0


def test_a_plugin_failing_halfway_is_rolled_back(cli, fake_site):
    fake_site.distribution(
        "halfway-dist", plugins={"halfway": "halfway_plugin"}, modules={"halfway_plugin": BROKEN_HALFWAY}
    )
    shown = cli("plugins", env=fake_site.env)
    assert "ValueError: second registration failed" in shown.stdout
    listed = cli("list", "encoders", env=fake_site.env)
    assert "halfway/first" not in listed.stdout


def test_a_misspelt_hook_fails_the_plugin_with_the_hook_name(cli, fake_site):
    fake_site.distribution(
        "misspelt-dist", plugins={"misspelt": "misspelt_plugin"}, modules={"misspelt_plugin": MISSPELT_HOOK}
    )
    shown = cli("plugins", env=fake_site.env)
    assert "unknown hook 'omnimm_registr'" in shown.stdout
    assert "omnimm_register" in shown.stdout  # the valid hooks are listed


def test_autoload_can_be_disabled_and_plugins_named_explicitly(cli, site):
    disabled = cli("plugins", env={**site.env, "OMNIMM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    rows = {line.split("│")[1].strip(): line for line in disabled.stdout.splitlines() if line.count("│") > 3}
    assert "skipped" in rows["good"] and "OMNIMM_DISABLE_PLUGIN_AUTOLOAD=1" in rows["good"]
    assert "skipped" in rows["broken"]
    assert "loaded" in rows["omnimm"]  # the core's own components are always there
    named = cli("list", "encoders", env={**site.env, "OMNIMM_DISABLE_PLUGIN_AUTOLOAD": "1", "OMNIMM_PLUGINS": "good"})
    assert "good/encoder" in named.stdout


def test_allowlist_loads_only_the_named_plugins(cli, site):
    shown = cli("plugins", env={**site.env, "OMNIMM_PLUGINS": "good, nosuch"})
    rows = {line.split("│")[1].strip(): line for line in shown.stdout.splitlines() if line.count("│") > 3}
    assert "loaded" in rows["good"]
    assert "skipped" in rows["broken"] and "not listed in OMNIMM_PLUGINS=good,nosuch" in rows["broken"]
    assert "missing" in rows["nosuch"] and "named in OMNIMM_PLUGINS but not installed" in rows["nosuch"]


def test_a_component_of_a_skipped_plugin_says_why_it_is_missing(cli, site, tmp_path):
    config = tmp_path / "good.yaml"
    config.write_text("name: good/encoder\n")
    result = cli("config", "validate", config, "--kind", "encoders", env={**site.env, "OMNIMM_PLUGINS": "broken"})
    assert result.returncode == 1
    assert "the plugin 'good' is installed but not loaded: not listed in OMNIMM_PLUGINS=broken" in result.stderr


def test_two_distributions_with_the_same_plugin_name_are_reported(cli, site):
    site.distribution("impostor-dist", plugins={"good": "impostor_plugin"}, modules={"impostor_plugin": GOOD_PLUGIN})
    shown = cli("plugins", env=site.env)
    rows = [line for line in shown.stdout.splitlines() if line.startswith("│ good ")]
    assert len(rows) == 2, shown.output
    (loser,) = [row for row in rows if "failed" in row]
    assert "name clash: 'good' is already another plugin" in loser
    assert "good-dist 0.1.0, good_plugin" in loser and "impostor-dist 0.1.0, impostor_plugin" in loser


def test_plugins_can_add_cli_commands_and_a_broken_one_only_warns(cli, fake_site):
    fake_site.distribution("cli-dist", plugins={"greeter": "greeter_plugin"}, modules={"greeter_plugin": CLI_PLUGIN})
    fake_site.distribution("clibroken-dist", plugins={"grumpy": "grumpy_plugin"}, modules={"grumpy_plugin": CLI_BROKEN})
    result = cli("hello", "--who", "omnimm", env=fake_site.env)
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == "hello omnimm from a plugin"
    assert "warning: plugin 'grumpy' could not add its commands: RuntimeError: no commands today" in result.stderr
    assert "hello" in cli("--help", env=fake_site.env).stdout


def test_plugin_objects_can_be_registered_in_process():
    from omnimm import encoders, hookimpl, register_plugin

    class InlinePlugin:
        @hookimpl
        def omnimm_register(self, registries):
            registries.encoders.register("inline/encoder", object)

    record = register_plugin(InlinePlugin(), "inline-test")
    try:
        assert record.status == "loaded"
        assert record.components() == {"encoders": ["inline/encoder"]}
        assert "inline/encoder" in encoders
        with pytest.raises(ValueError, match="already loaded"):
            register_plugin(InlinePlugin(), "inline-test")
    finally:
        encoders.unregister("inline/encoder")

    class FailingPlugin:
        @hookimpl
        def omnimm_register(self, registries):
            registries.encoders.register("failing/encoder", object)
            raise RuntimeError("nope")

    with pytest.raises(PluginError, match="plugin 'failing-test' failed: RuntimeError: nope"):
        register_plugin(FailingPlugin(), "failing-test")
    assert "failing/encoder" not in encoders
