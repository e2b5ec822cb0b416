"""The library's own code never deserialises with pickle, never evaluates text, never runs a shell.

A static check over every module of the core, the plugins, the benchmarks and the examples, so a new loader cannot
slip in a `torch.load` without `weights_only=True` or a `yaml.load`. The checker itself is tested on code that breaks
each rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_CALLS = {"eval", "exec"}
UNSAFE_ATTRIBUTES = {"read_pickle", "to_pickle", "unsafe_load", "full_load"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unsafe_uses(source: str, filename: str = "<code>") -> list[str]:
    """Each place in `source` that could load a pickle, evaluate text or run a shell, as `file:line: why`."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if isinstance(node.func, ast.Name) and name in UNSAFE_CALLS:
            found.append(f"{where}: calls {name}()")
        if name.endswith("torch.load") and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if name == "yaml.load" and "SafeLoader" not in ast.unparse(_keyword(node, "Loader") or ast.Constant(None)):
            found.append(f"{where}: yaml.load without SafeLoader")
        if name.split(".")[-1] in UNSAFE_ATTRIBUTES:
            found.append(f"{where}: calls {name}")
        if name.endswith("np.load") or name.endswith("numpy.load"):
            if _is_true(_keyword(node, "allow_pickle")):
                found.append(f"{where}: np.load with allow_pickle=True")
        if name.startswith("subprocess.") and _is_true(_keyword(node, "shell")):
            found.append(f"{where}: subprocess with shell=True")
    return found


def _library_files() -> list[Path]:
    folders = [REPO / "src" / "omnimm", REPO / "plugins", REPO / "benchmarks", REPO / "examples"]
    return sorted(file for folder in folders for file in folder.rglob("*.py"))


def test_no_module_of_the_library_loads_pickles_evaluates_text_or_runs_a_shell():
    files = _library_files()
    assert len(files) > 50  # the walk found the code
    found = [use for file in files for use in unsafe_uses(file.read_text("utf-8"), str(file.relative_to(REPO)))]
    assert found == []


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("import pickle", "imports pickle"),
        ("from joblib import load", "imports joblib"),
        ("import torch\ntorch.load('x.pt')", "torch.load without weights_only=True"),
        ("import torch\ntorch.load('x.pt', weights_only=False)", "torch.load without weights_only=True"),
        ("import yaml\nyaml.load(text, Loader=yaml.Loader)", "yaml.load without SafeLoader"),
        ("import yaml\nyaml.unsafe_load(text)", "calls yaml.unsafe_load"),
        ("eval(text)", "calls eval()"),
        ("import numpy as np\nnp.load('a.npy', allow_pickle=True)", "np.load with allow_pickle=True"),
        ("import subprocess\nsubprocess.run(cmd, shell=True)", "subprocess with shell=True"),
        ("import pandas as pd\npd.read_pickle('x')", "calls pd.read_pickle"),
    ],
)
def test_the_checker_flags_each_unsafe_use(code, why):
    (use,) = unsafe_uses(code)
    assert use.endswith(why)


def test_the_checker_accepts_the_safe_forms():
    safe = (
        "import torch, yaml, numpy as np\n"
        "torch.load('x.pt', map_location='cpu', weights_only=True)\n"
        "yaml.load(text, Loader=yaml.SafeLoader)\n"
        "yaml.safe_load(text)\n"
        "np.load('a.npy', allow_pickle=False)\n"
        "model.eval()\n"
    )
    assert unsafe_uses(safe) == []
