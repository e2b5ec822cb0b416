"""What the README and docs show must be what the code does."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest

from .conftest import REPO, run


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_readme_python_example_runs_and_prints_what_it_says(tmp_path):
    (example,) = [b for b in _python_blocks((REPO / "README.md").read_text()) if "omnimm.models.build" in b]
    script = tmp_path / "example.py"
    script.write_text(example.replace('"configs/demo.yaml"', repr(str(REPO / "configs" / "demo.yaml"))))
    result = run([sys.executable, str(script)], cwd=tmp_path)
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("['omnimm/tiny-vit'")
    assert lines[1] == "torch.Size([2, 34, 128])"
    assert (tmp_path / "my-run.yaml").is_file()


def test_getting_started_shows_the_real_build_output(cli):
    page = (REPO / "docs" / "getting-started.md").read_text()
    shown = page.split("$ omnimm build configs/demo.yaml\n", 1)[1].split("```", 1)[0].splitlines()
    assert cli("build", "configs/demo.yaml").stdout.splitlines() == shown


def test_getting_started_shows_the_demo_config_as_it_is():
    page = (REPO / "docs" / "getting-started.md").read_text()
    shown = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    actual = (REPO / "configs" / "demo.yaml").read_text()
    body = "".join(line for line in actual.splitlines(keepends=True) if not line.startswith("#"))
    assert shown == body


def test_benchmark_runner_writes_its_table_and_json(tmp_path):
    # Timings are noise (a difference of two of them, e.g. import cost above interpreter start, can come out
    # negative on a loaded machine): this checks the table's and the JSON's shape, columns, units and types only.
    result = run([sys.executable, str(REPO / "benchmarks" / "run.py"), "core", "--quick", "--out", str(tmp_path)])
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("benchmarks: core") for line in lines), result.stdout
    header = next((line for line in lines if "benchmark" in line and "ratio" in line), "")
    columns = [cell.strip() for cell in re.split(r"[┃│|]", header) if cell.strip()]
    assert columns == ["benchmark", "ours", "reference", "ratio", "unit", "notes"], result.stdout
    assert "import omnimm vs import torch" in result.stdout and "configs/s" in result.stdout
    data = json.loads((tmp_path / "core.json").read_text())
    assert data["suite"] == "core" and isinstance(data["seconds"], float)
    assert {"python", "platform", "cpus", "versions", "date"} <= set(data["environment"])
    assert {row["unit"] for row in data["rows"]} == {"ms", "configs/s"}
    for row in data["rows"]:
        assert {"benchmark", "ours_label", "reference_label", "ours", "reference", "ratio", "unit"} <= set(row), row
        assert all(isinstance(row[key], str) for key in ("benchmark", "ours_label", "reference_label")), row
        assert all(isinstance(row[key], float) and math.isfinite(row[key]) for key in ("ours", "reference")), row
        assert row["ratio"] == pytest.approx(row["ours"] / row["reference"], rel=1e-9), row  # arithmetic, not timing


def test_every_registered_component_is_documented():
    from omnimm.registry import all_registries

    docs = "\n".join(path.read_text(encoding="utf-8") for path in (REPO / "docs").rglob("*.md"))
    missing = [
        f"{plural}: {name}"
        for plural, registry in all_registries().items()
        for name in registry.names()
        if f"`{name}`" not in docs
    ]
    assert not missing, f"components without a docs mention: {missing}"
