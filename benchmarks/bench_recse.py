"""recse: paired experiments on STS-B (best dev checkpoint, test reported) and memory per training step.

Quality: from one MLM-only checkpoint (benchmarks/pretrain_mlm.py; `$OMNIMM_MLM_BERT`), mean pooling (an MLM-only
model's better sentence vector before training), the encoder learning rate chosen on STS-B dev by plain SimCSE,
every method runs the same seeds (same data order and initialisation); the claims are paired differences over seeds
with 95% t intervals. The methods: SimCSE, SimCSE + reshape, word repetition, repetition + reshape (portability), a
second reshape configuration (lambda 0.01, 256-d Linear + Tanh projection, tau 0.1 for the inter-view loss) and a
control with each sentence's matrix entries shuffled. MiniLM (CLS) is a second setting with fewer steps. Alignment,
uniformity and random-pair cosines are measured before and after training.

Memory: peak RSS and step time vs batch size at equal view count: SimCSE + reshape (2 dropout views + the reshaped
one) vs word repetition with 3 views (3 encoder passes), plain SimCSE beside them; each in a fresh process.

Runs are cached under `$OMNIMM_BENCH_CACHE/recse-runs` (default ~/.cache/omnimm/bench): a rerun resumes. The results
block of docs/plugins/recse.md is rewritten from the rows (`python benchmarks/bench_recse.py --docs` redoes it from
benchmarks/results/recse.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
PAGE = HERE.parent / "docs" / "plugins" / "recse.md"
PLOT = HERE.parent / "docs" / "plugins" / "recse-memory.png"
RESULTS = HERE / "results" / "recse.json"
CACHE = Path(os.environ.get("OMNIMM_BENCH_CACHE", Path.home() / ".cache" / "omnimm" / "bench")) / "recse-runs"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SEEDS = [0, 1, 2, 3, 4]
RESHAPE = {"source": "embeddings", "tower": "cnn", "max_length": 32}
SECOND = {"reshape": {**RESHAPE, "out_dim": 256}, "reshape_weight": 0.01, "reshape_projection": "linear-tanh"}
METHODS: dict[str, dict[str, Any]] = {
    "SimCSE": {"framework": "simcse"},
    "SimCSE + reshape": {"framework": "simcse", "reshape": RESHAPE},
    "repetition": {"framework": "repeat", "views": 2},
    "repetition + reshape": {"framework": "repeat", "views": 2, "reshape": RESHAPE},
    "SimCSE + reshape (2nd config)": {"framework": "simcse", **SECOND, "reshape_temperature": 0.1},
    "SimCSE + shuffled reshape": {"framework": "simcse", "reshape": {**RESHAPE, "shuffle": True}},
}
# setting -> (encoder, steps, eval every, methods, seeds); the MLM start is the main one, MiniLM a short second.
# The MLM-only start pools by mean: it had no sentence-level objective, and its [CLS] output is the weaker sentence
# vector before training (STS-B dev / test Spearman 0.401 / 0.270 with CLS pooling against 0.459 / 0.343 with the
# mean, measured on the 3,000-step checkpoint). 100 steps fit the CPU budget of 32 runs; dev rose every 50 steps.
SETTINGS: dict[str, tuple[dict[str, Any], int, int, list[str], list[int]]] = {
    "mlm": ({"pooling": "mean"}, 100, 50, list(METHODS), SEEDS),
    "minilm": ({"pooling": "cls"}, 30, 30, ["SimCSE", "SimCSE + reshape"], SEEDS[:3]),
}
# The encoder learning rate of every method in a setting: MiniLM keeps SimCSE's 3e-5; for the small MLM start it is
# chosen on STS-B dev among LEARNING_RATES by plain SimCSE (seed SEEDS[0]), and every method then uses it.
LEARNING_RATE: dict[str, float | None] = {"mlm": None, "minilm": 3e-5}
LEARNING_RATES = [3e-5, 1e-4, 3e-4]
# (claim, setting, ours, reference, metric): ours - reference, paired over seeds
CLAIMS = [
    ("reshape improves SimCSE", "mlm", "SimCSE + reshape", "SimCSE", "test"),
    ("reshape improves repetition (portability)", "mlm", "repetition + reshape", "repetition", "test"),
    ("2nd configuration improves SimCSE", "mlm", "SimCSE + reshape (2nd config)", "SimCSE", "test"),
    ("the matrix structure matters (vs shuffled)", "mlm", "SimCSE + reshape", "SimCSE + shuffled reshape", "test"),
    ("reshape improves SimCSE, MiniLM start", "minilm", "SimCSE + reshape", "SimCSE", "test"),
    ("reshape spreads embeddings (uniformity, lower)", "mlm", "SimCSE + reshape", "SimCSE", "uniformity"),
    ("reshape keeps paraphrases close (alignment, lower)", "mlm", "SimCSE + reshape", "SimCSE", "alignment"),
]
LOWER_IS_BETTER = {"uniformity", "alignment", "random_cosine_mean"}


def mlm_checkpoint() -> Path:
    sys.path.insert(0, str(HERE))
    from pretrain_mlm import checkpoint_dir

    return checkpoint_dir()


def encoder_spec(setting: str) -> dict[str, Any]:
    spec = {"name": "hf/sentence-encoder", **SETTINGS[setting][0]}
    if setting == "mlm":
        spec["path"] = str(mlm_checkpoint())
    return spec


def start_fingerprint(setting: str) -> str | None:
    """The MLM checkpoint's weights fingerprint: cached runs of another checkpoint at the same path are not reused."""
    if setting != "mlm":
        return None
    from omnimm.files import file_fingerprint

    return file_fingerprint(mlm_checkpoint() / "model.safetensors")


class Remembering:
    """An encoder that embeds each sentence once: Spearman and geometry of the same split share the vectors."""

    def __init__(self, encoder: Any) -> None:
        self.encoder, self.vectors = encoder, {}

    def encode(self, sentences: list[str], batch_size: int = 128) -> Any:
        import numpy as np

        missing = [s for s in dict.fromkeys(sentences) if s not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.encoder.encode(missing, batch_size=batch_size), strict=True))
        return np.stack([self.vectors[s] for s in sentences])


def measure(encoder: Any, *, dev: bool = True) -> dict[str, float]:
    """Test (and dev) Spearman, and the geometry of the test split's embeddings."""
    from omnimm.sentence.sts import read_stsb
    from omnimm_plugins.recse.evaluate import embedding_geometry, sts_correlations

    test, remembering = read_stsb(STSB, "test"), Remembering(encoder)
    scores = {"dev": sts_correlations(remembering, read_stsb(STSB, "dev"))["spearman"]} if dev else {}
    return {**scores, "test": sts_correlations(remembering, test)["spearman"], **embedding_geometry(remembering, test)}


def cached(key: dict[str, Any], compute: Any) -> dict[str, Any]:
    """`compute()` once per key: finished runs are kept on disk, so an interrupted benchmark resumes."""
    from omnimm.files import atomic_write_text

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = CACHE / f"{key.get('setting', 'x')}-{digest}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["result"]
    result = compute()
    atomic_write_text(path, json.dumps({"key": key, "result": result}, indent=1) + "\n")
    return result


def start_scores(setting: str) -> dict[str, Any]:
    from omnimm.registry import encoders

    spec = encoder_spec(setting)
    key = {"setting": setting, "start": spec, "weights": start_fingerprint(setting)}
    return cached(key, lambda: measure(encoders.build(spec)))


def chosen_learning_rate(setting: str) -> tuple[float, dict[str, float]]:
    """The setting's learning rate, and the best STS-B dev of plain SimCSE at each candidate where one is chosen."""
    fixed = LEARNING_RATE[setting]
    if fixed is not None:
        return fixed, {}
    dev = {f"{rate:g}": trained(setting, "SimCSE", SEEDS[0], rate)["best_dev"] for rate in LEARNING_RATES}
    best = max(LEARNING_RATES, key=lambda rate: dev[f"{rate:g}"])
    return best, dev


def trained(setting: str, method: str, seed: int, learning_rate: float) -> dict[str, Any]:
    from omnimm.registry import encoders
    from omnimm_plugins.recse.configs import RecseTrainConfig
    from omnimm_plugins.recse.training import train

    _, steps, every, _, _ = SETTINGS[setting]
    encoder = encoder_spec(setting)
    body = {
        "model": {"encoder": encoder, **METHODS[method]},
        "data": {"stsb": str(STSB), "script": str(SCRIPT)},
        "eval_stsb": str(STSB),
        "max_steps": steps,
        "eval_steps": every,
        "learning_rate": learning_rate,
        "seed": seed,
    }

    def run_once() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as folder:
            config = RecseTrainConfig.model_validate({**body, "output_dir": folder})
            result = train(config, progress=False)
            best = encoders.build({**encoder, "path": str(result.model_dir)})
            return {"best_dev": float(result.best_spearman), **measure(best, dev=False)}

    return cached({"setting": setting, "method": method, "run": body, "weights": start_fingerprint(setting)}, run_once)


def paired(ours: list[float], reference: list[float]) -> dict[str, float]:
    """Mean paired difference and its 95% t interval over seeds."""
    from scipy import stats

    differences = [a - b for a, b in zip(ours, reference, strict=True)]
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": len(differences)}
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(differences)}


def verdict(interval: dict[str, float], metric: str, *, trained_better_than_start: bool = True) -> str:
    """reproduced / the opposite / inconclusive, from the paired interval. A comparison of two trainings that both
    left the encoder worse than its start (STS-B dev) says nothing about the method: it is reported as untestable."""
    if not trained_better_than_start:
        return "not testable here (training lowered STS-B dev below the start)"
    better = -1 if metric in LOWER_IS_BETTER else 1
    low, high = sorted((better * interval["low"], better * interval["high"]))
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced (the opposite holds)"
    return "inconclusive"


def bench_quality(quick: bool) -> list[dict[str, Any]]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    starts = {setting: start_scores(setting) for setting in SETTINGS}
    rates = {setting: chosen_learning_rate(setting) for setting in SETTINGS}
    for setting, (_, _, _, methods, seeds) in SETTINGS.items():
        # seeds outside: a partial run still holds every method for the seeds done
        for seed in seeds[:1] if quick else seeds:
            for method in methods:
                run = trained(setting, method, seed, rates[setting][0])
                runs.setdefault(setting, {}).setdefault(method, []).append(run)
    rows = []
    for claim, setting, ours, reference, metric in CLAIMS:
        mine = [r[metric] for r in runs[setting][ours]]
        theirs = [r[metric] for r in runs[setting][reference]]
        interval = paired(mine, theirs)
        steps, seeds = SETTINGS[setting][1], SETTINGS[setting][4][: len(mine)]
        rows.append(
            {
                "benchmark": f"{claim}: STS-B {metric}, {setting} start, {steps} steps x batch 64, seeds {seeds}",
                "claim": claim,
                "setting": setting,
                "metric": metric,
                "ours_label": ours,
                "reference_label": reference,
                "ours": statistics.mean(mine),
                "reference": statistics.mean(theirs),
                "ratio": statistics.mean(mine) / statistics.mean(theirs),
                "unit": "Spearman" if metric in ("dev", "test") else metric,
                "paired_difference": interval,
                "dev_difference": paired(
                    [r["best_dev"] for r in runs[setting][ours]], [r["best_dev"] for r in runs[setting][reference]]
                ),
                "verdict": verdict(
                    interval,
                    metric,
                    trained_better_than_start=max(
                        statistics.mean(r["best_dev"] for r in runs[setting][name]) for name in (ours, reference)
                    )
                    > starts[setting]["dev"],
                ),
                "notes": f"paired diff {interval['mean']:+.4f} [{interval['low']:+.4f}, {interval['high']:+.4f}]",
            }
        )
    rows.append(
        {
            "benchmark": "per-run scores (best dev checkpoint) and the starts",
            "ours_label": "-",
            "reference_label": "-",
            "ours": float("nan"),
            "reference": None,
            "ratio": None,
            "unit": "-",
            "notes": "see runs",
            "starts": starts,
            "runs": runs,
            "settings": {
                k: {
                    "steps": v[1],
                    "eval_steps": v[2],
                    "methods": v[3],
                    "seeds": v[4],
                    "pooling": v[0]["pooling"],
                    "learning_rate": rates[k][0],
                    "learning_rate_selection_dev": rates[k][1],
                }
                for k, v in SETTINGS.items()
            },
            "mlm": json.loads((mlm_checkpoint() / "mlm.json").read_text(encoding="utf-8")),
        }
    )
    return rows


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
    batches = [16, 64] if quick else [16, 64, 128]
    methods = {
        "SimCSE": METHODS["SimCSE"],
        "SimCSE + reshape": METHODS["SimCSE + reshape"],
        "word repetition, 3 views": {"framework": "repeat", "views": 3},
    }
    measured: dict[str, dict[int, dict[str, float]]] = {}
    for name, method in methods.items():
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
        ours, discrete = measured["SimCSE + reshape"][batch], measured["word repetition, 3 views"][batch]
        plain = measured["SimCSE"][batch]
        rows.append(
            {
                "benchmark": f"training step at 3 views, batch {batch}, max length 32: peak CPU RSS above the model",
                "ours_label": "SimCSE + reshape (2 dropout views + reshaped)",
                "reference_label": "word repetition, 3 views",
                "ours": ours["peak_mb"] - ours["model_mb"],
                "reference": discrete["peak_mb"] - discrete["model_mb"],
                "ratio": (ours["peak_mb"] - ours["model_mb"]) / (discrete["peak_mb"] - discrete["model_mb"]),
                "unit": "MB",
                "notes": (
                    f"SimCSE {plain['peak_mb'] - plain['model_mb']:.0f} MB; step {ours['step']:.2f} s vs "
                    f"{discrete['step']:.2f} s (SimCSE {plain['step']:.2f} s)"
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


def _interval(interval: dict[str, float]) -> str:
    return f"{interval['mean']:+.4f} [{interval['low']:+.4f}, {interval['high']:+.4f}]"


def results_block(rows: list[dict[str, Any]]) -> str:
    """The markdown between the page's results markers, from the benchmark's rows."""
    claims = [r for r in rows if "claim" in r]
    detail = next(r for r in rows if "runs" in r)
    memory = [r for r in rows if r.get("unit") == "MB"]
    mlm = detail["mlm"]
    lines = [
        BEGIN,
        "",
        "Generated by `python benchmarks/run.py recse` from benchmarks/results/recse.json.",
        "",
        f"**The MLM-only start** (`benchmarks/pretrain_mlm.py`): BERT {mlm['architecture']['num_hidden_layers']} "
        f"layers x {mlm['architecture']['hidden_size']} hidden, {mlm['parameters'] / 1e6:.1f}M parameters, "
        f"{mlm['steps']} steps x batch {mlm['batch_size']} in {mlm['minutes']:.0f} minutes; held-out MLM loss "
        f"{mlm['held_out_mlm_loss']:.2f} (perplexity {mlm['held_out_perplexity']:.0f}; a uniform guess is "
        f"{mlm['uniform_guess_loss']:.2f}); {mlm['steps'] * mlm['batch_size']:,} sentences seen, "
        f"{mlm['steps'] * mlm['batch_size'] / mlm['train_sentences']:.1f} passes over its corpus.",
        "",
        *(_setting_line(name, values) for name, values in detail["settings"].items()),
        "",
        "**Scores** (mean over seeds; best dev checkpoint; geometry on the test split's embeddings):",
        "",
        "| start | method | seeds | steps | best dev | test Spearman | alignment | uniformity | random-pair cosine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(values: list[dict[str, Any]], key: str) -> str:
        numbers = [v[key] for v in values]
        spread = f" +- {statistics.stdev(numbers):.4f}" if len(numbers) > 1 else ""
        return f"{statistics.mean(numbers):.4f}{spread}"

    for setting, start in detail["starts"].items():
        lines.append(
            f"| {setting} | (the start, untrained) | | 0 | {start['dev']:.4f} | {start['test']:.4f} | "
            f"{start['alignment']:.3f} | {start['uniformity']:.3f} | {start['random_cosine_mean']:.3f} |"
        )
        for method, values in detail["runs"].get(setting, {}).items():
            lines.append(
                f"| {setting} | {method} | {len(values)} | {detail['settings'][setting]['steps']} | "
                f"{cells(values, 'best_dev')} | {cells(values, 'test')} | {cells(values, 'alignment')} | "
                f"{cells(values, 'uniformity')} | {cells(values, 'random_cosine_mean')} |"
            )
    lines += [
        "",
        "**Claims** (ours - reference, paired over seeds, mean [95% t interval]):",
        "",
        "| claim | start | ours vs reference | test / metric difference | best-dev difference | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in claims:
        lines.append(
            f"| {row['claim']} | {row['setting']} | {row['ours_label']} vs {row['reference_label']} | "
            f"{row['metric']}: {_interval(row['paired_difference'])} | {_interval(row['dev_difference'])} | "
            f"{row['verdict']} |"
        )
    lines += ["", *(_sentence(row) for row in claims)]
    if memory:
        lines += [
            "",
            "**Memory at equal view count** (peak RSS above the loaded MiniLM during three steps; faster of "
            "steps 2-3):",
            "",
            "| batch | SimCSE (2 views) | SimCSE + reshape (3 views) | word repetition (3 views) "
            "| reshape / repetition |",
            "|---|---|---|---|---|",
        ]
        for row in memory:
            m = row["measured"]
            used = {k: v["peak_mb"] - v["model_mb"] for k, v in m.items()}
            batch = row["benchmark"].split("batch ")[1].split(",")[0]
            lines.append(
                f"| {batch} | {used['SimCSE']:.0f} MB, {m['SimCSE']['step']:.2f} s | "
                f"{used['SimCSE + reshape']:.0f} MB, {m['SimCSE + reshape']['step']:.2f} s | "
                f"{used['word repetition, 3 views']:.0f} MB, {m['word repetition, 3 views']['step']:.2f} s | "
                f"{row['ratio']:.2f}x |"
            )
        lines += ["", "![memory and step time vs batch size](recse-memory.png)"]
    lines += ["", END]
    return "\n".join(lines)


def _setting_line(name: str, values: dict[str, Any]) -> str:
    chosen = values.get("learning_rate_selection_dev") or {}
    how = (
        " (chosen on STS-B dev by SimCSE, seed 0: " + ", ".join(f"{k} -> {v:.4f}" for k, v in chosen.items()) + ")"
        if chosen
        else ""
    )
    return (
        f"- **{name}** start: {values.get('pooling', 'cls')} pooling, {values['steps']} steps x batch 64, dev "
        f"evaluated every {values['eval_steps']} steps, encoder learning rate {values.get('learning_rate', 3e-5):g}"
        f"{how}."
    )


def _sentence(row: dict[str, Any]) -> str:
    interval, metric = row["paired_difference"], row["metric"]
    n = interval["n"]
    return (
        f"- *{row['claim']}* ({row['setting']} start, {n} seeds): **{row['verdict']}**, {metric} difference "
        f"{_interval(interval)}."
    )


def write_docs(rows: list[dict[str, Any]]) -> None:
    from omnimm.files import atomic_write_text

    page = PAGE.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        raise SystemExit(f"{PAGE}: the markers {BEGIN} ... {END} are missing")
    block = results_block(rows)
    atomic_write_text(PAGE, pattern.sub(lambda _: block, page))


def run(quick: bool = False) -> list[dict[str, Any]]:
    if not STSB.is_dir():
        return []
    if not (mlm_checkpoint() / "mlm.json").is_file():
        raise SystemExit(f"no MLM checkpoint at {mlm_checkpoint()}: run benchmarks/pretrain_mlm.py first")
    rows = [*bench_quality(quick), *(bench_memory(quick) if not os.environ.get("RECSE_SKIP_MEMORY") else [])]
    if not quick:
        write_docs(rows)
    return rows


if __name__ == "__main__" and "--docs" in sys.argv:
    write_docs(json.loads(RESULTS.read_text(encoding="utf-8"))["rows"])
