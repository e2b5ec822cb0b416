"""Typed configs: references resolved through registries, files, round trips, error paths, JSON schema."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Annotated

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field, ValidationError, model_validator

from omnimm import ComponentConfig, ConfigError, FuserRef, Ref, RunConfig, field_error, fusers, models
from omnimm.builtin.configs import MLPConfig, MultimodalEncoderConfig, TinyViTConfig
from omnimm.config import json_schema, load_config, validate_config
from omnimm.files import atomic_write_text

from .conftest import REPO

DEMO = REPO / "configs" / "demo.yaml"


class MoEConfig(ComponentConfig):
    """A test fuser with a cross-field rule."""

    num_experts: int = 4
    top_k: int = 2

    @model_validator(mode="after")
    def _top_k_fits(self) -> MoEConfig:
        if self.top_k > self.num_experts:
            raise field_error("top_k", f"must be <= num_experts ({self.num_experts})", self.top_k)
        return self


class HolderConfig(ComponentConfig):
    """A test model with one fuser and a list of optional extras."""

    fuser: FuserRef
    extra_fusers: list[FuserRef] = Field(default_factory=list)
    backup: FuserRef | None = None


@pytest.fixture
def moe_model():
    fusers.register("test/moe", object, config=MoEConfig)
    models.register("test/holder", object, config=HolderConfig)
    yield
    fusers.unregister("test/moe")
    models.unregister("test/holder")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- resolution --------------------------------------------------------------------------------------------------


def test_reference_resolves_to_the_registered_config_class():
    config = validate_config(DEMO.read_text() and load_config(DEMO).to_dict())
    assert isinstance(config, RunConfig)
    assert isinstance(config.model, MultimodalEncoderConfig)
    assert isinstance(config.model.encoders["image"], TinyViTConfig)
    assert isinstance(config.model.adapter, MLPConfig)
    assert config.model.fuser is not None and config.model.fuser.name == "omnimm/concat"  # bare-name shorthand


def test_reference_to_a_registry_created_after_the_class_is_resolved_at_validation_time(scratch_registry):
    class LaterConfig(ComponentConfig):
        part: Annotated[ComponentConfig, Ref("test-gadgets-0")]

    gadgets = scratch_registry("gadget")  # plural 'test-gadgets-0', created after the class

    class GadgetConfig(ComponentConfig):
        speed: int = 1

    gadgets.register("late/gadget", object, config=GadgetConfig)
    config = LaterConfig.model_validate({"part": {"name": "late/gadget", "speed": 7}})
    assert isinstance(config.part, GadgetConfig) and config.part.speed == 7


def test_config_instances_are_accepted_and_named(moe_model):
    holder = HolderConfig(fuser=MoEConfig(top_k=1))
    assert holder.fuser.name == "test/moe"
    assert isinstance(holder.fuser, MoEConfig)


def test_an_instance_of_the_wrong_class_is_refused(moe_model):
    with pytest.raises(ConfigError, match="fuser 'test/moe' takes a MoEConfig, got a MLPConfig"):
        HolderConfig.from_dict({"fuser": MLPConfig(name="test/moe", out_dim=3)})


# -- error paths -------------------------------------------------------------------------------------------------


def test_cross_field_error_carries_the_full_path_and_yaml_line(moe_model, tmp_path):
    path = write(tmp_path / "run.yaml", "model:\n  name: test/holder\n  fuser:\n    name: test/moe\n    top_k: 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (issue,) = caught.value.issues
    assert issue.path == "model.fuser.top_k"
    assert issue.message == "must be <= num_experts (4)"
    assert issue.line == 5
    assert f"{path}:5: model.fuser.top_k: must be <= num_experts (4)" in str(caught.value)


def test_errors_in_lists_and_optionals_have_indexed_paths(moe_model):
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {
                "model": {
                    "name": "test/holder",
                    "fuser": "test/moe",
                    "extra_fusers": ["test/moe", {"name": "test/mo"}],
                    "backup": {"name": "test/moe", "top_k": 9},
                }
            }
        )
    paths = {issue.path: issue.message for issue in caught.value.issues}
    assert paths.keys() == {"model.extra_fusers[1].name", "model.backup.top_k"}
    assert "did you mean 'test/moe'" in paths["model.extra_fusers[1].name"]


def test_typo_in_a_component_name_suggests_the_close_match():
    with pytest.raises(ConfigError) as caught:
        load_config(REPO / "configs" / "typo.yaml")
    (issue,) = caught.value.issues
    assert issue.path == "model.encoders.image.name"
    assert "unknown encoder 'omnimm/tiny-vt' (did you mean 'omnimm/tiny-vit'?)" in issue.message
    assert issue.line == 5


def test_unknown_keys_are_rejected_with_a_suggestion():
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {
                "model": {
                    "name": "omnimm/multimodal-encoder",
                    "encoders": {"image": "omnimm/tiny-vit"},
                    "adapter": {"name": "omnimm/mlp", "out_dim": 8, "dept": 2},
                }
            }
        )
    (issue,) = caught.value.issues
    assert issue.path == "model.adapter.dept"
    assert issue.message.startswith("unknown field 'dept'; did you mean 'depth'? (MLPConfig accepts: ")


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {
                "model": {
                    "name": "omnimm/multimodal-encoder",
                    "encoders": {
                        "a": {"name": "omnimm/tiny-vit", "patch_size": 5},
                        "b": {"name": "omnimm/tiny-vit", "heads": 3},
                    },
                    "freeze": ["encoderz"],
                }
            }
        )
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["model.encoders.a.patch_size", "model.encoders.b.heads"]
    messages = [issue.message for issue in caught.value.issues]
    assert messages == ["must divide image_size (32)", "must divide dim (64)"]


def test_model_level_rules_point_at_their_field():
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {
                "model": {
                    "name": "omnimm/multimodal-encoder",
                    "encoders": {"a": "omnimm/tiny-vit", "b": "omnimm/tiny-vit"},
                }
            }
        )
    assert [i.path for i in caught.value.issues] == ["model.fuser"]
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {
                "model": {
                    "name": "omnimm/multimodal-encoder",
                    "encoders": {"a": "omnimm/tiny-vit"},
                    "freeze": ["adapter"],
                }
            }
        )
    (issue,) = caught.value.issues
    assert issue.path == "model.freeze[0]"
    assert issue.message == "'adapter' matches no part (parts: encoders, encoders.a)"


def test_missing_name_lists_the_choices():
    with pytest.raises(ConfigError) as caught:
        validate_config({"model": {"encoders": {}}})
    (issue,) = caught.value.issues
    assert issue.path == "model.name"
    assert "which model? set 'name' to one of: omnimm/multimodal-encoder" in issue.message


def test_wrong_type_for_a_component():
    with pytest.raises(ConfigError, match=r"model: expected a model config .* got int"):
        validate_config({"model": 3})


# -- files -------------------------------------------------------------------------------------------------------


def test_yaml_and_json_files_load_to_equal_configs(tmp_path):
    from_yaml = load_config(DEMO)
    path = write(tmp_path / "demo.json", json.dumps(from_yaml.to_dict()))
    assert load_config(path) == from_yaml


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_save_then_load_round_trips_exactly(tmp_path, suffix):
    config = load_config(DEMO)
    saved = config.save(tmp_path / f"again{suffix}")
    again = load_config(saved)
    assert again == config
    assert again.to_dict() == config.to_dict()
    assert RunConfig.model_validate(json.loads(config.to_json())) == config


def test_component_config_round_trips_through_its_class(tmp_path):
    config = TinyViTConfig(name="omnimm/tiny-vit", dim=32, heads=2)
    assert TinyViTConfig.load(config.save(tmp_path / "vit.yaml")) == config


def test_a_file_with_a_top_level_name_is_one_component(tmp_path):
    path = write(tmp_path / "mlp.yaml", "name: omnimm/mlp\nout_dim: 16\n")
    config = load_config(path)
    assert isinstance(config, MLPConfig) and config.out_dim == 16


def test_a_name_registered_in_two_registries_asks_for_the_kind(tmp_path):
    fusers.register("omnimm/mlp", object, config=MLPConfig)
    try:
        path = write(tmp_path / "mlp.yaml", "name: omnimm/mlp\nout_dim: 16\n")
        with pytest.raises(ConfigError, match=r"registered as adapter \(--kind adapters\) and fuser"):
            load_config(path)
        assert isinstance(load_config(path, into="adapters"), MLPConfig)
    finally:
        fusers.unregister("omnimm/mlp")


def test_a_run_file_with_a_name_gets_a_hint(tmp_path):
    path = write(tmp_path / "run.yaml", "name: my-experiment\nmodel: omnimm/multimodal-encoder\n")
    with pytest.raises(ConfigError, match="a run file has no top-level 'name'"):
        load_config(path)


def test_duplicate_yaml_keys_are_errors_with_both_lines(tmp_path):
    path = write(tmp_path / "dup.yaml", "model:\n  name: omnimm/multimodal-encoder\n  name: other\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (issue,) = caught.value.issues
    assert (issue.path, issue.line, issue.message) == ("model.name", 3, "key appears twice (first on line 2)")


def test_duplicate_json_keys_are_errors(tmp_path):
    path = write(tmp_path / "dup.json", '{"model": {"name": "a", "name": "b"}}')
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(path)


def test_yaml_syntax_errors_give_the_line(tmp_path):
    path = write(tmp_path / "broken.yaml", "model:\n  name: [unclosed\n  other: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (issue,) = caught.value.issues
    assert issue.kind == "syntax" and issue.line is not None and issue.message.startswith("invalid YAML")


def test_json_syntax_errors_give_the_line(tmp_path):
    path = write(tmp_path / "broken.json", '{\n  "model": ,\n}')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues[0].line == 2


@pytest.mark.parametrize(("text", "expected"), [("", "got nothing (the file is empty)"), ("- 1\n- 2\n", "got a list")])
def test_top_level_must_be_a_mapping(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path / "x.yaml", text))


def test_unsupported_suffix_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"unsupported config file type '\.toml'"):
        load_config(write(tmp_path / "x.toml", "a = 1"))
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match=r"use a \.yaml, \.yml or \.json path"):
        load_config(DEMO).save(tmp_path / "out.txt")


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    target = write(tmp_path / "keep.yaml", "model: omnimm/multimodal-encoder\n")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "half a file")
    assert target.read_text() == "model: omnimm/multimodal-encoder\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.yaml"]  # no temp file left behind


def test_atomic_writes_keep_the_mode_a_plain_write_would_give(tmp_path: Path):
    fresh = tmp_path / "fresh.json"
    plain = tmp_path / "plain.json"
    atomic_write_text(fresh, "{}")
    plain.write_text("{}")
    assert stat.S_IMODE(fresh.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0600
    plain.chmod(0o640)
    atomic_write_text(plain, "[]")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o640 and plain.read_text() == "[]"


# -- JSON schema -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema():
    produced = json_schema()
    jsonschema.Draft202012Validator.check_schema(produced)
    return produced


def test_schema_defines_every_registered_component(schema):
    from omnimm.registry import all_registries

    expected = {f"{reg.kind}:{name}" for reg in all_registries().values() for name in reg.names()}
    assert expected <= set(schema["$defs"])
    assert schema["$defs"]["adapter:omnimm/mlp"]["properties"]["name"] == {
        "const": "omnimm/mlp",
        "description": "the adapter 'omnimm/mlp'",
    }
    assert (
        "Width of the output features" in schema["$defs"]["adapter:omnimm/mlp"]["properties"]["out_dim"]["description"]
    )


def test_schema_accepts_the_demo_and_rejects_a_typo(schema):
    validator = jsonschema.Draft202012Validator(schema)
    demo = load_config(DEMO).to_dict()
    assert list(validator.iter_errors(demo)) == []
    demo["model"]["encoders"]["image"]["name"] = "omnimm/tiny-vt"
    assert list(validator.iter_errors(demo))
    del demo["model"]["encoders"]
    assert list(validator.iter_errors(demo))


def test_schema_for_single_component_files():
    produced = json_schema("adapters")
    validator = jsonschema.Draft202012Validator(produced)
    assert not list(validator.iter_errors({"name": "omnimm/mlp", "out_dim": 4}))
    assert list(validator.iter_errors({"name": "omnimm/mlp", "out_dim": "four"}))


# -- any bad input gives a ConfigError, nothing else -------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10_000) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
interesting_names = st.sampled_from(
    [
        "omnimm/tiny-vit",
        "omnimm/mlp",
        "omnimm/concat",
        "omnimm/multimodal-encoder",
        "omnimm/tiny-vt",
        "valley/stpool",
        "",
    ]
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))


def _replace(node, path, value):
    if not path:
        return value
    copy = dict(node)
    copy[path[0]] = _replace(node[path[0]], path[1:], value)
    return copy


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=json_values | interesting_names)
def test_mutated_configs_only_ever_raise_config_error(data, value):
    base = load_config(DEMO).to_dict()
    path = data.draw(st.sampled_from(list(_paths(base))))
    mutated = _replace(base, path, value)
    try:
        validate_config(mutated)
    except ConfigError as error:
        assert error.issues
        for issue in error.issues:
            assert issue.message
            assert issue.format() in str(error)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_arbitrary_documents_only_ever_raise_config_error(value):
    try:
        validate_config(value)
    except ConfigError as error:
        assert error.issues and all(issue.message for issue in error.issues)


# -- hostile files: one ConfigError naming the file and line, in bounded time --------------------------------------


def _billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"model: *l{levels}", ""])


HOSTILE_FILES = {
    "nul.yaml": (b"model:\n  name: a\x00b\n", 2, "control character U+0000 at column 10"),
    "bell.json": (b'{"model":\n "a\x07"}', 2, "control character U+0007"),
    "escape.yaml": (b"model: omnimm/multimodal-encoder\nx: \x1b[31m\n", 2, "control character U+001B"),
    "latin1.yaml": ("model:\n  name: caf\xe9\n".encode("latin-1"), 2, "not UTF-8 text: byte 0xe9"),
    "utf16.yaml": ("model: omnimm/multimodal-encoder\n".encode("utf-16"), 1, "UTF-16 text (save it as UTF-8)"),
    "badfloat.yaml": (
        b"model:\n  name: omnimm/multimodal-encoder\n  x: !!float nope\n",
        3,
        "cannot read 'nope' as float",
    ),
    "badtime.yaml": (b"model: !!timestamp 2020-13-45\n", 1, "cannot read '2020-13-45' as timestamp"),
    "digits.yaml": (b"model:\n  x: " + b"9" * 5000 + b"\n", 2, "integer with 5000 digits is too large"),
    "digits.json": (b'{"model":\n {"x": -' + b"9" * 5000 + b"}}", 2, "integer with 5000 digits is too large"),
    "deep.yaml": (b"model:\n  x: " + b"[" * 500 + b"]" * 500 + b"\n", 2, "nested more than 100 levels deep"),
    "deep.json": (b'{"model":\n' + b"[" * 5000 + b"]" * 5000 + b"}", 2, "nested more than 100 levels deep"),
    "cycle.yaml": (b"model: &a [*a]\n", 1, "alias '*a' refers to a node that contains it (a cycle)"),
    "mapcycle.yaml": (b"model: &m\n  fuser:\n    inner: *m\n", 3, "alias '*m' refers to a node that contains it"),
    "bomb.yaml": (_billion_laughs().encode(), 5, "more than 100000 keys and values once its aliases are expanded"),
    "deepalias.yaml": (
        b"a: &a " + b"[" * 60 + b"]" * 60 + b"\nmodel: " + b"[" * 60 + b"*a" + b"]" * 60 + b"\n",
        2,
        "nested more than 100 levels deep",
    ),
    "flat.json": (b'{"model": [' + b",".join([b"1"] * 100_001) + b"]}", None, "more than 100000 keys and values"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_files_give_one_config_error_with_file_and_line(tmp_path, name):
    content, line, expected = HOSTILE_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (issue,) = caught.value.issues
    assert expected in issue.message
    assert issue.line == line
    assert caught.value.source == str(path)


@pytest.mark.timeout(30)
def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path):
    from omnimm.configfiles import MAX_CONFIG_BYTES

    path = tmp_path / "huge.yaml"
    path.write_bytes(b"model: omnimm/multimodal-encoder\n" + b"# padding\n" * (MAX_CONFIG_BYTES // 10))
    with pytest.raises(ConfigError, match=r"file is too large \(\d+ bytes; config files are limited to 1 MiB\)"):
        load_config(path)


def test_nesting_up_to_the_limit_loads_and_one_level_more_is_refused(tmp_path):
    from omnimm.configfiles import MAX_NESTING, read_config_file

    inner = MAX_NESTING - 1  # the top-level mapping is the first level
    assert read_config_file(write(tmp_path / "ok.yaml", "a: " + "[" * inner + "]" * inner))[0]
    assert read_config_file(write(tmp_path / "ok.json", '{"a": ' + "[" * inner + "]" * inner + "}"))[0]
    with pytest.raises(ConfigError, match="nested more than 100 levels"):
        read_config_file(write(tmp_path / "no.yaml", "a: " + "[" * (inner + 1) + "]" * (inner + 1)))
    with pytest.raises(ConfigError, match="nested more than 100 levels"):
        read_config_file(write(tmp_path / "no.json", '{"a": ' + "[" * (inner + 1) + "]" * (inner + 1) + "}"))


def test_ordinary_aliases_and_merge_keys_still_load_with_lines(tmp_path):
    from omnimm.configfiles import read_config_file

    text = "base: &vit {name: omnimm/tiny-vit, dim: 32, heads: 2}\nmodel:\n  <<: *vit\n  again: *vit\n"
    data, positions = read_config_file(write(tmp_path / "aliases.yaml", text))
    assert data["model"] == {"name": "omnimm/tiny-vit", "dim": 32, "heads": 2, "again": data["base"]}
    assert positions[("model", "again")] == 4


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"name": "omnimm/mlp", "out_dim": 4}')
    assert isinstance(load_config(path), MLPConfig)


# -- numbers no run can use ----------------------------------------------------------------------------------------


def _vit_run(**options: object) -> dict:
    return {
        "model": {"name": "omnimm/multimodal-encoder", "encoders": {"image": {"name": "omnimm/tiny-vit", **options}}}
    }


@pytest.mark.parametrize(
    ("text", "line", "path", "expected"),
    [
        ("image_size: 1.0e+59", 5, "model.encoders.image.image_size", "too large: an integer field takes at most"),
        ("image_size: " + "1" + "0" * 59, 5, "model.encoders.image.image_size", "too large"),
        ("image_size: '123456789012345678901'", 5, "model.encoders.image.image_size", "too large"),
        ("depth: true", 5, "model.encoders.image.depth", "expected an integer, got a boolean (true)"),
        ("dropout: .inf", 5, "model.encoders.image.dropout", "must be a finite number, got inf"),
        ("mlp_ratio: .nan", 5, "model.encoders.image.mlp_ratio", "must be a finite number, got nan"),
        ("mlp_ratio: false", 5, "model.encoders.image.mlp_ratio", "expected a number, got a boolean (false)"),
    ],
)
def test_unusable_numbers_are_refused_with_field_path_and_line(tmp_path, text, line, path, expected):
    body = "model:\n  name: omnimm/multimodal-encoder\n  encoders:\n    image:\n      " + text + "\n"
    body += "      name: omnimm/tiny-vit\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "run.yaml", body))
    issue = caught.value.issues[0]
    assert (issue.path, issue.line) == (path, line)
    assert expected in issue.message


def test_unusable_training_numbers_are_refused_in_json(tmp_path):
    stage = {"name": "s", "train": ["adapter"], "data": "x", "batch_size": 1e69, "learning_rate": "inf"}
    run = {**_vit_run(), "train": {"output_dir": "out", "stages": [stage], "seed": True}}
    text = json.dumps(run).replace('"inf"', "Infinity")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "run.json", text))
    messages = {issue.path: issue.message for issue in caught.value.issues}
    assert messages["train.stages[0].batch_size"].startswith("too large")
    assert messages["train.stages[0].learning_rate"] == "must be a finite number, got inf"
    assert messages["train.seed"].startswith("expected an integer, got a boolean")


def test_number_rules_reach_every_config_subclass_and_its_containers():
    class GadgetConfig(ComponentConfig):
        sizes: list[int] = Field(default_factory=list)
        rates: dict[str, float] = Field(default_factory=dict)
        shape: tuple[int, int] = (1, 1)
        limit: int | None = None
        either: int | str = 0
        flag: bool = False
        anything: object = None
        threshold: float = Field(0.0, allow_inf_nan=True)
        """This field opts in to infinities."""

    with pytest.raises(ConfigError) as caught:
        GadgetConfig.from_dict(
            {"sizes": [1, True], "rates": {"a": float("nan")}, "shape": [1, 2**60], "limit": 2**64, "either": False}
        )
    assert [issue.path for issue in caught.value.issues] == ["sizes[1]", "rates.a", "shape[1]", "limit", "either"]
    accepted = GadgetConfig.from_dict(
        {"sizes": [2**53], "flag": True, "anything": True, "threshold": float("inf"), "either": "x", "limit": -5}
    )
    assert accepted.threshold == float("inf") and accepted.flag is True and accepted.sizes == [2**53]
    with pytest.raises(ValidationError, match="got a boolean"):
        GadgetConfig(limit=True)  # Python construction goes through the same rule


# -- names that become paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../up", "", "x" * 101])
def test_stage_names_that_are_not_safe_folder_names_are_refused(name):
    stage = {"name": name, "train": ["adapter"], "data": "x"}
    with pytest.raises(ConfigError) as caught:
        validate_config({**_vit_run(), "train": {"output_dir": "out", "stages": [stage]}})
    assert "train.stages[0].name" in [issue.path for issue in caught.value.issues]


@pytest.mark.parametrize(
    "name", ["valley:../../pyproject.toml", "valley:../configs/demo", "valley:/etc/hostname", "valley:./demo"]
)
def test_packaged_config_names_stay_inside_the_plugin_configs_folder(name):
    from omnimm.config import resolve_config_path

    assert resolve_config_path("valley:demo").name == "demo.yaml"
    with pytest.raises(ConfigError, match="leaves the plugin's configs folder"):
        resolve_config_path(name)


# -- the CLI: one issue line and a failing exit, no traceback ------------------------------------------------------


@pytest.mark.timeout(120)
def test_cli_reports_hostile_files_without_a_traceback(tmp_path, cli):
    names = ["nul.yaml", "badfloat.yaml", "digits.json", "deep.yaml", "deep.json", "cycle.yaml", "bomb.yaml"]
    for name in names:
        (tmp_path / name).write_bytes(HOSTILE_FILES[name][0])
    (tmp_path / "bool.yaml").write_text(
        "model:\n  name: omnimm/multimodal-encoder\n  encoders: {a: {name: omnimm/tiny-vit, depth: true}}\n"
    )
    for name in [*names, "bool.yaml"]:
        result = cli("config", "validate", tmp_path / name)
        assert result.returncode == 1, result.output
        assert "Traceback" not in result.output
        head, issue, *rest = result.stderr.splitlines()
        assert head == f"{tmp_path / name}: 1 config error" or head.startswith(f"{tmp_path / name}: 1 config error in")
        assert issue.startswith(f"  {tmp_path / name}:") and not rest
    result = cli("config", "validate", "valley:../../pyproject")
    assert (
        result.returncode == 1
        and "Traceback" not in result.output
        and "leaves the plugin's configs folder" in result.output
    )
