"""The package's modules depend on each other in one direction: no import cycle, function-level imports included.

Every `import` and `from ... import` is read with `ast`, wherever it sits (module level, inside functions, methods
or `try` blocks), relative imports resolved. Only imports under `if TYPE_CHECKING:` are left out: they never run.
`from package import name` counts as an import of `package.name` when that is a module, else of `package`.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "omnimm"

# The layers of the core, lowest first. A module may import only modules of its own layer or of lower ones.
KERNEL_LAYERS: list[set[str]] = [
    {"omnimm.errors", "omnimm.files", "omnimm.deps"},
    {"omnimm.configbase", "omnimm.configfiles"},
    {"omnimm.registry_core"},
    {"omnimm.hookspecs", "omnimm.plugins"},
    {"omnimm.registry"},
    {"omnimm.refs"},
    {"omnimm.training.configs", "omnimm.run"},
    {"omnimm.config"},
]
KERNEL = set().union(*KERNEL_LAYERS)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every runtime import statement in `tree`."""
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """For every module of the package: the package's modules it imports, each with the line of the first import."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, int] = {}
        for target, names, line in _imported_names(tree, module, path.name == "__init__.py"):
            targets = [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
            if len(targets) < len(names) or not names:
                targets.append(target)
            for imported in targets:
                if imported in modules and imported != module:
                    edges.setdefault(imported, line)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as `[a, b, ..., a]`, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} imports {b} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return "import cycle: " + " -> ".join(cycle) + "\n  " + "\n  ".join(steps)


def test_the_graph_sees_function_level_and_relative_imports():
    tree = ast.parse(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            from . import sibling
            from ..up import thing
            if TYPE_CHECKING:
                from omnimm.hidden import Type
            def f():
                import omnimm.inner
                from .near import x
            """
        )
    )
    found = {target for target, _, _ in _imported_names(tree, "omnimm.pkg.mod", is_package=False)}
    assert found == {"typing", "omnimm.pkg", "omnimm.up", "omnimm.inner", "omnimm.pkg.near"}
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_the_kernel_modules_exist():
    assert KERNEL <= set(_modules()), KERNEL - set(_modules())


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, _describe(cycle, graph)


def test_the_kernel_imports_only_downwards():
    graph = import_graph()
    layer_of = {module: index for index, layer in enumerate(KERNEL_LAYERS) for module in layer}
    upward = [
        f"{module} (layer {layer_of[module]}) imports {imported} (layer {layer_of[imported]}, line {line})"
        for module in sorted(KERNEL)
        for imported, line in graph[module].items()
        if imported in layer_of and layer_of[imported] > layer_of[module]
    ]
    assert not upward, "\n".join(upward)
    outside = [
        f"{module} imports {imported} (line {line})"
        for module in sorted(KERNEL)
        for imported, line in graph[module].items()
        if imported not in KERNEL and imported != PACKAGE
    ]
    assert not outside, "the core imports a module outside it:\n" + "\n".join(outside)


# -- what the layering must keep working ---------------------------------------------------------------------


def test_every_registry_is_importable_from_the_registry_module():
    import omnimm.registry
    import omnimm.registry_core

    defined = {n for n, v in vars(omnimm.registry_core).items() if isinstance(v, omnimm.registry_core.Registry)}
    assert defined, "no registry found"
    missing = sorted(n for n in defined if getattr(omnimm.registry, n, None) is not getattr(omnimm.registry_core, n))
    assert not missing, f"re-export these from omnimm.registry: {missing}"


def test_importing_the_registry_module_installs_the_plugin_loader_and_loads_plugins_on_first_read(python):
    result = python(
        """
        import sys
        import omnimm.registry
        assert "omnimm.plugins" in sys.modules  # the loader is there ...
        assert "omnimm.builtin.plugin" not in sys.modules  # ... but no plugin is loaded before a registry is read
        assert "omnimm_plugins.simct.plugin" not in sys.modules
        from omnimm.registry import evaluators, llms
        print("simct/gate" in evaluators.names(), llms.config_class("hf/causal-lm").__name__)
        """
    )
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == "True HFCausalLMConfig"


def test_a_fresh_interpreter_builds_a_plugin_component_from_the_registry_module(python):
    result = python(
        """
        from omnimm.registry import templates
        template = templates.get("valley/v0")
        print(type(template).__name__, "simct/gate" in __import__("omnimm").evaluators)
        """
    )
    assert result.returncode == 0, result.output
    assert result.stdout.strip().endswith(" True")


def test_a_fresh_interpreter_validates_a_config_naming_a_plugin_component(python):
    result = python(
        """
        from omnimm.config import validate_config
        print(type(validate_config({"name": "simct/gate"})).__name__)
        """
    )
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == "GateConfig"


def test_a_name_registered_in_another_registry_says_which(scratch_registry):
    from omnimm import ComponentConfig, UnknownComponentError

    widgets, gadgets = scratch_registry("widget"), scratch_registry("gadget")
    gadgets.register("demo/thing", object, config=ComponentConfig)
    widgets.register("demo/other", object, config=ComponentConfig)
    with pytest.raises(UnknownComponentError) as caught:
        widgets.get("demo/thing")
    assert str(caught.value) == (
        "unknown widget 'demo/thing': it is a gadget, not a widget (did you mean 'demo/other'?); "
        "available test-widgets-0: demo/other"
    )


def test_validating_an_adapter_as_a_connector_says_it_is_an_adapter():
    from omnimm import ComponentConfig, ConfigError, ConnectorRef

    class Holder(ComponentConfig):
        connector: ConnectorRef

    with pytest.raises(ConfigError) as caught:
        Holder.from_dict({"connector": {"name": "omnimm/mlp"}})
    message = str(caught.value)
    assert "connector.name: unknown connector 'omnimm/mlp': it is an adapter, not a connector" in message
    assert "; available connectors: " in message or "; no connectors are registered" in message
