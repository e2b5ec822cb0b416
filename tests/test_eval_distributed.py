"""`omnimm eval` under torchrun: two processes share the batches and give exactly the files of one process."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from omnimm import models
from omnimm.videollm.evaluate import batch_starts

from .conftest import OMNIMM, run, video_llm_config

COLOURS = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize(
    ("count", "batch_size", "rank", "world", "expected"),
    [
        (7, 2, 0, 1, [0, 2, 4, 6]),
        (7, 2, 0, 2, [0, 4]),  # batches 0 and 2
        (7, 2, 1, 2, [2, 6]),  # batches 1 and 3 (the last one holds one item)
        (3, 4, 1, 2, []),  # fewer batches than processes: this one idles
    ],
)
def test_processes_take_whole_batches_in_turn(count, batch_size, rank, world, expected):
    assert batch_starts(count, batch_size, rank, world) == expected


@pytest.fixture
def eval_setup(word_tokenizer, tmp_path):
    """A saved tiny model and seven questions about six images and a missing one (item 3)."""
    torch.manual_seed(0)
    models.build(video_llm_config(word_tokenizer)).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    records = []
    for index in range(7):
        if index != 3:
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        question = "what colour is it ?" if index % 2 else "describe the video ."
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": COLOURS[index % 4]}]
        meta = {"kind": "colour" if index % 2 else "other", "choices": COLOURS}
        records.append({"id": f"q{index}", "image": f"{index}.png", "conversations": turns, "meta": meta})
    (tmp_path / "data.json").write_text(json.dumps(records))
    return tmp_path


def test_two_processes_write_what_one_process_writes(eval_setup):
    env = {"OMP_NUM_THREADS": "1"}  # what torchrun gives its workers; the same kernels in both runs
    args = ["eval", eval_setup / "model", "--data", eval_setup / "data.json", "-e", "omnimm/choice-accuracy"]
    args += ["--batch-size", "2", "--max-new-tokens", "6", "--no-progress", "--device", "cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--tee", "3"]
    launchers = {"single": [str(OMNIMM)], "two": [*torchrun, "-m", "omnimm"]}
    results = {}
    for label, launcher in launchers.items():
        results[label] = run([*launcher, *map(str, args), "-o", str(eval_setup / label)], env=env, timeout=600)
        assert results[label].returncode == 0, results[label].output[-3000:]
    for name in ["predictions.jsonl", "metrics.json"]:
        assert (eval_setup / "two" / name).read_bytes() == (eval_setup / "single" / name).read_bytes(), name
    predictions = [json.loads(line) for line in (eval_setup / "two" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == ["q0", "q1", "q2", "q4", "q5", "q6"]  # the dataset's order
    metrics = json.loads((eval_setup / "two" / "metrics.json").read_text())
    assert metrics["_run"] == {"predictions": 6, "skipped": 1}
    two = results["two"].output  # --tee marks each process's lines: the second one printed nothing
    assert two.count("omnimm/choice-accuracy") == 1 and two.count("6 answers, 1 skipped") == 1
    assert "[default0]:6 answers, 1 skipped" in two and "[default1]:" not in two


def test_a_bad_device_is_one_line(eval_setup, cli):
    data = eval_setup / "data.json"
    result = cli("eval", eval_setup / "model", "--data", data, "-e", "omnimm/choice-accuracy", "--device", "gpu0")
    assert result.returncode == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == "error: --device: 'gpu0' is not a device (auto, cpu, cuda or cuda:N)"
