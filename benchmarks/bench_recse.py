"""recse: STS-B test Spearman of MiniLM as shipped, with CLS pooling, after SimCSE and after SimCSE + reshape
(3 seeds, same data and steps, best dev checkpoint); and peak memory / step time vs batch size for SimCSE, SimCSE +
reshape and a discrete augmentation with more views (word repetition, 4 views), each in a fresh process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
STSB = SHARED / "stsb"
SCRIPT = SHARED / "tinyshakespeare" / "input.txt"
PLOT = HERE.parent / "docs" / "plugins" / "recse-memory.png"
SEEDS = [0, 1, 2]
STEPS = 150
EVAL_STEPS = 50
RESHAPE = {"source": "embeddings", "tower": "cnn", "max_length": 32}
METHODS = {
    "SimCSE": {"framework": "simcse"},
    "SimCSE + reshape": {"framework": "simcse", "reshape": RESHAPE},
    "word repetition, 4 views": {"framework": "repeat", "views": 4},
}


def test_spearman(encoder: Any) -> float:
    from omnimm.registry import evaluators

    return evaluators.build({"name": "recse/stsb", "folder": str(STSB), "split": "test"}).evaluate(encoder)["spearman"]


def baseline(pooling: str) -> float:
    from omnimm.registry import encoders

    return test_spearman(encoders.build({"name": "hf/sentence-encoder", "pooling": pooling}))


def trained(model: dict[str, Any], seed: int, steps: int, folder: Path) -> tuple[float, float]:
    from omnimm.registry import encoders
    from omnimm_plugins.recse.configs import RecseTrainConfig
    from omnimm_plugins.recse.training import train

    config = RecseTrainConfig.model_validate(
        {
            "model": {"encoder": {"name": "hf/sentence-encoder", "pooling": "cls"}, **model},
            "data": {"stsb": str(STSB), "script": str(SCRIPT)},
            "output_dir": str(folder),
            "eval_stsb": str(STSB),
            "max_steps": steps,
            "eval_steps": min(EVAL_STEPS, steps),
            "seed": seed,
        }
    )
    result = train(config, progress=False)
    encoder = encoders.build({"name": "hf/sentence-encoder", "path": str(result.model_dir), "pooling": "cls"})
    return float(result.best_spearman), test_spearman(encoder)


def bench_quality(quick: bool) -> list[dict[str, Any]]:
    seeds, steps = (SEEDS[:1], 30) if quick else (SEEDS, STEPS)
    shipped, cls = baseline("mean"), baseline("cls")
    scores: dict[str, list[float]] = {}
    dev: dict[str, list[float]] = {}
    for name in ("SimCSE", "SimCSE + reshape"):
        for seed in seeds:
            with tempfile.TemporaryDirectory() as folder:
                best_dev, test = trained(METHODS[name], seed, steps, Path(folder))
            scores.setdefault(name, []).append(test)
            dev.setdefault(name, []).append(best_dev)

    def summary(name: str) -> str:
        values = scores[name]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} +- {spread:.4f}"

    ours, reference = statistics.mean(scores["SimCSE + reshape"]), statistics.mean(scores["SimCSE"])
    return [
        {
            "benchmark": f"STS-B test Spearman, MiniLM CLS start, {steps} steps x batch 64, seeds {seeds}",
            "ours_label": "SimCSE + recse reshape",
            "reference_label": "SimCSE",
            "ours": ours,
            "reference": reference,
            "ratio": ours / reference,
            "unit": "Spearman",
            "notes": (
                f"SimCSE + reshape {summary('SimCSE + reshape')}, SimCSE {summary('SimCSE')}; start (CLS) {cls:.4f}; "
                f"MiniLM as shipped (mean) {shipped:.4f}"
            ),
            "test_scores": scores,
            "dev_scores": dev,
            "minilm_mean": shipped,
            "minilm_cls": cls,
        }
    ]


# Peak memory is read from /proc/self/status (VmHWM), reset after loading: ru_maxrss would carry over the size of
# the benchmark process this one was forked from.
MEASURE = """
import json, sys, time, torch
from omnimm_plugins.recse.configs import ContrastiveConfig
from omnimm_plugins.recse.model import ContrastiveModel, RecseCollator
method, batch = json.loads(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
config = ContrastiveConfig.model_validate({"encoder": {"name": "hf/sentence-encoder", "pooling": "cls"}, **method})
cuda = torch.cuda.is_available()
model = ContrastiveModel(config).train().to("cuda" if cuda else "cpu")
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
collate = RecseCollator(model.tokenizer, config, max_length=32)
lines = [l.strip() for l in open(sys.argv[3], encoding="utf-8") if len(l.split()) >= 6]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current RSS
if cuda:
    torch.cuda.reset_peak_memory_stats()
times = []
for step in range(3):
    batch_rows = [{"text": t} for t in lines[step * batch:(step + 1) * batch]]
    started = time.perf_counter()
    inputs = {k: v.to("cuda" if cuda else "cpu") for k, v in collate(batch_rows).items()}
    loss = model(**inputs)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if cuda:
        torch.cuda.synchronize()
    times.append(time.perf_counter() - started)
cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
step = sorted(times[1:])[0]
print(json.dumps({"step": step, "peak_mb": status("VmHWM:"), "model_mb": before, "cuda_peak_mb": cuda_peak}))
"""


def bench_memory(quick: bool) -> list[dict[str, Any]]:
    batches = [16, 64] if quick else [16, 32, 64, 128, 256]
    measured: dict[str, dict[int, dict[str, float]]] = {}
    for name, method in METHODS.items():
        for batch in batches:
            done = subprocess.run(
                [sys.executable, "-c", MEASURE, json.dumps(method), str(batch), str(SCRIPT)],
                capture_output=True,
                text=True,
                check=True,
            )
            measured.setdefault(name, {})[batch] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for batch in batches:
        ours, reference = measured["SimCSE + reshape"][batch], measured["SimCSE"][batch]
        discrete = measured["word repetition, 4 views"][batch]
        rows.append(
            {
                "benchmark": f"training step, batch {batch}, max length 32: peak CPU RSS",
                "ours_label": "SimCSE + reshape",
                "reference_label": "SimCSE",
                "ours": ours["peak_mb"],
                "reference": reference["peak_mb"],
                "ratio": ours["peak_mb"] / reference["peak_mb"],
                "unit": "MB",
                "notes": (
                    f"word repetition 4 views {discrete['peak_mb']:.0f} MB; step {ours['step']:.2f} s vs "
                    f"{reference['step']:.2f} s (4 views {discrete['step']:.2f} s); after loading "
                    f"{reference['model_mb']:.0f} MB"
                ),
                "measured": {name: values[batch] for name, values in measured.items()},
            }
        )
    plot(measured, batches)
    return rows


def plot(measured: dict[str, dict[int, dict[str, float]]], batches: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (memory, speed) = pyplot.subplots(1, 2, figsize=(10, 3.8))
    for name, values in measured.items():
        memory.plot(batches, [values[b]["peak_mb"] - values[b]["model_mb"] for b in batches], marker="o", label=name)
        speed.plot(batches, [values[b]["step"] for b in batches], marker="o", label=name)
    for axis, label in ((memory, "peak RSS above the loaded model (MB)"), (speed, "seconds per training step")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(batches, [str(b) for b in batches])
        axis.set_xlabel("batch size (sentences)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    memory.legend()
    figure.suptitle("MiniLM-L6, max length 32, CPU (2 cores)")
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)


def run(quick: bool = False) -> list[dict[str, Any]]:
    if not STSB.is_dir():
        return []
    return [*bench_quality(quick), *bench_memory(quick)]
