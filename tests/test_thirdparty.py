"""A third-party plugin, for real: pip-install examples/thirdparty-encoder and use it with no change to omnimm."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from .conftest import REPO

EXAMPLE = REPO / "examples" / "thirdparty-encoder"
DISTRIBUTION = "omnimm-thirdparty-encoder"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False, timeout=600
    )


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    # Build from a copy so the checkout gets no build/ or egg-info droppings; no index, no isolation: offline.
    source = tmp_path_factory.mktemp("example") / "thirdparty-encoder"
    shutil.copytree(EXAMPLE, source)
    done = pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    yield
    pip("uninstall", "-y", DISTRIBUTION)


def test_omnimm_plugins_lists_the_installed_package(cli, installed_example):
    result = cli("plugins")
    assert result.returncode == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if "thirdparty" in line]
    assert f"{DISTRIBUTION} 0.1.0" in row and "loaded" in row and "1 encoder" in row


def test_a_config_naming_the_encoder_builds(cli, installed_example):
    result = cli("build", EXAMPLE / "model.yaml")
    assert result.returncode == 0, result.output
    assert "image: TinyCNN [thirdparty/tiny-cnn]" in result.stdout
    assert "adapter: MLPProjector [omnimm/mlp]" in result.stdout


def test_the_encoder_runs_inside_an_omnimm_model(python, installed_example):
    result = python(
        """
        import torch, omnimm
        config = omnimm.load_config("examples/thirdparty-encoder/model.yaml")
        model = omnimm.models.build(config.model)
        print(tuple(model({"image": torch.randn(2, 3, 32, 32)}).shape))
        print(omnimm.encoders.entry("thirdparty/tiny-cnn").owner.label)
        """
    )
    assert result.returncode == 0, result.output
    shape, owner = result.stdout.strip().splitlines()
    assert shape == "(2, 64, 64)"  # 32x32 -> two stride-2 convs -> 8x8 = 64 tokens, projected to 64
    assert owner == f"plugin 'thirdparty' ({DISTRIBUTION} 0.1.0)"


NEIGHBOUR_THAT_EXITS = """
import sys
sys.exit(5)
"""

NEIGHBOUR_THAT_OVERRIDES_THEN_FAILS = """
from omnimm import hookimpl

@hookimpl
def omnimm_register(registries):
    registries.encoders.register("thirdparty/tiny-cnn", object, override=True)
    raise RuntimeError("broken after replacing tiny-cnn")
"""


def test_the_installed_package_survives_broken_neighbours(cli, fake_site, installed_example):
    fake_site.distribution(
        "exits-dist", plugins={"exits": "exits_plugin"}, modules={"exits_plugin": NEIGHBOUR_THAT_EXITS}
    )
    fake_site.distribution(
        "overrides-dist",
        plugins={"overrides": "overrides_plugin"},
        modules={"overrides_plugin": NEIGHBOUR_THAT_OVERRIDES_THEN_FAILS},
    )
    shown = cli("plugins", env=fake_site.env)
    assert shown.returncode == 0, shown.output
    rows = {line.split("│")[1].strip(): line for line in shown.stdout.splitlines() if line.count("│") > 3}
    assert "failed" in rows["exits"] and "SystemExit: the plugin called sys.exit(5)" in rows["exits"]
    assert "failed" in rows["overrides"] and "RuntimeError: broken after replacing tiny-cnn" in rows["overrides"]
    assert "loaded" in rows["thirdparty"] and "1 encoder" in rows["thirdparty"]
    built = cli("build", EXAMPLE / "model.yaml", env=fake_site.env)
    assert built.returncode == 0, built.output
    assert "image: TinyCNN [thirdparty/tiny-cnn]" in built.stdout  # the real one, given back by the rollback
