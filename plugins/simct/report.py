"""Gate reports: JSON (everything), a PNG of the score distributions, and an HTML page that embeds it."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from omnimm.deps import require
from omnimm.files import atomic_write_bytes, atomic_write_text
from omnimm_plugins.simct.gate import GateResult

_COLOURS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "INCONCLUSIVE": "#9a6700"}


def plot(result: GateResult) -> bytes:
    """PNG: within- vs cross-stage pair scores, and the per-prompt differences against the margin."""
    matplotlib = require("matplotlib", extra="simct", purpose="gate report plots")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    lowest = min([0.0, *result.within_scores, *result.cross_scores])
    bins = [lowest + (1 - lowest) * i / 30 for i in range(31)]  # scores are at most 1
    left.hist(result.within_scores, bins=bins, alpha=0.6, label="within a stage", color="#0969da")
    left.hist(result.cross_scores, bins=bins, alpha=0.6, label="across stages", color="#bf3989")
    left.set_xlabel(f"pair score ({result.score})")
    left.set_ylabel("response pairs")
    left.set_title("score distributions")
    left.legend()
    differences = [row["difference"] for row in result.prompts]
    right.scatter(range(len(differences)), differences, s=12, color="#57606a")
    margin = result.settings.get("margin", 0)
    right.axhspan(-margin, margin, color="#1a7f37", alpha=0.12, label=f"equivalence margin ±{margin}")
    if result.comparison is not None:
        right.axhline(result.comparison.mean_difference, color=_COLOURS[result.verdict], label="mean difference")
    right.set_xlabel("prompt")
    right.set_ylabel("cross - within")
    right.set_title(f"per prompt: {result.verdict}")
    right.legend(loc="lower left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def render_html(result: GateResult, png: bytes) -> str:
    data = result.to_dict()
    test = data["test"] or {}
    image = base64.b64encode(png).decode()
    colour = _COLOURS[result.verdict]
    facts = [
        {"": "stage A", "value": result.sources[0]},
        {"": "stage B", "value": result.sources[1]},
        {"": "pair score", "value": result.score},
        {"": "prompts compared", "value": len(result.prompts)},
        *(
            {"": key, "value": test[key]}
            for key in (
                "mean_difference",
                "ci_low",
                "ci_high",
                "p_value",
                "tost_p_value",
                "effect_size",
                "margin",
                "alpha",
            )
            if key in test
        ),
    ]
    missing = [{"prompt": p, "only in": "A"} for p in result.only_in_a] + [
        {"prompt": p, "only in": "B"} for p in result.only_in_b
    ]
    notes = []
    if result.response_wise is not None:
        for kind in ("cross", "within"):
            part = result.response_wise[kind]
            notes.append(
                f"Response-wise, {kind}-stage pairs: {part['inconsistent']} of {part['pairs']} inconsistent "
                f"({part['inconsistency_rate']:.1%}, 95% CI [{part['ci_low']:.1%}, {part['ci_high']:.1%}]; "
                f"threshold {result.response_wise['threshold']:.3f})."
            )
    if result.fallback:
        notes.append(f"Note: {result.fallback}.")
    if result.unseen_query_types:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(result.unseen_query_types.items()))
        notes.append(f"Query types the classifier never saw in training (scored as unknown): {listed}.")
    paragraphs = "\n".join(f"<p>{html.escape(note)}</p>" for note in notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>simct gate: {result.verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 72rem; }}
.verdict {{ color: {colour}; font-size: 2rem; font-weight: 700; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }}
</style></head><body>
<h1>simct consistency gate</h1>
<p class="verdict">{result.verdict}</p>
<p>{html.escape(result.reason)}</p>
{paragraphs}
{_table(facts, ["", "value"])}
<img alt="score distributions" src="data:image/png;base64,{image}" style="max-width: 100%">
<h2>Least consistent response pairs</h2>
{_table(result.least_consistent, ["prompt", "response_a", "response_b", "score", "consistent"])}
<h2>Prompts in one file only</h2>
{_table(missing, ["prompt", "only in"]) if missing else "<p>none</p>"}
<h2>Per prompt</h2>
{_table(result.prompts, ["prompt", "query_type", "samples_a", "samples_b", "within", "cross", "difference"])}
</body></html>
"""


def write_reports(result: GateResult, folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write `report.json`, `report.png` and `report.html` to `folder` (each atomically); return their paths."""
    target = Path(folder)
    png = plot(result)
    return {
        "json": atomic_write_text(target / "report.json", json.dumps(result.to_dict(), indent=2, ensure_ascii=False)),
        "png": atomic_write_bytes(target / "report.png", png),
        "html": atomic_write_text(target / "report.html", render_html(result, png)),
    }
