"""The experiment: phases x machine-fake shares x seeds x detectors -> a JSON table and paper-style plots.

Per seed, the data is split by `id` (train / validation / test); each grid point trains on a mixture drawn from the
training part (fixed class sizes across the whole grid) and is scored on the same test part, per subclass.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnimm.files import atomic_write_text
from omnimm_plugins.fakenews.configs import SweepConfig
from omnimm_plugins.fakenews.data import SUBCLASSES, NewsItem, group_split, load_four_subclass, load_records
from omnimm_plugins.fakenews.evaluate import SubclassAccuracy
from omnimm_plugins.fakenews.mixtures import build_mixture, largest_sizes

RESULTS = "sweep.json"


def load_items(source: str) -> list[NewsItem]:
    path = Path(source)
    return load_four_subclass(path) if path.is_dir() else load_records(path)


def run_sweep(config: SweepConfig, *, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    from omnimm.registry import get_registry

    detectors = get_registry("detectors")

    items = load_items(config.data)
    splits = {
        seed: group_split(items, test=config.test_fraction, validation=config.validation_fraction, seed=seed)
        for seed in config.seeds
    }
    fits = [largest_sizes(split.train) for split in splits.values()]
    real_size = config.real_size or min(f[0] for f in fits)
    fake_size = config.fake_size or min(f[1] for f in fits)
    log(f"{len(items)} items; training mixtures of {real_size} real + {fake_size} fake; seeds {config.seeds}")
    evaluator = SubclassAccuracy()
    built = {name: detectors.build(detector) for name, detector in config.detectors.items()}
    grid = [
        (d, p, s, seed)
        for d in built
        for p in config.phases
        for s in config.machine_fake_shares
        for seed in config.seeds
    ]
    rows: list[dict[str, Any]] = []
    steps: Any = grid
    if progress:
        from rich.progress import track

        steps = track(grid, description="fakenews sweep")
    for detector_name, phase, share, seed in steps:
        split = splits[seed]
        mixture = build_mixture(split.train, phase, share, real_size=real_size, fake_size=fake_size, seed=seed)
        started = time.perf_counter()
        detector = built[detector_name].fit(mixture.items, split.validation)
        scores = evaluator.evaluate(split.test, detector.predict_proba(split.test))
        rows.append(
            {
                "detector": detector_name,
                "phase": phase,
                "machine_fake_share": share,
                "seed": seed,
                "seconds": time.perf_counter() - started,
                "mixture": mixture.manifest["counts"],
                **scores,
            }
        )
    result = {
        "config": config.model_dump(mode="json"),
        "real_size": real_size,
        "fake_size": fake_size,
        "splits": {str(seed): split.manifest() for seed, split in splits.items()},
        "rows": rows,
        "summary": summarise(rows),
    }
    output = Path(config.output_dir)
    atomic_write_text(output / RESULTS, json.dumps(result, indent=1) + "\n")
    for name in built:
        plot(result, name, output / f"subclass-accuracy-{name}.png")
    return result


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds per (detector, phase, share), and the transfer comparison."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["detector"], row["phase"], row["machine_fake_share"]), []).append(row)
    table = []
    for (detector, phase, share), members in groups.items():
        entry: dict[str, Any] = {
            "detector": detector,
            "phase": phase,
            "machine_fake_share": share,
            "seeds": len(members),
        }
        for metric in ("accuracy", "macro_f1", "source_gap"):
            entry[metric] = _mean_std([m[metric] for m in members])
        entry["subclass_accuracy"] = {s: _mean_std([m["subclass_accuracy"][s] for m in members]) for s in SUBCLASSES}
        table.append(entry)
    transfer = {}
    for detector in sorted({row["detector"] for row in rows}):
        human = [
            e
            for e in table
            if e["detector"] == detector and e["phase"] == "human-legacy" and e["machine_fake_share"] == 0
        ]
        machine = [
            e
            for e in table
            if e["detector"] == detector and e["phase"] == "machine-dominance" and e["machine_fake_share"] == 1
        ]
        if human and machine:
            transfer[detector] = {
                "human_trained_on_machine_items": _mean_of(human[0], ("MR", "MF")),
                "machine_trained_on_human_items": _mean_of(machine[0], ("HR", "HF")),
            }
    return {"table": table, "transfer": transfer}


def _mean_std(values: list[float | None]) -> dict[str, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"mean": statistics.mean(present), "std": statistics.stdev(present) if len(present) > 1 else 0.0}


def _mean_of(entry: dict[str, Any], subclasses: tuple[str, ...]) -> float:
    return statistics.mean(entry["subclass_accuracy"][s]["mean"] for s in subclasses)


def plot(result: dict[str, Any], detector: str, path: Path) -> Path:
    """Per-subclass accuracy vs machine-fake share, one panel per phase (mean over seeds, bars: one std)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    table = [e for e in result["summary"]["table"] if e["detector"] == detector]
    phases = list(dict.fromkeys(e["phase"] for e in table))
    figure, axes = pyplot.subplots(1, len(phases), figsize=(4.2 * len(phases), 3.6), sharey=True, squeeze=False)
    for axis, phase in zip(axes[0], phases, strict=True):
        entries = sorted((e for e in table if e["phase"] == phase), key=lambda e: e["machine_fake_share"])
        shares = [100 * e["machine_fake_share"] for e in entries]
        for subclass, marker in zip(SUBCLASSES, "osD^", strict=True):
            values = [e["subclass_accuracy"][subclass] for e in entries]
            axis.errorbar(
                shares, [v["mean"] for v in values], yerr=[v["std"] for v in values], marker=marker, capsize=3,
                label=subclass,
            )  # fmt: skip
        axis.set_title(phase)
        axis.set_xlabel("machine-fake share of the fake class (%)")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(loc="lower right")
    figure.suptitle(f"{detector} detector, seeds {result['config']['seeds']}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    pyplot.close(figure)
    temporary.replace(path)
    return path
