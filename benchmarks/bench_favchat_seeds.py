"""favchat's demo, mixture of experts against a dense connector of the same size, over several paired seeds.

One demo run is one seed: the initial weights and the data order. Here both connectors train on the same clips with
the same seeds (0 is the demo's own), and each question kind gets the mean accuracy of each, the mean paired
difference and its 95% t-interval over the seeds. Accuracy, not speed: it says whether the demo can tell the two
apart at all. About three minutes a seed on 2 CPU cores, the first longer (it runs SFace on every face once).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SEEDS = (0, 1, 2, 3, 4)


def train_and_score(workdir: Path, variant: str, seed: int, dense: dict[str, Any] | None, quick: bool) -> Any:
    from omnimm.training.trainer import run_training
    from omnimm_plugins.favchat.demo import demo_config, evaluate

    run = demo_config(workdir, variant, quick=quick, dense=dense, seed=seed)
    model = run_training(run, progress=False)
    return model, evaluate(model, workdir)


def t_interval(differences: list[float]) -> tuple[float, float]:
    from scipy import stats

    if len(differences) < 2:
        return float("nan"), float("nan")
    mean = statistics.fmean(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean - half, mean + half


def run(quick: bool = False) -> list[dict[str, Any]]:
    from omnimm_plugins.favchat.demo import dense_connector, prepare

    seeds = SEEDS[:1] if quick else SEEDS
    accuracy: dict[str, dict[int, dict[str, float]]] = {"moe": {}, "dense": {}}
    with tempfile.TemporaryDirectory(prefix="favchat-seeds-") as folder:
        workdir = Path(folder)
        prepare(workdir, quick=quick)
        dense = None
        for seed in seeds:
            started = time.perf_counter()
            model, accuracy["moe"][seed] = train_and_score(workdir, "favchat", seed, None, quick)
            dense = dense or dense_connector(model)
            _, accuracy["dense"][seed] = train_and_score(workdir, "dense-connector", seed, dense, quick)
            print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for kind in accuracy["moe"][seeds[0]]:
        moe = [accuracy["moe"][seed][kind]["accuracy"] for seed in seeds]
        plain = [accuracy["dense"][seed][kind]["accuracy"] for seed in seeds]
        differences = [a - b for a, b in zip(moe, plain, strict=True)]
        low, high = t_interval(differences)
        interval = f"95% t-interval over seeds [{low:+.1%}, {high:+.1%}]" if len(seeds) > 1 else "one seed: no interval"
        per_seed = ", ".join(f"{d:+.0%}" for d in differences)
        rows.append(
            {
                "benchmark": f"demo held-out accuracy, '{kind}' questions, {len(seeds)} paired seeds",
                "ours_label": "favchat/moe-adapter (4 experts, top-2)",
                "reference_label": "dense connector of the same size",
                "ours": statistics.fmean(moe),
                "reference": statistics.fmean(plain),
                "ratio": statistics.fmean(moe) / statistics.fmean(plain) if any(plain) else None,
                "unit": "accuracy",
                "notes": f"difference {statistics.fmean(differences):+.1%}, {interval}; per seed {per_seed}",
                "per_seed": {"moe": moe, "dense": plain, "seeds": list(seeds)},
            }
        )
    return rows
