"""Shared fixtures: real subprocesses for the CLI, real distributions on disk for plugin discovery."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OMNIMM = Path(sys.executable).with_name("omnimm")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> Result:
    """Run a command with a clean plugin environment plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIMM_")}
    full_env.update(env or {})
    done = subprocess.run(
        args, capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout, check=False
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli():
    """``cli("config", "validate", path, env={...})``: the installed `omnimm` console script in a subprocess."""

    def invoke(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
        return run([str(OMNIMM), *map(str, args)], env=env, cwd=cwd)

    return invoke


@pytest.fixture
def python():
    """``python("code", env=...)``: the test interpreter in a subprocess."""

    def invoke(code: str, *extra: str, env: dict[str, str] | None = None) -> Result:
        return run([sys.executable, *extra, "-c", textwrap.dedent(code)], env=env)

    return invoke


class FakeSite:
    """A directory of real installed distributions (``*.dist-info`` with entry points) and their modules.

    Put it on ``PYTHONPATH`` and importlib.metadata discovers them exactly as it discovers pip-installed ones.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def distribution(
        self,
        name: str,
        *,
        plugins: dict[str, str],
        modules: dict[str, str],
        version: str = "0.1.0",
        requires: list[str] | None = None,
    ) -> None:
        dist_info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir(parents=True)
        metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        metadata += [f"Requires-Dist: {line}" for line in requires or []]
        extras = sorted({line.split('extra == "')[1].rstrip('"') for line in requires or [] if "extra ==" in line})
        metadata += [f"Provides-Extra: {extra}" for extra in extras]
        (dist_info / "METADATA").write_text("\n".join(metadata) + "\n")
        lines = ["[omnimm.plugins]", *(f"{ep} = {target}" for ep, target in plugins.items())]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in modules.items():
            path = self.root / (module.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.root)}


@pytest.fixture
def fake_site(tmp_path: Path) -> FakeSite:
    return FakeSite(tmp_path / "site")


@pytest.fixture
def scratch_registry() -> Iterator[object]:
    """A registry of its own for one test, removed from the global table afterwards."""
    from omnimm import registry as registry_module

    created: list[str] = []

    def make(kind: str = "widget"):
        plural = f"test-{kind}s-{len(created)}"
        created.append(plural)
        return registry_module.Registry(kind, plural)

    yield make
    for plural in created:
        registry_module._REGISTRIES.pop(plural, None)
