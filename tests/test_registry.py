"""Registry: registration forms, lazy entries, lookup, wildcards and the errors users meet."""

from __future__ import annotations

import sys
import textwrap

import pytest
from pydantic import Field

from omnimm import ComponentConfig, encoders
from omnimm.errors import ConfigError, DuplicateComponentError, MissingDependencyError, UnknownComponentError
from omnimm.registry import Owner, get_registry, registering_as, registries


class WidgetConfig(ComponentConfig):
    """A widget with a size."""

    size: int = Field(3, ge=1)


class Widget:
    """Something built from a WidgetConfig."""

    def __init__(self, config: WidgetConfig, *, scale: int = 1) -> None:
        self.config = config
        self.area = config.size * config.size * scale


def test_decorator_and_plain_call_register_the_same_way(scratch_registry):
    reg = scratch_registry()

    @reg.register("demo/decorated", config=WidgetConfig)
    class Decorated(Widget):
        pass

    reg.register("demo/plain", Widget, config=WidgetConfig)
    assert reg.get("demo/decorated") is Decorated
    assert reg.get("demo/plain") is Widget
    assert reg.config_class("demo/plain") is WidgetConfig
    assert reg.names() == ["demo/decorated", "demo/plain"]
    assert "demo/plain" in reg and "demo/other" not in reg
    assert len(reg) == 2


def test_build_validates_a_mapping_and_passes_dependencies(scratch_registry):
    reg = scratch_registry()
    reg.register("demo/widget", Widget, config=WidgetConfig)
    built = reg.build({"name": "demo/widget", "size": 4}, scale=2)
    assert isinstance(built, Widget)
    assert built.area == 32
    assert isinstance(built.config, WidgetConfig) and built.config.name == "demo/widget"


def test_build_accepts_an_instance_without_a_name_when_its_class_is_unambiguous(scratch_registry):
    reg = scratch_registry()
    reg.register("demo/widget", Widget, config=WidgetConfig)
    built = reg.build(WidgetConfig(size=2))
    assert built.area == 4 and built.config.name == "demo/widget"
    assert reg.build("demo/widget").area == 9  # a bare name means all defaults


def test_build_reports_bad_options_with_their_path(scratch_registry):
    reg = scratch_registry()
    reg.register("demo/widget", Widget, config=WidgetConfig)
    with pytest.raises(ConfigError) as caught:
        reg.build({"name": "demo/widget", "size": 0, "colour": "red"})
    text = str(caught.value)
    assert "size: Input should be greater than or equal to 1" in text
    assert "colour: unknown field 'colour'" in text


def test_names_filters_with_case_insensitive_wildcards(scratch_registry):
    reg = scratch_registry()
    for name in ["vit/base", "vit/tiny", "clip/ViT-B-16", "resnet/50"]:
        reg.register(name, Widget, config=WidgetConfig)
    assert reg.names("*vit*") == ["clip/ViT-B-16", "vit/base", "vit/tiny"]
    assert reg.names("vit/*", "resnet/*") == ["resnet/50", "vit/base", "vit/tiny"]
    assert reg.names("nothing*") == []


def test_lazy_entry_imports_its_module_only_on_first_use(scratch_registry, tmp_path, monkeypatch):
    package = tmp_path / "lazy_pkg_registry"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text(
        textwrap.dedent("""
        from omnimm import ComponentConfig
        class HeavyConfig(ComponentConfig):
            '''Config of a heavy component.'''
            width: int = 2
    """)
    )
    (package / "heavy.py").write_text(
        textwrap.dedent("""
        IMPORTS = []
        class Heavy:
            def __init__(self, config):
                self.width = config.width
        IMPORTS.append("imported")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = scratch_registry()
    reg.register_lazy("lazy/heavy", "lazy_pkg_registry.heavy:Heavy", config="lazy_pkg_registry.config:HeavyConfig")
    assert reg.names() == ["lazy/heavy"]
    assert reg.entry("lazy/heavy").lazy
    reg.validate({"name": "lazy/heavy", "width": 5})  # validation loads the light config module only
    assert "lazy_pkg_registry.heavy" not in sys.modules
    assert reg.build({"name": "lazy/heavy", "width": 5}).width == 5
    assert "lazy_pkg_registry.heavy" in sys.modules
    assert not reg.entry("lazy/heavy").lazy
    assert reg.entry("lazy/heavy").summary() == "Config of a heavy component."


def test_lazy_entry_with_a_missing_dependency_names_the_extra(scratch_registry, tmp_path, monkeypatch):
    (tmp_path / "needs_missing_dep.py").write_text("import omnimm_no_such_dependency_xyz\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = scratch_registry()
    reg.register_lazy("demo/thing", "needs_missing_dep:Thing", extra="valley")
    with pytest.raises(MissingDependencyError) as caught:
        reg.get("demo/thing")
    message = str(caught.value)
    assert "omnimm_no_such_dependency_xyz" in message
    assert 'pip install "omnimm[valley]"' in message
    assert "widget 'demo/thing'" in message
    assert isinstance(caught.value, ImportError)


def test_lazy_entry_with_a_wrong_module_path_is_not_blamed_on_dependencies(scratch_registry):
    reg = scratch_registry()
    reg.register_lazy("demo/typo", "omnimm.builtin.modulez:TinyViT")
    with pytest.raises(ModuleNotFoundError) as caught:
        reg.get("demo/typo")
    assert not isinstance(caught.value, MissingDependencyError)


def test_lazy_entry_with_a_wrong_attribute_says_which(scratch_registry):
    reg = scratch_registry()
    reg.register_lazy("demo/attr", "omnimm.builtin.configs:NoSuchThing")
    with pytest.raises(ImportError, match="has no attribute 'NoSuchThing'"):
        reg.get("demo/attr")


@pytest.mark.parametrize("target", ["no_colon.module", ":Thing", "module:", ""])
def test_lazy_target_must_use_entry_point_notation(scratch_registry, target):
    with pytest.raises(ValueError, match=r"package\.module:Attribute"):
        scratch_registry().register_lazy("demo/bad", target)


def test_duplicate_name_names_both_owners(scratch_registry):
    reg = scratch_registry()
    with registering_as(Owner("plugin 'first' (first-dist 1.0)", plugin="first")):
        reg.register("demo/same", Widget, config=WidgetConfig)
    with registering_as(Owner("plugin 'second' (second-dist 2.0)", plugin="second")):
        with pytest.raises(DuplicateComponentError) as caught:
            reg.register("demo/same", Widget, config=WidgetConfig)
    message = str(caught.value)
    assert "plugin 'first' (first-dist 1.0)" in message
    assert "plugin 'second' (second-dist 2.0)" in message
    assert "override=True" in message


def test_duplicate_from_plain_code_names_the_modules(scratch_registry):
    reg = scratch_registry()
    reg.register("demo/same", Widget, config=WidgetConfig)
    with pytest.raises(DuplicateComponentError, match=f"module '{__name__}'"):
        reg.register("demo/same", Widget, config=WidgetConfig)


def test_override_replaces_on_purpose(scratch_registry):
    reg = scratch_registry()
    reg.register("demo/same", Widget, config=WidgetConfig)

    class Better(Widget):
        pass

    reg.register("demo/same", Better, config=WidgetConfig, override=True)
    assert reg.get("demo/same") is Better


def test_unknown_name_lists_close_matches_and_available_names(scratch_registry):
    reg = scratch_registry()
    for name in ["demo/tiny-cnn", "demo/tiny-vit", "other/resnet"]:
        reg.register(name, Widget, config=WidgetConfig)
    with pytest.raises(UnknownComponentError) as caught:
        reg.get("demo/tiny-cnm")
    error = caught.value
    assert error.suggestions[0] == "demo/tiny-cnn"
    assert "did you mean 'demo/tiny-cnn'" in str(error)
    assert "available test-widgets-0: demo/tiny-cnn, demo/tiny-vit, other/resnet" in str(error)
    assert isinstance(error, LookupError)


def test_unknown_name_without_its_plugin_prefix_is_suggested(scratch_registry):
    reg = scratch_registry()
    reg.register("thirdparty/tiny-cnn", Widget, config=WidgetConfig)
    with pytest.raises(UnknownComponentError, match="did you mean 'thirdparty/tiny-cnn'"):
        reg.get("tiny-cnn")


def test_unknown_name_of_a_known_plugin_says_which_extra_installs_it(monkeypatch):
    from omnimm import plugins

    assert set(plugins.KNOWN_PLUGINS) == {"valley", "favchat", "recse", "simct", "haruhi", "fakenews"}
    monkeypatch.setitem(plugins.KNOWN_PLUGINS, "futureplugin", "future-extra")
    with pytest.raises(UnknownComponentError) as caught:
        encoders.get("futureplugin/face-encoder")
    assert "'futureplugin/...' components come with the futureplugin plugin: " in str(caught.value)
    assert 'pip install "omnimm[future-extra]"' in str(caught.value)


def test_long_listings_are_cut_with_a_pointer_to_the_cli(scratch_registry):
    reg = scratch_registry()
    for index in range(30):
        reg.register(f"many/item-{index:02d}", Widget, config=WidgetConfig)
    message = reg.unknown_message("zzz")
    assert "... and 10 more (omnimm list test-widgets-0)" in message


def test_config_must_be_a_component_config(scratch_registry):
    class NotAConfig:
        pass

    with pytest.raises(TypeError, match=r"must subclass omnimm\.ComponentConfig"):
        scratch_registry().register("demo/x", Widget, config=NotAConfig)


def test_unregister_removes_the_entry(scratch_registry):
    reg = scratch_registry()
    reg.register("demo/gone", Widget, config=WidgetConfig)
    assert reg.unregister("demo/gone").target is Widget
    assert "demo/gone" not in reg


def test_registries_namespace_finds_and_creates_registries():
    assert registries.encoders is encoders
    assert registries["encoders"] is encoders
    created = registries.new("gizmo-test")
    try:
        assert registries.new("gizmo-test") is created  # idempotent
        assert get_registry("gizmo-tests") is created
        assert created.a_kind == "a gizmo-test"
    finally:
        from omnimm import registry as registry_module

        registry_module._REGISTRIES.pop("gizmo-tests")
    with pytest.raises(UnknownComponentError, match="did you mean 'encoders'"):
        get_registry("encoder")


def test_every_core_registry_exists_with_its_article():
    kinds = {
        name: get_registry(name).a_kind for name in ["encoders", "adapters", "fusers", "llms", "evaluators", "models"]
    }
    assert kinds == {
        "encoders": "an encoder",
        "adapters": "an adapter",
        "fusers": "a fuser",
        "llms": "an llm",
        "evaluators": "an evaluator",
        "models": "a model",
    }
