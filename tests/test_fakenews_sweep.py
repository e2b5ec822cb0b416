"""fakenews sweep: same-phase validation mixtures, nested mixtures, per-run seeds, incremental and resumable
results, clear errors for missing subclasses and unknown datasets, and the bootstrap intervals."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from omnimm_plugins.fakenews.configs import SweepConfig
from omnimm_plugins.fakenews.data import NewsItem, count_subclasses, group_split
from omnimm_plugins.fakenews.findings import interval, paired_interval, verdict
from omnimm_plugins.fakenews.mixtures import build_mixture
from omnimm_plugins.fakenews.sweep import RESULTS, run_sweep

from .test_fakenews import synthetic, write_four

CHAR = {"name": "fakenews/char-ngram"}


def config(data: Path, out: Path, **overrides) -> SweepConfig:
    settings = {
        "data": str(data),
        "output_dir": str(out),
        "machine_fake_shares": [0.0, 0.5, 1.0],
        "seeds": [0, 1],
        "detectors": {"char": CHAR},
        **overrides,
    }
    return SweepConfig.model_validate(settings)


def test_validation_mixtures_share_the_phase_and_share_of_training(tmp_path: Path):
    data = write_four(tmp_path / "pp", synthetic(80))
    result = run_sweep(config(data, tmp_path / "out"), log=lambda _: None, progress=False)
    assert result["validation_sizes"] and len(result["rows"]) == 3 * 3 * 2
    for row in result["rows"]:
        split = result["splits"][str(row["seed"])]
        counts, real_val, fake_val = row["validation_mixture"], *result["validation_sizes"]
        assert counts["HR"] + counts["MR"] == real_val and counts["HF"] + counts["MF"] == fake_val
        assert counts["MF"] == round(row["machine_fake_share"] * fake_val)
        if row["phase"] == "human-legacy":
            assert counts["MR"] == 0
        if row["phase"] == "machine-dominance":
            assert counts["HR"] == 0
        if row["phase"] == "human-legacy" and row["machine_fake_share"] == 0:
            assert counts["MR"] == counts["MF"] == 0  # a human-legacy detector never sees machine text
        for part in ("train", "validation"):
            for subclass, ids in row["ids"][part].items():
                pool = split["train" if part == "train" else "validation"]["ids"][subclass]
                assert set(ids) <= set(pool), (part, subclass)
        assert row["detector_seed"] == row["seed"]


@pytest.mark.parametrize("phase", ["human-legacy", "coexistence", "machine-dominance"])
def test_mixtures_are_nested_across_shares(phase: str):
    pool = synthetic(150)
    shares = [0.0, 0.1, 0.25, 0.33, 0.5, 0.75, 1.0]
    mixtures = [build_mixture(pool, phase, s, real_size=30, fake_size=24, seed=3) for s in shares]
    ids = [
        {s: {(i.id, i.text) for i in m.items if i.subclass == s} for s in ("HR", "HF", "MR", "MF")} for m in mixtures
    ]
    for low, high in itertools.pairwise(ids):
        assert low["MF"] <= high["MF"] and high["HF"] <= low["HF"]  # more MF: HF items swapped for MF items only
        assert low["HR"] == high["HR"] and low["MR"] == high["MR"]  # the real class never changes
    assert count_subclasses(mixtures[3].items)["MF"] == 8  # the one-third point: round(0.33 * 24)


def test_a_test_part_without_a_subclass_still_writes_the_results(tmp_path: Path):
    # three MF articles only: find a seed whose test part has none of them while training has some
    items = [i for i in synthetic(60) if i.subclass != "MF" or i.id in {"id0", "id3", "id6"}]
    seed = next(
        s
        for s in range(200)
        if count_subclasses(group_split(items, seed=s).test)["MF"] == 0
        and count_subclasses(group_split(items, seed=s).train)["MF"] > 0
    )
    data = write_four(tmp_path / "pp", items)
    out = tmp_path / "out"
    sweep = config(data, out, seeds=[seed], machine_fake_shares=[0.0, 1.0], real_size=6, fake_size=1)
    result = run_sweep(sweep, log=lambda _: None, progress=False)
    written = json.loads((out / RESULTS).read_text())
    assert written["complete"] and len(written["rows"]) == 6
    assert all(row["subclass_accuracy"]["MF"] is None for row in written["rows"])
    # the findings that need MF accuracy have no values to compare; the others are there
    assert result["summary"]["transfer"] == {}
    assert [f["key"] for f in result["summary"]["findings"]["char"]] == ["mr-falls"]
    assert (out / "subclass-accuracy-char.png").stat().st_size > 1000


def test_results_are_written_per_grid_point_and_a_rerun_skips_finished_points(tmp_path: Path):
    data = write_four(tmp_path / "pp", synthetic(60))
    out = tmp_path / "out"
    messages: list[str] = []
    first = run_sweep(config(data, out), log=messages.append, progress=False)
    # cut the file back to an interrupted run: the first 7 grid points
    partial = {**first, "complete": False, "rows": first["rows"][:7]}
    partial.pop("summary")
    (out / RESULTS).write_text(json.dumps(partial))
    messages.clear()
    again = run_sweep(config(data, out), log=messages.append, progress=False)
    assert f"reused 7 finished grid points from {out / RESULTS}" in messages
    assert [r["seconds"] for r in again["rows"][:7]] == [r["seconds"] for r in first["rows"][:7]]
    assert [r["subclass_accuracy"] for r in again["rows"]] == [r["subclass_accuracy"] for r in first["rows"]]
    messages.clear()
    wider = config(data, out, machine_fake_shares=[0.0, 0.25, 0.5, 1.0])  # a share more: the rest is reused
    assert len(run_sweep(wider, log=messages.append, progress=False)["rows"]) == 24
    assert "reused 18 finished grid points" in " ".join(messages)
    messages.clear()
    other = config(data, out, detectors={"char": {"name": "fakenews/char-ngram", "C": 1.0}})
    run_sweep(other, log=messages.append, progress=False)  # another detector setting: nothing reused
    assert not any("reused" in m for m in messages)
    (out / RESULTS).write_text("{not json")
    with pytest.raises(ValueError, match="not a sweep result this version can resume"):
        run_sweep(config(data, out), log=lambda _: None, progress=False)


def test_data_without_machine_fake_items_names_the_missing_subclass(cli, tmp_path: Path):
    data = write_four(tmp_path / "pp", [i for i in synthetic(40) if i.subclass != "MF"])
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"data: {data}\noutput_dir: {tmp_path / 'out'}\nmachine_fake_shares: [0.0, 0.5]\n")
    result = cli("fakenews", "sweep", sweep)
    assert result.returncode == 1 and "Traceback" not in result.output
    assert "has no MF (machine-written fake) items" in result.stderr, result.stderr
    # shares of 0 only need no MF: that grid runs
    ok = config(data, tmp_path / "ok", machine_fake_shares=[0.0], phases=["human-legacy", "coexistence"])
    assert len(run_sweep(ok, log=lambda _: None, progress=False)["rows"]) == 4


def test_an_unknown_dataset_name_lists_the_known_ones(cli, tmp_path: Path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"data: gossipcop_pp\noutput_dir: {tmp_path / 'out'}\n")
    result = cli("fakenews", "sweep", sweep)
    assert result.returncode == 1 and "Traceback" not in result.output
    assert "unknown dataset 'gossipcop_pp'" in result.stderr and "politifact_pp" in result.stderr, result.stderr
    assert "expected a .csv" not in result.stderr


def test_char_ngram_detector_learns_style_when_the_words_are_the_same():
    from omnimm.registry import get_registry

    rng = np.random.default_rng(0)
    words = "the senate budget vote passed after debate on spending and taxes this week".split()
    items = []
    for n in range(80):
        text = " ".join(rng.choice(words, 25))
        fake = n % 2 == 1
        styled = text.upper().replace(" ", "!! ") if fake else text.capitalize() + "."
        items.append(NewsItem(f"id{n}", "HF" if fake else "HR", styled, title=f"title {n}"))
    split = group_split(items, seed=0)
    detector = get_registry("detectors").build({"name": "fakenews/char-ngram"})
    probabilities = detector.fit(split.train, split.validation, seed=0).predict_proba(split.test)
    truth = np.array([i.label for i in split.test])
    assert np.mean((probabilities >= 0.5) == truth) == 1.0


def test_transformer_runs_are_seeded_per_run():
    from omnimm.registry import get_registry

    split = group_split(synthetic(16), test=0.25, validation=0.0, seed=0)
    options = {"name": "fakenews/transformer", "epochs": 1, "batch_size": 8, "max_length": 16}
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        detector = get_registry("detectors").build(options)
        runs[name] = detector.fit(split.train, seed=seed).predict_proba(split.test)
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.allclose(runs["a"], runs["c"])


def test_bootstrap_intervals_against_a_hand_resampling():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.7, 0.05, 12), rng.normal(0.6, 0.05, 12)
    ours = paired_interval(list(a), list(b), resamples=20_000)
    # by hand: resample seed indices with replacement, mean paired difference, 2.5% and 97.5% percentiles
    picks = np.random.default_rng(9).integers(0, 12, (20_000, 12))
    means = (a - b)[picks].mean(axis=1)
    assert ours["mean"] == pytest.approx(np.mean(a - b))
    assert ours["low"] == pytest.approx(np.percentile(means, 2.5), abs=0.004)
    assert ours["high"] == pytest.approx(np.percentile(means, 97.5), abs=0.004)
    assert ours["n"] == 12
    assert interval([0.5, 0.5, 0.5]) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 3}
    assert paired_interval([0.5, None, 0.7], [0.4, 0.3, None]) == {
        "mean": pytest.approx(0.1),
        "low": pytest.approx(0.1),
        "high": pytest.approx(0.1),
        "n": 1,
    }
    assert verdict({"mean": 0.1, "low": 0.02, "high": 0.2, "n": 10}, +1) == "reproduced"
    assert verdict({"mean": 0.1, "low": 0.02, "high": 0.2, "n": 10}, -1) == "not reproduced"
    assert verdict({"mean": 0.1, "low": -0.02, "high": 0.2, "n": 10}, +1) == "inconclusive"
    assert verdict({"mean": 0.1, "low": 0.05, "high": 0.2, "n": 3}, +1) == "inconclusive"  # too few seeds


def test_the_sweep_cli_prints_each_finding_with_its_interval(cli, tmp_path: Path):
    data = write_four(tmp_path / "pp", synthetic(60))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        textwrap.dedent(f"""\
        data: {data}
        output_dir: {tmp_path / "out"}
        machine_fake_shares: [0.0, 0.1, 0.33, 1.0]
        seeds: [0, 1, 2, 3, 4]
        detectors:
          char: {{name: fakenews/char-ngram}}
    """)
    )
    result = cli("fakenews", "sweep", sweep)
    assert result.returncode == 0, result.stderr
    for key in ("mf-rises", "mr-falls", "transfer", "third-vs-0", "third-vs-1"):
        assert f"char: {key}: " in result.stdout and "5 seeds)" in result.stdout
    table = json.loads((tmp_path / "out" / RESULTS).read_text())
    assert {f["key"] for f in table["summary"]["findings"]["char"]} == {
        "mf-rises", "mr-falls", "transfer", "third-vs-0", "third-vs-1"
    }  # fmt: skip
