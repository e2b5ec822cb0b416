"""fakenews: loaders and malformed records, the group split, mixtures, detectors, the evaluator, the sweep CLI."""

from __future__ import annotations

import json
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest

from omnimm import ConfigError, evaluators
from omnimm_plugins.fakenews.data import (
    NewsItem,
    count_subclasses,
    group_split,
    load_four_subclass,
    load_records,
)
from omnimm_plugins.fakenews.mixtures import PHASES, build_mixture, largest_sizes

from .conftest import SHARED, requires_shared

WORDS = {
    "HR": "senate passes budget bill after long debate on spending",
    "HF": "shocking secret cure hidden by doctors revealed today",
    "MR": "lawmakers approved the annual budget following extended deliberation",
    "MF": "astonishing hidden remedy concealed by physicians finally exposed",
}


def synthetic(groups: int = 40) -> list[NewsItem]:
    """Each id has a human item and one or two machine paraphrases, like PolitiFact++."""
    items = []
    for g in range(groups):
        fake = g % 3 == 0
        human, machine = ("HF", "MF") if fake else ("HR", "MR")
        items.append(NewsItem(f"id{g}", human, f"{WORDS[human]} story {g}", title=f"title {g}"))
        for copy in range(1 + (g % 4 == 0)):
            items.append(NewsItem(f"id{g}", machine, f"{WORDS[machine]} story {g} v{copy}"))
    return items


def write_four(folder: Path, items: list[NewsItem]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for subclass in ("HR", "HF", "MR", "MF"):
        records = {
            str(i): {"id": it.id, "title": it.title, "description": "", "text": it.text}
            for i, it in enumerate(x for x in items if x.subclass == subclass)
        }
        (folder / f"{subclass}.json").write_text(json.dumps(records), encoding="utf-8")
    return folder


# -- data -----------------------------------------------------------------------------------------------------------


def test_four_subclass_folder_round_trip_and_labels(tmp_path: Path):
    items = synthetic()
    loaded = load_four_subclass(write_four(tmp_path / "pp", items))
    assert count_subclasses(loaded) == count_subclasses(items)
    mf = next(i for i in loaded if i.subclass == "MF")
    assert mf.fake and mf.machine and mf.label == 1
    hr = next(i for i in loaded if i.subclass == "HR")
    assert not hr.fake and not hr.machine and hr.content().startswith(hr.title + "\n")


def test_malformed_records_are_reported_with_file_and_key(tmp_path: Path):
    folder = write_four(tmp_path / "pp", synthetic(6))
    records = json.loads((folder / "MR.json").read_text())
    records["1"]["text"] = ""
    records["7"] = {"title": "no id", "text": "x"}
    records["8"] = ["not", "an", "object"]
    (folder / "MR.json").write_text(json.dumps(records))
    with pytest.raises(ConfigError) as error:
        load_four_subclass(folder)
    text = str(error.value)
    assert "MR.json['1']: text: missing or empty" in text
    assert "MR.json['7']: id: missing or empty" in text and "MR.json['8']: expected an object" in text
    (folder / "HF.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"HF\.json: missing"):
        load_four_subclass(folder)


def test_csv_and_jsonl_records_report_lines(tmp_path: Path):
    good = tmp_path / "news.csv"
    good.write_text('id,subclass,title,text\na,HR,t,"some, text"\na,MR,,paraphrase\n', encoding="utf-8")
    assert [i.subclass for i in load_records(good)] == ["HR", "MR"]
    bad = tmp_path / "news.jsonl"
    bad.write_text(
        '{"id": "a", "subclass": "HR", "text": "ok"}\n{"id": "b", "subclass": "XX", "text": "t"}\nnot json\n\n'
        '{"id": "c", "subclass": "MF"}\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as error:
        load_records(bad)
    text = str(error.value)
    assert "news.jsonl:2: subclass: expected one of HR, HF, MR, MF, got 'XX'" in text
    assert "news.jsonl:3: not valid JSON" in text and "news.jsonl:5: text: missing or empty" in text


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_id_group_straddles_the_split(seed: int):
    items = synthetic(60)
    split = group_split(items, test=0.3, validation=0.2, seed=seed)
    ids = {name: {i.id for i in part} for name, part in split.parts().items()}
    assert (
        not ids["train"] & ids["test"] and not ids["train"] & ids["validation"] and not ids["validation"] & ids["test"]
    )
    assert sum(len(p) for p in split.parts().values()) == len(items)
    assert len(ids["test"]) == 18 and len(ids["validation"]) == 12


@requires_shared
def test_politifact_pp_loads_and_splits_without_paraphrase_leaks():
    items = load_four_subclass(SHARED / "data" / "politifact_pp")
    assert count_subclasses(items) == {"HR": 194, "HF": 97, "MR": 132, "MF": 97}
    split = group_split(items, seed=0)
    train_ids = {i.id for i in split.train}
    assert not train_ids & {i.id for i in split.test}
    assert all(count > 0 for count in count_subclasses(split.test).values())


# -- mixtures -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_mixtures_have_exactly_the_requested_composition(phase: str, share: float):
    pool = synthetic(120)
    mixture = build_mixture(pool, phase, share, real_size=30, fake_size=20, seed=4)
    counts = count_subclasses(mixture.items)
    real = {
        "human-legacy": {"HR": 30, "MR": 0},
        "coexistence": {"HR": 15, "MR": 15},
        "machine-dominance": {"HR": 0, "MR": 30},
    }
    assert {k: counts[k] for k in ("HR", "MR")} == real[phase]
    assert counts["MF"] == round(share * 20) and counts["HF"] == 20 - round(share * 20)
    assert mixture.manifest["counts"] == counts
    assert sum(len(v) for v in mixture.manifest["ids"].values()) == 50
    assert len({(i.id, i.subclass, i.text) for i in mixture.items}) == 50  # drawn without replacement
    again = build_mixture(pool, phase, share, real_size=30, fake_size=20, seed=4)
    assert [i.text for i in again.items] == [i.text for i in mixture.items]  # seeded


def test_a_mixture_that_cannot_be_filled_says_what_fits():
    pool = synthetic(30)
    with pytest.raises(ValueError, match=r"needs 40 MF items, the pool has 13; .*largest that always fit: \(20, 10\)"):
        build_mixture(pool, "human-legacy", 1.0, real_size=5, fake_size=40)
    assert largest_sizes(pool) == (min(count_subclasses(pool)["HR"], count_subclasses(pool)["MR"]), 10)


# -- evaluator and detectors ----------------------------------------------------------------------------------------


def test_subclass_accuracy_against_a_hand_count():
    items = [
        NewsItem("a", "HR", "t"),  # predicted fake: wrong
        NewsItem("b", "HR", "t"),  # real: right
        NewsItem("c", "HF", "t"),  # fake: right
        NewsItem("d", "MR", "t"),  # fake: wrong
        NewsItem("e", "MR", "t"),  # fake: wrong
        NewsItem("f", "MF", "t"),  # fake: right
    ]
    scores = evaluators.build({"name": "fakenews/subclass-accuracy"}).evaluate(items, [0.9, 0.1, 0.5, 0.8, 0.7, 0.99])
    assert scores["subclass_accuracy"] == {"HR": 0.5, "HF": 1.0, "MR": 0.0, "MF": 1.0}
    assert scores["accuracy"] == pytest.approx(3 / 6)
    # fake class: tp 2 (c, f), fp 3 (a, d, e), fn 0 -> F1 4/7; real class: tp 1 (b), fp 0, fn 3 -> F1 2/5
    assert scores["macro_f1"] == pytest.approx((4 / 7 + 2 / 5) / 2)
    assert scores["predicted_fake_rate"] == {"human": {"real": 0.5, "fake": 1.0}, "machine": {"real": 1.0, "fake": 1.0}}
    assert scores["source_gap"] == pytest.approx(((1.0 - 0.5) + (1.0 - 1.0)) / 2)
    with pytest.raises(ValueError, match="got 2 probabilities for 6 items"):
        evaluators.build({"name": "fakenews/subclass-accuracy"}).evaluate(items, [0.1, 0.2])


@pytest.mark.parametrize("classifier", ["logistic", "lightgbm"])
def test_embedding_detector_learns_a_separable_toy_task(classifier: str):
    from omnimm.registry import get_registry

    items = synthetic(60)
    split = group_split(items, seed=0)
    detector = get_registry("detectors").build({"name": "fakenews/embedding", "classifier": classifier})
    probabilities = detector.fit(split.train, split.validation).predict_proba(split.test)
    truth = np.array([i.label for i in split.test])
    accuracy = np.mean((probabilities >= 0.5) == truth)
    assert accuracy >= 0.9, f"{classifier}: test accuracy {accuracy:.3f} on {len(truth)} items (1.0 expected)"


def test_transformer_detector_fine_tunes_with_early_stopping():
    from omnimm.registry import get_registry

    items = synthetic(60)
    split = group_split(items, test=0.25, validation=0.2, seed=0)
    detector = get_registry("detectors").build(
        {"name": "fakenews/transformer", "epochs": 4, "batch_size": 8, "max_length": 24, "learning_rate": 2e-4}
    )
    probabilities = detector.fit(split.train, split.validation).predict_proba(split.test)
    assert probabilities.shape == (len(split.test),) and np.all((probabilities >= 0) & (probabilities <= 1))
    truth = np.array([i.label for i in split.test])
    accuracy = np.mean((probabilities >= 0.5) == truth)
    assert accuracy >= 0.75, f"test accuracy {accuracy:.3f} on {len(truth)} items (1.0 expected)"


def test_sweep_cli_writes_the_table_and_the_plots(cli, tmp_path: Path):
    data = write_four(tmp_path / "pp", synthetic(60))
    config = tmp_path / "sweep.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        data: {data}
        output_dir: {tmp_path / "out"}
        machine_fake_shares: [0.0, 1.0]
        seeds: [0, 1]
        detectors:
          linear: {{name: fakenews/embedding, classifier: logistic}}
    """)
    )
    result = cli("fakenews", "sweep", config)
    assert result.returncode == 0, result.stderr
    assert "linear: trained on human items, accuracy on machine items" in result.stdout
    table = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(table["rows"]) == 3 * 2 * 2
    assert {r["mixture"]["HF"] + r["mixture"]["MF"] for r in table["rows"]} == {table["fake_size"]}
    png = (tmp_path / "out" / "subclass-accuracy-linear.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk: a real image, whatever its compressed size
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and width >= 200 and height >= 200, (len(png), width, height)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {data}\noutput_dir: x\nmachine_fake_shares: [0.5, 1.5]\n")
    rejected = cli("fakenews", "sweep", bad)
    assert (
        rejected.returncode != 0 and "machine_fake_shares.1: expected a fraction in [0, 1], got 1.5" in rejected.stderr
    )


def test_the_packaged_sweep_config_validates():
    from omnimm.config import load_config
    from omnimm_plugins.fakenews.configs import SweepConfig

    config = load_config("fakenews:politifact", SweepConfig)
    assert len(config.phases) == 3 and config.machine_fake_shares[0] == 0.0 and 0.33 in config.machine_fake_shares
    assert len(config.seeds) >= 10
    assert set(config.detectors) == {"embedding-logistic", "embedding-lightgbm", "char-ngram"}
