"""fakenews: the phase x machine-fake-share grid on PolitiFact++ with the embedding detectors (3 seeds, 6 shares) and
the fine-tuned transformer (2 seeds, shares 0 and 1, up to 4 epochs: it trains a model per grid point, ~1 minute each
on 2 CPU cores), and the paper's findings as rows.

Plots go to docs/plugins/ (one figure per detector, one panel per phase); full tables to
benchmarks/results/fakenews-<detector>.json.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "politifact_pp"
DOCS = HERE.parent / "docs" / "plugins"
SWEEPS = {
    "embedding-logistic": ({"name": "fakenews/embedding", "classifier": "logistic"}, [0, 1, 2], None),
    "embedding-lightgbm": ({"name": "fakenews/embedding", "classifier": "lightgbm"}, [0, 1, 2], None),
    "transformer": ({"name": "fakenews/transformer", "epochs": 4}, [0, 1], [0.0, 1.0]),
}
SHARES = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]


def sweep(name: str, detector: dict[str, Any], seeds: list[int], shares: list[float] | None) -> dict[str, Any]:
    from omnimm.files import atomic_write_text
    from omnimm_plugins.fakenews.configs import SweepConfig
    from omnimm_plugins.fakenews.sweep import run_sweep

    with tempfile.TemporaryDirectory() as folder:
        config = SweepConfig.model_validate(
            {
                "data": str(DATA),
                "output_dir": folder,
                "seeds": seeds,
                "machine_fake_shares": shares or SHARES,
                "detectors": {name: detector},
            }
        )
        result = run_sweep(config, log=lambda text: None, progress=False)
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(folder) / f"subclass-accuracy-{name}.png", DOCS / f"fakenews-{name}.png")
    atomic_write_text(HERE / "results" / f"fakenews-{name}.json", json.dumps(result, indent=1) + "\n")
    return result


def findings(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    table = {(e["phase"], e["machine_fake_share"]): e for e in result["summary"]["table"]}
    shares = sorted({share for _, share in table})
    low, high = shares[0], shares[1]

    def accuracy(phase: str, share: float, subclass: str) -> float:
        return table[(phase, share)]["subclass_accuracy"][subclass]["mean"]

    transfer = result["summary"]["transfer"][name]
    seeds = result["config"]["seeds"]
    return [
        {
            "benchmark": f"{name}: MF accuracy, human-legacy phase, MF share {high:g} vs {low:g} ({len(seeds)} seeds)",
            "ours_label": f"share {high:g}",
            "reference_label": f"share {low:g}",
            "ours": accuracy("human-legacy", high, "MF"),
            "reference": accuracy("human-legacy", low, "MF"),
            "ratio": None,
            "unit": "accuracy",
            "notes": "paper: MF accuracy rises fast once some MF enters training",
        },
        {
            "benchmark": f"{name}: MR accuracy, human-legacy phase, MF share 1 vs 0",
            "ours_label": "share 1",
            "reference_label": "share 0",
            "ours": accuracy("human-legacy", 1.0, "MR"),
            "reference": accuracy("human-legacy", 0.0, "MR"),
            "ratio": None,
            "unit": "accuracy",
            "notes": "paper: MR accuracy falls (machine-written = fake shortcut)",
        },
        {
            "benchmark": f"{name}: transfer, trained on one source, tested on the other",
            "ours_label": "human-trained on MR+MF",
            "reference_label": "machine-trained on HR+HF",
            "ours": transfer["human_trained_on_machine_items"],
            "reference": transfer["machine_trained_on_human_items"],
            "ratio": None,
            "unit": "accuracy",
            "notes": "paper: human-trained detectors transfer to machine text better than the reverse",
        },
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    if not DATA.is_dir():
        return []
    rows = []
    for name, (detector, seeds, shares) in SWEEPS.items():
        if quick and name == "transformer":
            continue
        rows += findings(name, sweep(name, detector, seeds[:1] if quick else seeds, shares))
    return rows
