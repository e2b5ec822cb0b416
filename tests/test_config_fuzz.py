"""Mutated packaged configs: loading and validating gives a config or a `ConfigError`, nothing else, in bounded time.

Every example starts from a config file the project or a plugin ships, changes its data (types, keys, component
names, nesting, aliases) or its bytes (encodings, truncation, flipped bytes, control characters, hostile YAML), and
loads it through `omnimm.config.load_config`, and for a few through `omnimm config validate` in a subprocess. Runs
are derandomized, so CI tries the same examples every time; the tally is printed at the end of the module.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimm.config import load_config
from omnimm.errors import ConfigError
from omnimm.registry import all_registries

from .conftest import OMNIMM, REPO, run

PACKAGED = sorted([*REPO.glob("configs/*.yaml"), *REPO.glob("plugins/*/configs/*.yaml")])
PACKAGED_DATA = {path: yaml.safe_load(path.read_text()) for path in PACKAGED}

DATA_EXAMPLES = 140
BYTE_EXAMPLES = 140
CLI_EXAMPLES = 20
FUZZ = settings(
    derandomize=True,  # the same examples on every run and machine
    database=None,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

tally: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_tally(request):
    load_config(REPO / "configs" / "demo.yaml")  # plugins load on first use: not inside an example's deadline
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not tally["tried"] + tally["cli_tried"]:
        return
    with capture.global_and_fixture_disabled():  # past pytest's capture, so the figures show in a plain run
        reporter.write_line(
            f"\nconfig fuzz: {tally['tried']} mutated configs tried, {tally['clean']} clean "
            f"({tally['loaded']} loaded, {tally['config_error']} ConfigError); "
            f"CLI: {tally['cli_tried']} tried, {tally['cli_clean']} clean"
        )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- what loading may do ------------------------------------------------------------------------------------------


def assert_loads_or_config_error(path: Path) -> None:
    tally["tried"] += 1
    try:
        load_config(path)
    except ConfigError as error:
        assert error.issues, "a ConfigError names at least one issue"
        for issue in error.issues:
            assert issue.message and "\n" not in issue.message, issue
            assert issue.format(error.source) in str(error)
        tally["config_error"] += 1
    else:
        tally["loaded"] += 1
    tally["clean"] += 1


# -- data mutations -----------------------------------------------------------------------------------------------

REGISTERED = sorted({name for registry in all_registries().values() for name in registry.names()})
component_names = st.sampled_from([*REGISTERED, "omnimm/tiny-vt", "valley/", "no/such-thing", "", "../x", "a" * 300])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 2**53, 2**53 + 1, -(2**63), 10**30, 10**400])
    | st.floats()  # inf and nan included
    | st.sampled_from([1e59, 1e69, -1e308, 0.5, 1e-320])
    | st.text(max_size=20)  # control characters and surrogates included
)
values = st.recursive(
    scalars | component_names,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


def paths(node: Any, prefix: tuple[Any, ...] = (), seen: frozenset[int] = frozenset()) -> list[tuple[Any, ...]]:
    """Every path into the data, not following a cycle (a container inside itself) around again."""
    found = [prefix]
    if id(node) in seen or not isinstance(node, (dict, list)):
        return found
    seen |= {id(node)}
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        found += paths(value, (*prefix, key), seen)
    return found


def get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def put(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    get(root, path[:-1])[path[-1]] = value
    return root


@st.composite
def mutated_data(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(PACKAGED_DATA[draw(st.sampled_from(PACKAGED))])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(data)))
        target = get(data, where)
        operation = draw(st.sampled_from(["replace", "drop", "rename", "add", "component", "deepen", "alias", "cycle"]))
        if operation == "replace":
            data = put(data, where, draw(values))
        elif operation == "drop" and isinstance(target, dict) and target:
            del target[draw(st.sampled_from(sorted(target)))]
        elif operation == "rename" and isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            new_key = draw(st.sampled_from([key + "s", key[:-1], key.upper(), "", "name"]) | st.text(max_size=8))
            target[new_key] = target.pop(key)
        elif operation == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=10))] = draw(values)
        elif operation == "component":
            named = [p for p in paths(data) if p and p[-1] == "name"] or [where]
            data = put(data, draw(st.sampled_from(named)), draw(component_names))
        elif operation == "deepen":
            levels, wrap = draw(st.integers(1, 130)), draw(st.sampled_from(["list", "dict"]))
            for _ in range(levels):
                target = [target] if wrap == "list" else {"x": target}
            data = put(data, where, target)
        elif operation == "alias":  # the same object twice: YAML writes an anchor and an alias
            data = put(data, draw(st.sampled_from(paths(data))), target)
        elif operation == "cycle" and isinstance(target, (dict, list)):
            target.append(target) if isinstance(target, list) else target.update(me=target)
    return data


def serialise(data: Any, as_json: bool, flow: bool | None) -> tuple[str, bytes]:
    if as_json:
        try:
            return ".json", json.dumps(data, allow_nan=True).encode()
        except (ValueError, TypeError):  # a cycle or a non-string key: YAML holds it
            pass
    return ".yaml", yaml.safe_dump(data, allow_unicode=True, default_flow_style=flow, sort_keys=False).encode()


@settings(FUZZ, max_examples=DATA_EXAMPLES)
@given(data=mutated_data(), as_json=st.booleans(), flow=st.sampled_from([None, False, True]))
def test_mutated_config_data_loads_or_gives_a_config_error(scratch, data, as_json, flow):
    suffix, content = serialise(data, as_json, flow)
    path = scratch / f"data{suffix}"
    path.write_bytes(content)
    assert_loads_or_config_error(path)


# -- byte mutations -----------------------------------------------------------------------------------------------

HOSTILE_SNIPPETS = [
    b"x: !!float nope\n",
    b"x: !!int twelve\n",
    b"x: !!binary '@@@'\n",
    b"x: !!timestamp 2020-13-45\n",
    b"x: !!python/object:os.system\n",
    b"x: " + b"9" * 5000 + b"\n",
    b"a: &a [*a]\n",
    b"x: *undefined\n",
    b"? [a, b]\n: 1\n",
    b"---\nb: 1\n",
    b"<<: [1, 2]\n",
    b"x: " + b"[" * 200 + b"]" * 200 + b"\n",
    b"l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n"
    + b"".join(b"l%d: &l%d [%s]\n" % (i, i, b", ".join([b"*l%d" % (i - 1)] * 10)) for i in range(1, 10)),
]
CONTROL_CHARS = [chr(c) for c in [*range(0x20), 0x7F, 0x85, *range(0x80, 0xA0), 0xFEFF, 0xFFFE]]


@st.composite
def mutated_bytes(draw: st.DrawFn) -> tuple[str, bytes]:
    source = draw(st.sampled_from(PACKAGED))
    as_json = draw(st.booleans())
    suffix = ".json" if as_json else ".yaml"
    text = json.dumps(PACKAGED_DATA[source], indent=1) if as_json else source.read_text()
    content = text.encode()
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(st.sampled_from(["encode", "truncate", "flip", "control", "snippet", "duplicate"]))
        at = draw(st.integers(0, len(content)))
        if operation == "encode":
            decoded = content.decode("utf-8", errors="replace")
            encoding = draw(st.sampled_from(["latin-1", "utf-16", "utf-16-be", "utf-32", "utf-8-sig", "cp1252"]))
            content = (decoded[: at // 2] + "é中" + decoded[at // 2 :]).encode(encoding, errors="replace")
        elif operation == "truncate":
            content = content[:at]
        elif operation == "flip":
            for position in draw(st.lists(st.integers(0, max(len(content) - 1, 0)), min_size=1, max_size=4)):
                if content:
                    flipped = content[position] ^ draw(st.integers(1, 255))
                    content = content[:position] + bytes([flipped]) + content[position + 1 :]
        elif operation == "control":
            content = content[:at] + draw(st.sampled_from(CONTROL_CHARS)).encode() + content[at:]
        elif operation == "snippet":
            line_start = content.rfind(b"\n", 0, at) + 1
            content = content[:line_start] + draw(st.sampled_from(HOSTILE_SNIPPETS)) + content[line_start:]
        elif operation == "duplicate":
            lines = content.splitlines(keepends=True) or [b""]
            index = draw(st.integers(0, len(lines) - 1))
            content = b"".join([*lines[: index + 1], lines[index], *lines[index + 1 :]])
    return suffix, content


@settings(FUZZ, max_examples=BYTE_EXAMPLES)
@given(mutated=mutated_bytes())
def test_mutated_config_bytes_load_or_give_a_config_error(scratch, mutated):
    suffix, content = mutated
    path = scratch / f"bytes{suffix}"
    path.write_bytes(content)
    assert_loads_or_config_error(path)


# -- the CLI ------------------------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=CLI_EXAMPLES, deadline=timedelta(seconds=60))  # a subprocess each: startup dominates
@given(mutated=mutated_bytes() | st.builds(lambda d: serialise(d, False, None), mutated_data()))
def test_cli_validate_prints_ok_or_config_errors_without_a_traceback(scratch, mutated):
    suffix, content = mutated
    path = scratch / f"cli{suffix}"
    path.write_bytes(content)
    tally["cli_tried"] += 1
    result = run([str(OMNIMM), "config", "validate", str(path)], timeout=60)
    assert "Traceback" not in result.output, result.output
    if result.returncode == 0:
        assert result.stdout.startswith(f"ok: {path}"), result.output
    else:
        assert result.returncode == 1, result.output
        head, *issues = result.stderr.splitlines()
        assert head.startswith(f"{path}: ") and " config error" in head, result.output
        assert issues and all(line.startswith(f"  {path}") for line in issues), result.output
    tally["cli_clean"] += 1
