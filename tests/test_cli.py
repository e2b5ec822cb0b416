"""The installed `omnimm` command, run in real subprocesses."""

from __future__ import annotations

import json

import jsonschema

from omnimm import __version__

from .conftest import REPO

DEMO = REPO / "configs" / "demo.yaml"


def test_version(cli):
    result = cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"omnimm {__version__}")


def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in ("plugins", "list", "build", "config"):
        assert command in result.stdout


def test_python_dash_m_runs_the_same_cli(python):
    result = python("import runpy; runpy.run_module('omnimm', run_name='__main__')", env=None)
    assert "Usage" in result.output


def test_validate_accepts_the_demo(cli):
    result = cli("config", "validate", DEMO)
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == f"ok: {DEMO} (RunConfig, model 'omnimm/multimodal-encoder')"


def test_validate_reports_a_typo_with_path_line_and_suggestion(cli):
    result = cli("config", "validate", "configs/demo.yaml", "configs/typo.yaml")
    assert result.returncode == 1
    assert result.stdout.startswith("ok: configs/demo.yaml")  # the good file is still checked
    assert result.stderr.splitlines() == [
        "configs/typo.yaml: 1 config error in RunConfig",
        "  configs/typo.yaml:5: model.encoders.image.name: unknown encoder 'omnimm/tiny-vt' "
        "(did you mean 'omnimm/tiny-vit'?); available encoders: "
        "favchat/face, hf/clip-vision, hf/sentence-encoder, omnimm/tiny-vit, openclip/vit, timm/vit",
    ]


def test_the_readme_shows_the_real_output(cli):
    readme = (REPO / "README.md").read_text()
    block = readme.split("$ omnimm config validate configs/typo.yaml\n", 1)[1].split("```", 1)[0]
    result = cli("config", "validate", "configs/typo.yaml")
    assert block.splitlines() == result.stderr.splitlines()


def test_validate_a_missing_file(cli, tmp_path):
    result = cli("config", "validate", tmp_path / "absent.yaml")
    assert result.returncode == 1
    assert "config file not found" in result.stderr


def test_show_prints_every_default(cli):
    result = cli("config", "show", DEMO, "--json")
    assert result.returncode == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["model"]["adapter"]["activation"] == "gelu"  # a default the file does not spell out
    assert shown["model"]["fuser"] == {"name": "omnimm/concat", "axis": "tokens"}


def test_schema_written_to_a_file_validates_the_demo(cli, tmp_path):
    out = tmp_path / "schema" / "omnimm.schema.json"
    result = cli("config", "schema", "-o", out)
    assert result.returncode == 0, result.output
    schema = json.loads(out.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    import yaml

    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(DEMO.read_text())))


def test_schema_to_stdout_for_one_registry(cli):
    result = cli("config", "schema", "--kind", "encoders")
    schema = json.loads(result.stdout)
    assert schema["title"] == "omnimm encoder config"
    assert "encoder:omnimm/tiny-vit" in schema["$defs"]


def test_build_prints_the_tree_with_parameter_counts(cli):
    import torch  # the expected figures come from building the same model here

    from omnimm import load_config, models
    from omnimm.summary import parameter_counts

    model = models.build(load_config(DEMO).model)
    total, trainable = parameter_counts(model)
    frozen = sum(p.numel() for p in model.encoders.parameters())
    assert total - trainable == frozen > 0 and isinstance(model, torch.nn.Module)

    result = cli("build", DEMO)
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model: MultimodalEncoder [omnimm/multimodal-encoder]")
    assert any("image: TinyViT [omnimm/tiny-vit]" in line and "0 trainable" in line for line in lines)
    assert any("adapter: MLPProjector [omnimm/mlp]" in line and "0 frozen" in line for line in lines)
    assert lines[-1] == f"total: {total:,} parameters, {trainable:,} trainable, {frozen:,} frozen"


def test_build_a_single_component_file(cli, tmp_path):
    config = tmp_path / "vit.yaml"
    config.write_text("name: omnimm/tiny-vit\ndepth: 12\n")
    result = cli("build", config, "--depth", "3")
    assert result.returncode == 0, result.output
    assert "encoder: TinyViT [omnimm/tiny-vit]" in result.stdout
    assert "0..11: 12 x TransformerEncoderLayer" in result.stdout  # identical layers folded into one line


def test_build_reports_invalid_configs_without_a_traceback(cli, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "model:\n  name: omnimm/multimodal-encoder\n  encoders: {a: omnimm/tiny-vit, b: omnimm/tiny-vit}\n"
    )
    result = cli("build", config)
    assert result.returncode == 1
    assert f"{config}:1: model.fuser: required with more than one encoder (a, b)" in result.stderr
    assert "Traceback" not in result.output


def test_build_reports_a_shape_mismatch_clearly(cli, tmp_path):
    config = tmp_path / "mismatch.yaml"
    config.write_text(
        "model:\n  name: omnimm/multimodal-encoder\n  encoders: {image: omnimm/tiny-vit}\n"
        "  adapter: {name: omnimm/mlp, in_dim: 32, out_dim: 8}\n"
    )
    result = cli("build", config)
    assert result.returncode == 1
    assert "adapter 'omnimm/mlp': in_dim is 32 but its input has 64 features" in result.output


def test_list_filters_by_registry_and_wildcard(cli):
    result = cli("list", "encoders", "*vit*")
    assert result.returncode == 0, result.output
    assert "omnimm/tiny-vit" in result.stdout and "omnimm/mlp" not in result.stdout
    assert cli("list").stdout.count("omnimm/") >= 4
    nothing = cli("list", "encoders", "nothing-*")
    assert nothing.returncode == 1 and "no components in encoders match nothing-*" in nothing.stderr
    unknown = cli("list", "encoder")
    assert unknown.returncode == 1 and "did you mean 'encoders'" in unknown.stderr
