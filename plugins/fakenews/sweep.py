"""The experiment: phases x machine-fake shares x seeds x detectors -> a JSON table and paper-style plots.

Per seed, the data is split by duplicate group (train / validation / test; see `group_split`) and each subclass of
the training and validation parts is shuffled once. Each grid point trains on a nested mixture of the training part
(fixed class sizes across the grid), validates (early stopping) on a mixture of the *same phase and share* drawn
from the validation part, and is scored on the seed's whole test part, per subclass.

`sweep.json` is rewritten atomically after every grid point; a rerun with the same output folder skips the points
already there (matched on their full settings: data, detector config, phase, share, seed, sizes, fractions).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnimm.errors import ConfigError, ConfigIssue
from omnimm.files import atomic_write_bytes, atomic_write_text
from omnimm_plugins.fakenews.configs import SweepConfig
from omnimm_plugins.fakenews.data import (
    SUBCLASSES,
    NewsItem,
    Split,
    drop_contradictions,
    group_split,
    load_items,
)
from omnimm_plugins.fakenews.evaluate import SubclassAccuracy
from omnimm_plugins.fakenews.findings import evaluate_findings, interval, paired_interval
from omnimm_plugins.fakenews.mixtures import (
    Mixture,
    build_mixture,
    largest_sizes,
    missing_subclasses,
    subclass_orders,
)

RESULTS = "sweep.json"
__all__ = ["RESULTS", "SweepPlan", "load_items", "plan_sweep", "plot", "run_sweep", "summarise"]


@dataclass
class SweepPlan:
    """What a sweep trains and scores on, before any detector runs: the data, each seed's split and subclass orders,
    and the mixture sizes; `mixtures()` gives a grid point's training and validation mixtures."""

    config: SweepConfig
    items: list[NewsItem]
    dropped: list[NewsItem]
    splits: dict[int, Split]
    orders: dict[int, tuple[dict[str, list[NewsItem]], dict[str, list[NewsItem]]]]
    real_size: int
    fake_size: int
    validation_sizes: list[int] | None

    def mixtures(self, phase: str, share: float, seed: int) -> tuple[Mixture, Mixture | None]:
        split, (train_order, validation_order) = self.splits[seed], self.orders[seed]
        mixture = build_mixture(
            split.train, phase, share, real_size=self.real_size, fake_size=self.fake_size, seed=seed,
            orders=train_order,
        )  # fmt: skip
        validation = None
        if self.validation_sizes:
            real, fake = self.validation_sizes
            validation = build_mixture(
                split.validation, phase, share, real_size=real, fake_size=fake, seed=seed, orders=validation_order
            )
        return mixture, validation

    def ids(self) -> dict[str, Any]:
        """Every split's ids and every grid point's training and validation mixture ids, by subclass: what an audit
        for leakage needs (`"<phase>/<share>/<seed>"` keys), without running a detector."""
        points = {}
        for phase in self.config.phases:
            for share in self.config.machine_fake_shares:
                for seed in self.config.seeds:
                    mixture, validation = self.mixtures(phase, share, seed)
                    points[f"{phase}/{share}/{seed}"] = {
                        "train": mixture.manifest["ids"],
                        "validation": validation.manifest["ids"] if validation else None,
                    }
        return {
            "splits": {
                str(seed): {part: info["ids"] for part, info in split.manifest().items()}
                for seed, split in self.splits.items()
            },
            "mixtures": points,
        }


def plan_sweep(config: SweepConfig, *, log: Callable[[str], None] = print) -> SweepPlan:
    """Load and split the data and fix the mixture sizes as `run_sweep` does (one-line errors for data the grid
    cannot use)."""
    items, dropped = _load(config, log)
    splits = {
        seed: group_split(items, test=config.test_fraction, validation=config.validation_fraction, seed=seed)
        for seed in config.seeds
    }
    real_size, fake_size = _training_sizes(config, splits)
    orders = {
        seed: (subclass_orders(split.train, seed), subclass_orders(split.validation, seed))
        for seed, split in splits.items()
    }
    return SweepPlan(
        config, items, dropped, splits, orders, real_size, fake_size, _validation_sizes(config, splits, log)
    )


def run_sweep(config: SweepConfig, *, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    from omnimm.registry import get_registry

    detectors = get_registry("detectors")
    plan = plan_sweep(config, log=log)
    real_size, fake_size, validation_sizes = plan.real_size, plan.fake_size, plan.validation_sizes
    log(
        f"{len(plan.items)} items; training mixtures of {real_size} real + {fake_size} fake, validation mixtures of "
        f"{validation_sizes or 'none'}; seeds {config.seeds}"
    )
    output = Path(config.output_dir)
    base = {
        "data": _fingerprint(plan.items),
        "real_size": real_size,
        "fake_size": fake_size,
        "validation_sizes": validation_sizes,
        "test_fraction": config.test_fraction,
        "validation_fraction": config.validation_fraction,
        "drop_contradictions": config.drop_contradictions,
    }
    done = _finished_rows(output / RESULTS)
    result: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "complete": False,
        "real_size": real_size,
        "fake_size": fake_size,
        "validation_sizes": validation_sizes,
        "dropped": [{"id": i.id, "subclass": i.subclass, "title": i.title} for i in plan.dropped],
        "splits": {str(seed): split.manifest() for seed, split in plan.splits.items()},
        "rows": [],
    }
    built = {name: detectors.build(detector) for name, detector in config.detectors.items()}
    grid = [
        (d, p, s, seed)
        for d in built
        for p in config.phases
        for s in config.machine_fake_shares
        for seed in config.seeds
    ]
    steps: Any = grid
    if progress:
        from rich.progress import track

        steps = track(grid, description="fakenews sweep")
    reused = 0
    for detector_name, phase, share, seed in steps:
        settings = {
            **base,
            "detector": detector_name,
            "detector_config": config.detectors[detector_name].model_dump(mode="json"),
            "phase": phase,
            "machine_fake_share": share,
            "seed": seed,
        }
        key = json.dumps(settings, sort_keys=True)
        if key in done:
            result["rows"].append(done[key])
            reused += 1
            continue
        row = _run_point(built[detector_name], plan, settings)
        result["rows"].append({"key": key, **row})
        _write(output / RESULTS, result)
    if reused:
        log(f"reused {reused} finished grid points from {output / RESULTS}")
    result["complete"] = True
    result["summary"] = summarise(result["rows"], resamples=config.bootstrap_resamples)
    _write(output / RESULTS, result)
    for name in built:
        plot(result, name, output / f"subclass-accuracy-{name}.png")
    return result


def _load(config: SweepConfig, log: Callable[[str], None]) -> tuple[list[NewsItem], list[NewsItem]]:
    items = load_items(config.data)
    dropped: list[NewsItem] = []
    if config.drop_contradictions:
        items, dropped = drop_contradictions(items)
        if dropped:
            ids = sorted({i.id for i in dropped})
            log(f"dropped {len(dropped)} items of {len(ids)} id(s) whose text is labelled both real and fake: {ids}")
    missing = missing_subclasses(items, config.phases, config.machine_fake_shares)
    if missing:
        raise ConfigError(
            [
                ConfigIssue(
                    "data",
                    f"{config.data} has no {', no '.join(missing)} items, which the phases "
                    f"{config.phases} with machine_fake_shares {config.machine_fake_shares} need",
                )
            ]
        )
    return items, dropped


def _training_sizes(config: SweepConfig, splits: dict[int, Split]) -> tuple[int, int]:
    for seed, split in splits.items():
        missing = missing_subclasses(split.train, config.phases, config.machine_fake_shares)
        if missing:
            raise ValueError(
                f"the training part of seed {seed} has no {', no '.join(missing)} items (the data has too few of "
                "them for this split): lower test_fraction/validation_fraction or drop the shares that need them"
            )
    fits = [largest_sizes(split.train, config.phases, config.machine_fake_shares) for split in splits.values()]
    return config.real_size or min(f[0] for f in fits), config.fake_size or min(f[1] for f in fits)


def _validation_sizes(config: SweepConfig, splits: dict[int, Split], log: Callable[[str], None]) -> list[int] | None:
    """(real, fake) of the validation mixtures: the largest every seed, phase and share can fill; None (no early
    stopping, fixed training length) when some seed's validation part cannot hold both classes."""
    fits = [largest_sizes(split.validation, config.phases, config.machine_fake_shares) for split in splits.values()]
    real, fake = min(f[0] for f in fits), min(f[1] for f in fits)
    if real and fake:
        return [real, fake]
    if config.validation_fraction:
        log("a validation part lacks a subclass the grid needs: detectors train without validation (fixed length)")
    return None


def _run_point(detector: Any, plan: SweepPlan, settings: dict[str, Any]) -> dict[str, Any]:
    phase, share, seed = settings["phase"], settings["machine_fake_share"], settings["seed"]
    mixture, validation = plan.mixtures(phase, share, seed)
    test = plan.splits[seed].test
    started = time.perf_counter()
    options = {"seed": seed} if "seed" in inspect.signature(detector.fit).parameters else {}
    detector.fit(mixture.items, validation.items if validation else [], **options)
    scores = SubclassAccuracy().evaluate(test, detector.predict_proba(test))
    return {
        "detector": settings["detector"],
        "phase": phase,
        "machine_fake_share": share,
        "seed": seed,
        "detector_seed": options.get("seed"),
        "seconds": time.perf_counter() - started,
        "mixture": mixture.manifest["counts"],
        "validation_mixture": validation.manifest["counts"] if validation else None,
        "ids": {
            "train": mixture.manifest["ids"],
            "validation": validation.manifest["ids"] if validation else None,
        },  # the test ids are the seed's test part: splits[seed]["test"]["ids"]
        **scores,
    }


def _fingerprint(items: Sequence[NewsItem]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for item in sorted(items, key=lambda i: (i.subclass, i.id, i.title, i.description, i.text)):
        digest.update(json.dumps([item.subclass, item.id, item.title, item.description, item.text]).encode())
    return digest.hexdigest()


def _finished_rows(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        return {row["key"]: row for row in previous["rows"] if "key" in row}
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{path}: not a sweep result this version can resume; move it away or pick another output_dir"
        ) from None


def _write(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")


def summarise(rows: list[dict[str, Any]], *, resamples: int = 10_000) -> dict[str, Any]:
    """Per (detector, phase, share): mean and 95% bootstrap interval over seeds of every metric and subclass, and the
    paired change of each subclass against share 0 of the same phase; per detector: the findings and the transfer
    comparison. Subclasses missing from a seed's test part are left out of that seed (never a crash)."""
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["detector"], row["phase"], row["machine_fake_share"]), {})[row["seed"]] = row
    table = []
    for (detector, phase, share), members in groups.items():
        entry: dict[str, Any] = {
            "detector": detector,
            "phase": phase,
            "machine_fake_share": share,
            "seeds": len(members),
        }
        for metric in ("accuracy", "macro_f1", "source_gap"):
            entry[metric] = interval([m[metric] for m in members.values()], resamples=resamples)
        entry["subclass_accuracy"] = {
            s: interval([m["subclass_accuracy"][s] for m in members.values()], resamples=resamples) for s in SUBCLASSES
        }
        baseline = groups.get((detector, phase, 0.0))
        if baseline is not None and share != 0.0:
            seeds = sorted(set(members) & set(baseline))
            entry["change_vs_share_0"] = {
                s: paired_interval(
                    [members[k]["subclass_accuracy"][s] for k in seeds],
                    [baseline[k]["subclass_accuracy"][s] for k in seeds],
                    resamples=resamples,
                )
                for s in SUBCLASSES
            }
        table.append(entry)
    findings, transfer = {}, {}
    for detector in sorted({row["detector"] for row in rows}):
        findings[detector] = evaluate_findings([r for r in rows if r["detector"] == detector], resamples=resamples)
        move = next((f for f in findings[detector] if f["key"] == "transfer"), None)
        if move is not None and move["a_mean"] and move["b_mean"]:
            transfer[detector] = {
                "human_trained_on_machine_items": move["a_mean"]["mean"],
                "machine_trained_on_human_items": move["b_mean"]["mean"],
                "difference": move["difference"],
            }
    return {"table": table, "findings": findings, "transfer": transfer}


def plot(result: dict[str, Any], detector: str, path: Path) -> Path:
    """Per-subclass accuracy vs machine-fake share, one panel per phase (mean over seeds, bars: 95% interval)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    table = [e for e in result["summary"]["table"] if e["detector"] == detector]
    phases = list(dict.fromkeys(e["phase"] for e in table))
    figure, axes = pyplot.subplots(1, len(phases), figsize=(4.2 * len(phases), 3.6), sharey=True, squeeze=False)
    for axis, phase in zip(axes[0], phases, strict=True):
        entries = sorted((e for e in table if e["phase"] == phase), key=lambda e: e["machine_fake_share"])
        for subclass, marker in zip(SUBCLASSES, "osD^", strict=True):
            points = [(100 * e["machine_fake_share"], e["subclass_accuracy"][subclass]) for e in entries]
            points = [(x, v) for x, v in points if v is not None]
            if not points:
                continue
            axis.errorbar(
                [x for x, _ in points], [v["mean"] for _, v in points],
                yerr=[[v["mean"] - v["low"] for _, v in points], [v["high"] - v["mean"] for _, v in points]],
                marker=marker, capsize=3, label=subclass,
            )  # fmt: skip
        axis.set_title(phase)
        axis.set_xlabel("machine-fake share of the fake class (%)")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(loc="lower right")
    figure.suptitle(f"{detector} detector, {len(result['config']['seeds'])} seeds (bars: 95% bootstrap interval)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())
