"""Scoring free-text answers: the label parser and `omnimm/choice-accuracy`, checked by hand."""

from __future__ import annotations

import pytest

from omnimm import evaluators
from omnimm.evaluation import UNPARSED, LabelParser, Prediction, normalise


def test_normalise_folds_case_accents_and_punctuation():
    assert normalise("  Café-au-LAIT!  ") == "cafe au lait"


def test_the_parser_finds_whole_words_the_first_mentioned_wins():
    parse = LabelParser(["left", "right", "up", "down"], synonyms={"left": ["leftwards"]})
    assert parse("Left.") == "left"
    assert parse("they move leftwards") == "left"
    assert parse("it goes up, then down") == "up"  # the first one mentioned
    assert parse("uptown funk") == UNPARSED  # whole words only
    assert parse("") == UNPARSED


def test_longer_phrases_win_over_their_parts():
    parse = LabelParser(["happy", "very happy"])
    assert parse("very happy indeed") == "very happy"


def prediction(reply, reference, kind, choices):
    return Prediction(id=reply, question="?", reply=reply, reference=reference, meta={"kind": kind, "choices": choices})


def test_choice_accuracy_counts_unparsed_replies_as_wrong_and_reports_them():
    colours = ["red", "blue", "green"]
    items = [
        prediction("red", "red", "colour", colours),  # right
        prediction("it is blue", "red", "colour", colours),  # wrong
        prediction("no idea", "green", "colour", colours),  # unparsed
        prediction("yes", "yes", "answer", ["yes", "no"]),  # right
    ]
    scorer = evaluators.build({"name": "omnimm/choice-accuracy"})
    metrics = scorer.evaluate(items)
    assert metrics["accuracy"] == 2 / 4 and metrics["unparsed"] == 1 and metrics["n"] == 4
    assert metrics["groups"]["colour"] == {"accuracy": 1 / 3, "chance": 1 / 3, "unparsed": 1, "n": 3}
    assert metrics["groups"]["answer"]["accuracy"] == 1.0 and metrics["groups"]["answer"]["chance"] == 0.5
    assert [p.parsed["omnimm/choice-accuracy"] for p in items] == ["red", "blue", UNPARSED, "yes"]


def test_choices_must_come_from_somewhere():
    scorer = evaluators.build({"name": "omnimm/choice-accuracy"})
    with pytest.raises(ValueError, match="no choices"):
        scorer.evaluate([Prediction(id="1", question="?", reply="x", reference="y")])


def test_predictions_round_trip_through_dicts():
    item = prediction("red", "red", "colour", ["red"])
    assert Prediction.from_dict(item.to_dict()) == item
