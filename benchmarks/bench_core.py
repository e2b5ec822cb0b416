"""Core costs: `import omnimm` vs `import torch`, plugin discovery vs pluggy's loader, config validation rate.

Every number is taken in this process's run, ours next to its reference, on the same machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Union

REPO = Path(__file__).resolve().parents[1]

PLUGINS = 20
COMPONENTS_PER_PLUGIN = 10


def _median_wall(code: str, runs: int, env: dict[str, str] | None = None) -> float:
    """Median wall time (ms) of a fresh interpreter running `code`."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _median_reported(code: str, runs: int, env: dict[str, str] | None = None) -> float:
    """Median of the number (ms) a fresh interpreter prints after running `code`."""
    values = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], check=True, env=env, cwd=REPO, capture_output=True, text=True
        )
        values.append(float(done.stdout.strip().splitlines()[-1]))
    return statistics.median(values)


def bench_import(runs: int) -> list[dict[str, Any]]:
    startup = _median_wall("pass", runs)
    ours = _median_wall("import omnimm", runs)
    torch = _median_wall("import torch", runs)
    ready = _median_wall("import omnimm; omnimm.encoders.names()", runs)
    return [
        {
            "benchmark": f"import, wall clock incl. interpreter start (median of {runs})",
            "ours_label": "import omnimm",
            "reference_label": "import torch",
            "ours": ours,
            "reference": torch,
            "ratio": ours / torch,
            "unit": "ms",
            "notes": f"interpreter start alone: {startup:.1f} ms",
        },
        {
            "benchmark": "import cost above interpreter start",
            "ours_label": "import omnimm",
            "reference_label": "import torch",
            "ours": ours - startup,
            "reference": torch - startup,
            "ratio": (ours - startup) / (torch - startup),
            "unit": "ms",
        },
        {
            "benchmark": "ready: import + plugin discovery + registries filled",
            "ours_label": "omnimm.encoders.names()",
            "reference_label": "import torch",
            "ours": ready - startup,
            "reference": torch - startup,
            "ratio": (ready - startup) / (torch - startup),
            "unit": "ms",
        },
    ]


PLUGIN_SOURCE = """
from omnimm import hookimpl

@hookimpl
def omnimm_register(registries):
    for index in range({count}):
        registries.encoders.register_lazy(
            f"{name}/encoder-{{index}}", "{name}_impl:Encoder", config="omnimm.builtin.configs:TinyViTConfig"
        )
"""


def _fake_site(root: Path) -> None:
    """PLUGINS installed distributions (real dist-info + entry points), each registering lazy components."""
    for number in range(PLUGINS):
        name = f"benchplugin{number:02d}"
        dist_info = root / f"{name}-1.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (dist_info / "entry_points.txt").write_text(f"[omnimm.plugins]\n{name} = {name}\n")
        (root / f"{name}.py").write_text(PLUGIN_SOURCE.format(name=name, count=COMPONENTS_PER_PLUGIN))


OURS_DISCOVERY = textwrap.dedent("""
    import time
    from omnimm.plugins import ensure_plugins_loaded
    started = time.perf_counter()
    ensure_plugins_loaded()
    print((time.perf_counter() - started) * 1000)
""")

# The reference: pluggy's own entry-point loader (what pytest uses), loading the same plugins into a manager with
# the same hook specs and registering into the same registries, without omnimm's per-plugin isolation, rollback,
# allowlist and ownership records.
PLUGGY_DISCOVERY = textwrap.dedent("""
    import os, time
    import pluggy
    os.environ["OMNIMM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    from omnimm import hookspecs
    from omnimm.plugins import ensure_plugins_loaded
    from omnimm.registry import registries
    ensure_plugins_loaded()  # the core's own components only: omnimm's loader is now out of the way
    manager = pluggy.PluginManager("omnimm")
    manager.add_hookspecs(hookspecs)
    started = time.perf_counter()
    manager.load_setuptools_entrypoints("omnimm.plugins")
    manager.hook.omnimm_register(registries=registries)
    print((time.perf_counter() - started) * 1000)
""")


def bench_discovery(runs: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        _fake_site(Path(folder))
        env = {**os.environ, "PYTHONPATH": folder}
        ours = _median_reported(OURS_DISCOVERY, runs, env)
        reference = _median_reported(PLUGGY_DISCOVERY, runs, env)
    return [
        {
            "benchmark": f"discover {PLUGINS} plugins x {COMPONENTS_PER_PLUGIN} lazy components (median of {runs})",
            "ours_label": "omnimm PluginManager.load",
            "reference_label": "pluggy load_setuptools_entrypoints + hook call",
            "ours": ours,
            "reference": reference,
            "ratio": ours / reference,
            "unit": "ms",
            "notes": "ours adds per-plugin isolation, rollback, allowlist, ownership",
        }
    ]


def _static_reference() -> tuple[type, dict[str, Any]]:
    """The demo config's classes as a plain pydantic model with static discriminated unions (no registry)."""
    from pydantic import BaseModel, ConfigDict, Field, create_model

    from omnimm.builtin import configs

    def tagged(base: type, name: str) -> type:
        return create_model(f"Static{base.__name__}", __base__=base, name=(Literal[name], name))  # type: ignore[call-overload]

    vit = tagged(configs.TinyViTConfig, "omnimm/tiny-vit")
    mlp = tagged(configs.MLPConfig, "omnimm/mlp")
    concat = tagged(configs.ConcatConfig, "omnimm/concat")
    encoder = Annotated[Union[vit], Field(discriminator="name")]  # noqa: UP007 - one-member unions need Union

    class StaticModel(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: Literal["omnimm/multimodal-encoder"]
        encoders: dict[str, encoder]  # type: ignore[valid-type]
        fuser: Annotated[Union[concat], Field(discriminator="name")] | None = None  # type: ignore[valid-type]  # noqa: UP007
        adapter: Annotated[Union[mlp], Field(discriminator="name")] | None = None  # type: ignore[valid-type]  # noqa: UP007
        freeze: list[str] = []

    class StaticRun(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: StaticModel

    from omnimm import load_config

    data = load_config(REPO / "configs" / "demo.yaml").to_dict()
    data.pop("train")  # the static reference describes the model only
    return StaticRun, data


def bench_validation(repeat: int) -> list[dict[str, Any]]:
    from omnimm import validate_config

    reference_model, data = _static_reference()
    validate_config(data)  # warm: plugins loaded, config classes imported
    reference_model.model_validate(data)

    def rate(function: Any) -> float:
        started = time.perf_counter()
        for _ in range(repeat):
            function(data)
        return repeat / (time.perf_counter() - started)

    ours = statistics.median(rate(validate_config) for _ in range(5))
    reference = statistics.median(rate(reference_model.model_validate) for _ in range(5))
    return [
        {
            "benchmark": f"validate configs/demo.yaml, 5 components ({repeat} x 5, median)",
            "ours_label": "omnimm.validate_config (registry refs)",
            "reference_label": "plain pydantic, static discriminated unions",
            "ours": ours,
            "reference": reference,
            "ratio": ours / reference,
            "unit": "configs/s",
            "notes": "higher is better",
        }
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    runs = 5 if quick else 15
    return [*bench_import(runs), *bench_discovery(runs), *bench_validation(500 if quick else 5000)]
