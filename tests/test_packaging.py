"""The distribution: one wheel with the core, the project's plugins, py.typed, extras and entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest

from .conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Build from a copy of what a source distribution holds, offline, with the environment's setuptools.
    source = tmp_path_factory.mktemp("source")
    for item in ["pyproject.toml", "README.md", "src", "plugins"]:
        copy = shutil.copytree if (REPO / item).is_dir() else shutil.copy2
        copy(
            REPO / item,
            source / item,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("omnimm-*.whl")
    return zipfile.ZipFile(built)


def test_every_source_file_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    expected = {
        f"omnimm/{p.relative_to(REPO / 'src' / 'omnimm').as_posix()}" for p in (REPO / "src" / "omnimm").rglob("*.py")
    }
    expected |= {
        f"omnimm_plugins/{p.relative_to(REPO / 'plugins').as_posix()}" for p in (REPO / "plugins").rglob("*.py")
    }
    assert expected - names == set(), "add the missing packages to [tool.setuptools] packages in pyproject.toml"
    assert "omnimm/py.typed" in names


def _dist_info(wheel, name):
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_metadata_declares_the_extras(wheel):
    metadata = Parser().parsestr(_dist_info(wheel, "METADATA"))
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"favchat", "valley", "recse", "simct", "haruhi", "fakenews", "gpu", "docs", "dev", "all", "torch"} <= extras
    requires = metadata.get_all("Requires-Dist")
    assert not any(r.startswith("torch") and "extra" not in r for r in requires), "torch must stay optional"
    assert not any(r.startswith("entrypoints") for r in requires), "use importlib.metadata, not entrypoints"


def test_console_script_and_plugin_entry_points(wheel):
    entry_points = _dist_info(wheel, "entry_points.txt")
    assert "omnimm = omnimm.cli:main" in entry_points
    for plugin in sorted(p.name for p in (REPO / "plugins").iterdir() if (p / "plugin.py").exists()):
        assert f"{plugin} = omnimm_plugins.{plugin}.plugin" in entry_points, f"plugin '{plugin}' has no entry point"
