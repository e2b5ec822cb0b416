"""Train the test suite's tiny video LLM the same way in one process and in each distributed mode on gloo CPU
processes, and print how far apart they end: the largest loss difference over the logged steps and the largest
final weight difference. The figures in docs/training.md come from it.

    OMP_NUM_THREADS=1 python tests/scripts/distributed_parity.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.conftest import WORDS  # noqa: E402
from tests.test_training_distributed import ANSWERS, launch, losses, run_config, stage, weights  # noqa: E402


def gaps(single: Path, other: Path, stage_name: str = "stage1") -> tuple[float, float]:
    one, many = losses(single, stage_name), losses(other, stage_name)
    a, b = weights(single, stage_name), weights(other, stage_name)
    return max(abs(one[s] - many[s]) for s in one), max(float((a[k] - b[k]).abs().max()) for k in a)


def main() -> None:
    from omnimm.llm.tokenizer import train_word_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = root / "tokenizer"
        train_word_tokenizer(WORDS, extra_tokens=["<video>"]).save_pretrained(tokenizer)
        rng = np.random.default_rng(0)
        records = []
        for index, answer in enumerate(ANSWERS):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{index}.png")
            turns = [{"from": "human", "value": "what colour is it?"}, {"from": "gpt", "value": answer}]
            records.append({"image": f"{index}.png", "conversations": turns})
        (root / "data.json").write_text(json.dumps(records))
        data = {"name": "omnimm/conversations", "path": str(root / "data.json")}

        launch(run_config(tokenizer, root / "single", [stage(data)]), 1)
        rows = []
        for label, processes, settings in [
            ("ddp", 2, {"mode": "ddp"}),
            ("fsdp full", 2, {"mode": "fsdp"}),
            ("fsdp grad_op", 2, {"mode": "fsdp", "sharding": "grad_op"}),
            ("fsdp hybrid (2 x 2)", 4, {"mode": "fsdp", "sharding": "hybrid", "shard_group_size": 2}),
        ]:
            output = root / label.replace(" ", "-")
            batch = 4 // processes
            launch(run_config(tokenizer, output, [stage(data, batch_size=batch)], distributed=settings), processes)
            rows.append((label, processes, *gaps(root / "single", output)))

        # bf16 autocast: one process casts per op, FSDP2's mixed-precision policy casts the gathered weights and
        # reduces gradients in bf16, so they round differently
        launch(run_config(tokenizer, root / "single-bf16", [stage(data)], precision="bf16"), 1)
        bf16 = run_config(tokenizer, root / "fsdp-bf16", [stage(data, batch_size=2)], precision="bf16")
        bf16["train"]["distributed"] = {"mode": "fsdp"}
        launch(bf16, 2)
        rows.append(("fsdp full, bf16 (against one bf16 process)", 2, *gaps(root / "single-bf16", root / "fsdp-bf16")))

        resumed = root / "fsdp-resumed"
        fsdp = {"mode": "fsdp"}
        first = run_config(tokenizer, resumed, [stage(data, batch_size=2, max_steps=2, save_steps=1)], distributed=fsdp)
        launch(first, 2)
        shutil.rmtree(resumed / "stage1" / "final")
        longer = run_config(tokenizer, resumed, [stage(data, batch_size=2, save_steps=1)], distributed=fsdp)
        launch(longer, 2, "--resume")
        rows.append(("fsdp full, stopped after step 2 and resumed", 2, *gaps(root / "single", resumed)))

        lora = {"rank": 2, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
        for label, processes, batch, settings in [("single", 1, 4, {}), ("fsdp", 2, 2, fsdp)]:
            stages = [
                stage(data, train=["connector"], batch_size=batch, max_steps=2),
                stage(data, name="stage2", batch_size=batch, max_steps=2, lora=lora),
            ]
            config = run_config(tokenizer, root / f"two-{label}", stages, gradient_checkpointing=["llm"])
            config["train"]["distributed"] = settings
            launch(config, processes)
        for name, what in (("stage1", "connector"), ("stage2", "LoRA, merged; LLM checkpointed")):
            label = f"fsdp full, two stages: {name} ({what})"
            rows.append((label, 2, *gaps(root / "two-single", root / "two-fsdp", name)))

    print(f"{'mode':<70} {'processes':>9} {'max loss diff':>14} {'max weight diff':>16}")
    for label, processes, loss, weight in rows:
        print(f"{label:<70} {processes:>9} {loss:>14.2e} {weight:>16.2e}")


if __name__ == "__main__":
    main()
