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

# pytest-xdist's workers set COLUMNS=80 (and LINES): the CLI's tables, in subprocesses and in this process, would
# then wrap as on a narrow terminal. The suite sees output going to a pipe, as a user's script does.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

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


requires_shared = pytest.mark.skipif(
    not (SHARED / "data").is_dir(), reason=f"shared test data not found at {SHARED / 'data'} (a user's machine)"
)


def write_test_video(path: Path, frames: int = 12, size: int = 48, fps: int = 6) -> Path:
    """A real, losslessly encoded video whose frame t is filled with the grey level 10 * t (so frames identify
    themselves after decoding)."""
    import av
    import numpy as np

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "bgr0"
        for t in range(frames):
            image = np.full((size, size, 3), 10 * t, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


WORDS = [
    "what colour is it ? describe the video . red blue green yellow a clip of pancakes flipping yes no",
    "a chat between a curious human and an artificial intelligence assistant . the assistant gives helpful ,"
    " detailed , and polite answers to the human's questions . ### human : assistant :",
]


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory) -> Path:
    """A small word-level tokenizer saved to disk (what tiny test LLMs load)."""
    from omnimm.llm.tokenizer import train_word_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    train_word_tokenizer(WORDS, extra_tokens=["<video>"]).save_pretrained(folder)
    return folder


def video_llm_config(tokenizer: Path, **overrides: object) -> dict:
    """A tiny video LLM: tiny ViT (16 patches), valley/stpool, MLP projector, 1-layer Llama."""
    config = {
        "name": "omnimm/video-llm",
        "encoders": {"vision": {"name": "omnimm/tiny-vit", "image_size": 32, "patch_size": 8, "dim": 32, "heads": 2}},
        "connector": {"name": "valley/stpool", "projector": {"name": "omnimm/mlp"}},
        "llm": {
            "name": "hf/causal-lm",
            "config": {
                "model_type": "llama",
                "hidden_size": 48,
                "intermediate_size": 96,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
            },
            "tokenizer": str(tokenizer),
        },
        "frames": {"num_frames": 4},
    }
    config.update(overrides)
    return config
