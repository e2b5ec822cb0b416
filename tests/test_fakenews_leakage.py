"""fakenews: no copy of a test article in training or validation (PolitiFact++ holds identical articles under
different ids and an article filed under both labels), on every seed the sweeps use."""

from __future__ import annotations

import random

import pytest

from omnimm_plugins.fakenews.data import (
    NewsItem,
    Split,
    contradictions,
    drop_contradictions,
    duplicate_groups,
    group_split,
    load_four_subclass,
    normalise,
)

from .conftest import REPO, SHARED, requires_shared

SEEDS = range(10)  # the packaged config's and the benchmark's seeds


def id_only_split(items: list[NewsItem], test: float = 0.3, validation: float = 0.15, seed: int = 0) -> Split:
    """The split this plugin used before: a seeded shuffle of the ids alone (kept here to show that it leaks)."""
    groups = sorted({item.id for item in items})
    random.Random(seed).shuffle(groups)
    n_test, n_val = round(test * len(groups)), round(validation * len(groups))
    test_ids, val_ids = set(groups[:n_test]), set(groups[n_test : n_test + n_val])
    return Split(
        train=[i for i in items if i.id not in test_ids | val_ids],
        validation=[i for i in items if i.id in val_ids],
        test=[i for i in items if i.id in test_ids],
    )


def leaks(split: Split) -> list[str]:
    """Normalised test texts or titles that also occur in train or validation."""
    seen_texts = {normalise(i.text) for i in split.train + split.validation}
    seen_titles = {normalise(i.title) for i in split.train + split.validation if i.title.strip()}
    return [
        i.id
        for i in split.test
        if normalise(i.text) in seen_texts or (i.title.strip() and normalise(i.title) in seen_titles)
    ]


@pytest.fixture(scope="module")
def politifact() -> list[NewsItem]:
    return load_four_subclass(SHARED / "data" / "politifact_pp")


@requires_shared
@pytest.mark.parametrize("seed", SEEDS)
def test_no_politifact_test_text_or_title_occurs_in_train_or_validation(politifact: list[NewsItem], seed: int):
    items, _ = drop_contradictions(politifact)
    split = group_split(items, test=0.3, validation=0.15, seed=seed)
    assert leaks(split) == []
    ids = {name: {i.id for i in part} for name, part in split.parts().items()}
    assert not ids["test"] & (ids["train"] | ids["validation"]) and not ids["train"] & ids["validation"]
    assert sum(len(p) for p in split.parts().values()) == len(items)


@requires_shared
def test_the_old_id_only_split_leaks_on_politifact(politifact: list[NewsItem]):
    leaking = {seed: leaks(id_only_split(politifact, seed=seed)) for seed in SEEDS}
    assert all(leaking.values()), {seed: len(ids) for seed, ids in leaking.items()}  # every seed leaked


@requires_shared
def test_politifact_duplicates_and_the_contradiction_are_found(politifact: list[NewsItem]):
    # one CQ boilerplate page under four ids, one page under both labels (HR and HF, id politifact14940)
    boilerplate = [i.id for i in politifact if normalise(i.text).startswith("the award winning nonpartisan intel")]
    assert len(set(boilerplate)) == 4
    groups = duplicate_groups(politifact)
    assert len({groups[politifact.index(i)] for i in politifact if i.id in boilerplate}) == 1
    bad = contradictions(politifact)
    assert {i.id for i in bad} == {"politifact14940"} and sorted(i.subclass for i in bad) == ["HF", "HR", "MF", "MR"]
    kept, dropped = drop_contradictions(politifact)
    assert len(kept) == len(politifact) - 4 and len(dropped) == 4


def test_groups_join_on_id_text_and_title_transitively():
    items = [
        NewsItem("a", "HR", "First story.", title="Shared Title"),
        NewsItem("b", "HR", "Second  story!", title="shared title"),  # a's title, case and spacing aside
        NewsItem("c", "HF", "second story", title="other"),  # b's text, punctuation aside
        NewsItem("c", "MF", "a paraphrase", title="third"),  # c's id
        NewsItem("d", "HR", "unrelated", title="unrelated"),
    ]
    groups = duplicate_groups(items)
    assert len({groups[0], groups[1], groups[2], groups[3]}) == 1 and groups[4] != groups[0]
    for seed in range(5):
        split = group_split(items, test=0.4, validation=0.0, seed=seed)
        assert {len(split.test), len(split.train)} in ({1, 4}, {0, 5})
    # b (real) and c (fake) share a normalised text: the ids b and c are contradictory, the paraphrase goes too
    assert [i.id for i in contradictions(items)] == ["b", "c", "c"]


# -- the benchmark's committed mixtures ------------------------------------------------------------------------------

AUDIT = REPO / "benchmarks" / "results" / "fakenews-mixtures.json"


def _audit() -> dict:
    import json

    return json.loads(AUDIT.read_text(encoding="utf-8"))


def _grid(audit: dict, detector: str) -> dict:
    grid = audit["detectors"][detector]
    return audit["detectors"][grid["same_as"]] if "same_as" in grid else grid


def test_the_committed_mixtures_match_the_results_and_stay_inside_their_split():
    import json

    audit = _audit()
    for detector in audit["detectors"]:
        grid = _grid(audit, detector)
        results = json.loads((AUDIT.parent / f"fakenews-{detector}.json").read_text(encoding="utf-8"))
        assert (results["real_size"], results["fake_size"]) == (grid["real_size"], grid["fake_size"])
        for row in results["rows"]:
            mixture = grid["mixtures"][f"{row['phase']}/{row['machine_fake_share']}/{row['seed']}"]
            split = audit["splits"][str(row["seed"])]
            assert {s: len(ids) for s, ids in mixture["train"].items()} == row["mixture"], (detector, row["phase"])
            assert {s: len(ids) for s, ids in (mixture["validation"] or {}).items()} == (
                row["validation_mixture"] or {}
            )
            for subclass, ids in mixture["train"].items():
                assert set(ids) <= set(split["train"][subclass])
            for subclass, ids in (mixture["validation"] or {}).items():
                assert set(ids) <= set(split["validation"][subclass])


@requires_shared
def test_no_committed_mixture_holds_a_test_text_of_its_seed(politifact: list[NewsItem]):
    # normalised (text, title) per (subclass, id), computed once: the same check as `leaks`, over 200+ mixtures
    normal = {
        (i.subclass, i.id): (normalise(i.text), normalise(i.title) if i.title.strip() else None) for i in politifact
    }
    audit = _audit()
    dropped = {(d["subclass"], d["id"]) for d in audit["dropped"]}
    checked = 0
    for detector in audit["detectors"]:
        for key, mixture in _grid(audit, detector)["mixtures"].items():
            test = {(s, i) for s, ids in audit["splits"][key.rsplit("/", 1)[1]]["test"].items() for i in ids}
            seen = {(s, i) for part in (mixture["train"], mixture["validation"] or {}) for s, ids in part.items()
                    for i in ids}  # fmt: skip
            assert not dropped & (seen | test)
            seen_texts = {normal[k][0] for k in seen}
            seen_titles = {normal[k][1] for k in seen} - {None}
            leaked = [k for k in test if normal[k][0] in seen_texts or normal[k][1] in seen_titles]
            assert leaked == [], (detector, key)
            checked += 1
    assert checked >= 3 * 7 * 10  # every phase, share and seed of the full grid
