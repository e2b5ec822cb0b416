"""fakenews: the phase x machine-fake-share grid on PolitiFact++ and the paper's findings, with paired intervals.

The embedding detectors and the char n-gram detector run 10 seeds x 7 shares (the paper's 33% point included); the
fine-tuned transformer, one model per grid point (minutes each on 2 CPU cores), runs 2 seeds at shares 0 and 1 of the
human-legacy and machine-dominance phases.
Every setting of a detector sees the same seeds (split, subclass orders, detector seed), so settings are compared
paired over seeds; a finding is reproduced only when its 95% paired-bootstrap interval excludes no effect.

Plots go to docs/plugins/ (one figure per detector), full tables to benchmarks/results/fakenews-<detector>.json, the
ids of every split and mixture to benchmarks/results/fakenews-mixtures.json, and the findings table is written into
docs/plugins/fakenews.md between its `results` markers, from those JSON files.
Sweeps resume: finished grid points are kept under $OMNIMM_BENCH_CACHE (default ~/.cache/omnimm/bench).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "politifact_pp"
DOCS = HERE.parent / "docs" / "plugins"
PAGE = DOCS / "fakenews.md"
CACHE = Path(os.environ.get("OMNIMM_BENCH_CACHE", Path.home() / ".cache" / "omnimm" / "bench"))
SEEDS = list(range(10))
SHARES = [0.0, 0.1, 0.25, 0.33, 0.5, 0.75, 1.0]
PHASES = ["human-legacy", "coexistence", "machine-dominance"]
# detector config, seeds, shares, phases; the transformer's grid is the part the first three findings need
SWEEPS: dict[str, tuple[dict[str, Any], list[int], list[float], list[str]]] = {
    "embedding-logistic": ({"name": "fakenews/embedding", "classifier": "logistic"}, SEEDS, SHARES, PHASES),
    "embedding-lightgbm": ({"name": "fakenews/embedding", "classifier": "lightgbm"}, SEEDS, SHARES, PHASES),
    "char-ngram": ({"name": "fakenews/char-ngram"}, SEEDS, SHARES, PHASES),
    "transformer": (
        {"name": "fakenews/transformer", "epochs": 4},
        [0, 1],
        [0.0, 1.0],
        ["human-legacy", "machine-dominance"],
    ),
}
LABELS = {
    "embedding-logistic": "MiniLM embeddings + logistic regression",
    "embedding-lightgbm": "MiniLM embeddings + LightGBM",
    "char-ngram": "char 2-5-grams + logistic regression",
    "transformer": "fine-tuned MiniLM",
}
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


MIXTURES = HERE / "results" / "fakenews-mixtures.json"


def sweep_config(name: str, detector: dict[str, Any], seeds: list[int], shares: list[float], phases: list[str]) -> Any:
    from omnimm_plugins.fakenews.configs import SweepConfig

    return SweepConfig.model_validate(
        {
            "data": str(DATA),
            "output_dir": str(CACHE / f"fakenews-{name}"),
            "seeds": seeds,
            "machine_fake_shares": shares,
            "phases": phases,
            "detectors": {name: detector},
        }
    )


def sweep(
    name: str, detector: dict[str, Any], seeds: list[int], shares: list[float], phases: list[str]
) -> dict[str, Any]:
    from omnimm.files import atomic_write_text
    from omnimm_plugins.fakenews.sweep import run_sweep

    config = sweep_config(name, detector, seeds, shares, phases)
    folder = Path(config.output_dir)
    result = run_sweep(config, log=lambda text: None, progress=False)
    DOCS.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / f"subclass-accuracy-{name}.png", DOCS / f"fakenews-{name}.png")
    atomic_write_text(HERE / "results" / f"fakenews-{name}.json", json.dumps(slim(result, folder), indent=1) + "\n")
    return result


def slim(result: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The result without the ids of every mixture and split (megabytes per detector): those stay in the sweep's own
    `sweep.json`, whose path this records."""
    rows = [{k: v for k, v in row.items() if k not in ("ids", "key")} for row in result["rows"]]
    splits = {seed: {part: info["counts"] for part, info in parts.items()} for seed, parts in result["splits"].items()}
    return {**result, "rows": rows, "splits": splits, "full_results": str(folder / "sweep.json")}


def _interval(value: dict[str, float] | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    form = "{:+.3f}" if signed else "{:.3f}"
    return f"{form.format(value['mean'])} [{form.format(value['low'])}, {form.format(value['high'])}]"


def findings_table(results: dict[str, dict[str, Any]]) -> str:
    """The findings of every detector as a markdown table: both sides, the paired difference and the verdict."""
    lines = [
        "| detector | seeds | claim | A | B | A - B [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        seeds = len(result["config"]["seeds"])
        for finding in result["summary"]["findings"][name]:
            lines.append(
                f"| {LABELS.get(name, name)} | {seeds} | {finding['claim']} | {finding['a']}: "
                f"{_interval(finding['a_mean'])} | {finding['b']}: {_interval(finding['b_mean'])} | "
                f"{_interval(finding['difference'], signed=True)} | **{finding['verdict']}** |"
            )
    return "\n".join(lines)


def subclass_table(results: dict[str, dict[str, Any]], phase: str = "human-legacy") -> str:
    """Per-subclass test accuracy (mean [95% CI] over seeds) at MF share 0 and 1 of one phase, per detector."""
    lines = [
        f"| detector | {phase} MF share | HR | HF | MR | MF | source gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        entries = {e["machine_fake_share"]: e for e in result["summary"]["table"] if e["phase"] == phase}
        for share in (0.0, 1.0):
            entry = entries.get(share)
            if entry is None:
                continue
            cells = [_interval(entry["subclass_accuracy"][s]) for s in ("HR", "HF", "MR", "MF")]
            lines.append(
                f"| {LABELS.get(name, name)} | {share:g} | {' | '.join(cells)} | "
                f"{_interval(entry['source_gap'], signed=True)} |"
            )
    return "\n".join(lines)


def write_docs(results: dict[str, dict[str, Any]]) -> None:
    """Replace the block between the page's results markers with tables built from `results`."""
    from omnimm.files import atomic_write_text

    first = next(iter(results.values()))
    block = "\n\n".join(
        [
            BEGIN,
            f"Generated by `python benchmarks/run.py fakenews` from benchmarks/results/fakenews-*.json "
            f"({first['real_size']} real + {first['fake_size']} fake items per training mixture; validation "
            f"mixtures of {first['validation_sizes']}).",
            findings_table(results),
            subclass_table(results),
            END,
        ]
    )
    page = PAGE.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        raise SystemExit(f"{PAGE}: the markers {BEGIN} ... {END} are missing")
    atomic_write_text(PAGE, pattern.sub(lambda _: block, page))


def findings_rows(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for finding in result["summary"]["findings"][name]:
        difference = finding["difference"] or {}
        rows.append(
            {
                "benchmark": f"{name}: {finding['claim']}",
                "ours_label": finding["a"],
                "reference_label": finding["b"],
                "ours": (finding["a_mean"] or {}).get("mean", float("nan")),
                "reference": (finding["b_mean"] or {}).get("mean"),
                "ratio": None,
                "unit": "accuracy",
                "notes": f"A - B {_interval(finding['difference'], signed=True)} ({difference.get('n', 0)} seeds): "
                f"{finding['verdict']}",
            }
        )
    return rows


def write_mixture_ids() -> Path:
    """The ids of every split and of every training and validation mixture of the sweeps above, in one file beside
    their results (the results themselves keep only counts): whoever has the data can check for leakage.
    tests/test_fakenews_leakage.py checks the file against the data and against the results' counts."""
    from omnimm.files import atomic_write_text
    from omnimm_plugins.fakenews.sweep import plan_sweep

    splits: dict[str, Any] = {}
    grids: dict[str, Any] = {}
    for name, settings in SWEEPS.items():
        plan = plan_sweep(sweep_config(name, *settings), log=lambda text: None)
        ids = plan.ids()
        for seed, parts in ids["splits"].items():
            if splits.setdefault(seed, parts) != parts:
                raise RuntimeError(f"seed {seed} splits differently for {name}")
        grid = {
            "real_size": plan.real_size,
            "fake_size": plan.fake_size,
            "validation_sizes": plan.validation_sizes,
            "mixtures": ids["mixtures"],
        }
        same = next((other for other, known in grids.items() if known == grid), None)
        grids[name] = {"same_as": same} if same else grid  # detectors of one grid train on the same mixtures
    dropped = [{"subclass": i.subclass, "id": i.id} for i in plan.dropped]
    audit = {"dropped": dropped, "splits": splits, "detectors": grids}
    return atomic_write_text(MIXTURES, json.dumps(audit, separators=(",", ":")) + "\n")


def run(quick: bool = False) -> list[dict[str, Any]]:
    if not DATA.is_dir():
        return []
    rows, results = [], {}
    for name, (detector, seeds, shares, phases) in SWEEPS.items():
        if quick and name == "transformer":
            continue
        result = sweep(name, detector, seeds[:2] if quick else seeds, shares, phases)
        results[name] = result
        rows += findings_rows(name, result)
    if not quick:
        write_docs(results)
        write_mixture_ids()
    return rows
