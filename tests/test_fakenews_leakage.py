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

from .conftest import SHARED, requires_shared

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
