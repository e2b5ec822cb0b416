"""Saves killed with SIGKILL at random points: what is left always loads, as one of the versions that were saved.

One helper process (tests/scripts/crash_saves.py) builds a tiny video LLM, a real Trainer and a haruhi memory store,
then per kill forks a child that saves in a loop, SIGKILLs it after a seeded random delay and loads the folder with
the library's loaders. The kill points are random, so each run lands in other places (staging writes, the swap,
checkpoint files, rotation); what must hold holds at every point, so no run can pass or fail by luck of timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO, video_llm_config

pytestmark = pytest.mark.timeout(240)

KILLS = {"video-llm": 40, "between-renames": 10, "checkpoint": 30, "memory-store": 30}
SEED = 20240611


def image_data(folder):
    rng = np.random.default_rng(0)
    records = []
    for index, answer in enumerate(["red", "blue", "a clip", "yes"]):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.png")
        turns = [{"from": "human", "value": "what colour is it?"}, {"from": "gpt", "value": answer}]
        records.append({"image": f"{index}.png", "conversations": turns})
    (folder / "data.json").write_text(json.dumps(records))
    return {"name": "omnimm/conversations", "path": str(folder / "data.json")}


@pytest.fixture(scope="module")
def report(word_tokenizer, tmp_path_factory):
    """Run every kind of kill once (one import of torch for all) and return the helper's report."""
    work = tmp_path_factory.mktemp("crash")
    model = video_llm_config(word_tokenizer)
    stage = {
        "name": "stage1",
        "train": ["connector", "llm"],
        "data": image_data(work),
        "learning_rate": 1e-2,
        "batch_size": 4,
        "max_steps": 1,
        "save_steps": 1,
        "scheduler": "constant",
        "warmup_ratio": 0.0,
        "shuffle": False,
        "logging_steps": 1,
    }
    run = {"model": model, "train": {"output_dir": str(work), "save_total_limit": 2, "stages": [stage]}}
    settings = {"kinds": list(KILLS), "kills": KILLS, "seed": SEED, "work": str(work), "model": model, "run": run}
    (work / "settings.json").write_text(json.dumps(settings))
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "scripts" / "crash_saves.py"),
            work / "settings.json",
            work / "report.json",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = json.loads((work / "report.json").read_text())
    print(json.dumps(reports, indent=1))  # the figures, shown with -s
    return reports


def check(found: dict, kind: str) -> None:
    assert found["failures"] == [], found
    assert found["kills"] == KILLS[kind], found
    assert found["clean_loads"] == found["kills"], found


def test_a_video_llm_save_killed_anywhere_loads_as_a_saved_version(report):
    found = report["video-llm"]
    check(found, "video-llm")
    assert found["leftovers_after_last_save"] == []  # the next save removed what the killed ones left


def test_a_video_llm_save_killed_between_its_renames_is_restored(report):
    found = report["between-renames"]
    check(found, "between-renames")
    # Every kill left no `final/`: the loader put the complete new save back (version 1, the one being saved).
    assert found["states"] == {"final missing + leftovers": KILLS["between-renames"]}
    assert found["versions_loaded"] == [0, KILLS["between-renames"]]
    assert found["leftovers_after_last_save"] == []


def test_a_killed_checkpoint_save_resumes_from_the_newest_complete_checkpoint(report):
    check(report["checkpoint"], "checkpoint")


def test_a_killed_memory_store_save_loads_the_old_or_the_new_store(report):
    check(report["memory-store"], "memory-store")
