"""favchat's data and evaluation side: the CelebV-HQ attribute schema, the record and CelebV-HQ readers (with their
error lines), the progressive-stage conversions, the datasets, and the evaluators against scikit-learn, sacreBLEU,
rouge-score and NLTK."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omnimm.errors import ConfigError
from omnimm.evaluation import UNPARSED, Prediction
from omnimm_plugins.favchat import attributes as schema
from omnimm_plugins.favchat.data_configs import (
    CaptionEvalConfig,
    CelebVHQDataConfig,
    EmotionEvalConfig,
    FaceVideoDataConfig,
)

data = pytest.importorskip("omnimm_plugins.favchat.data", reason="the datasets need torch")
evaluate = pytest.importorskip("omnimm_plugins.favchat.evaluate")

RECORDS = [
    {
        "id": "v1",
        "video": "clips/v1.mp4",
        "summary": "A young man with eyeglasses talks and smiles.",
        "qa": [
            {"question": "Is he wearing glasses?", "answer": "Yes, he is.", "kind": "appearance"},
            {"question": "What is he doing?", "answer": "He is talking."},
        ],
        "attributes": {"appearance": ["male", "young", "eyeglasses"], "action": ["talk", "smile"], "emotion": "happy"},
        "quality": 0.9,
    },
    {
        "id": "v2",
        "video": "clips/v2.mp4",
        "summary": "A woman looks calm, then starts to cry.",
        "qa": [{"question": "How does she feel at the end?", "answer": "Sad.", "kind": "emotion"}],
        "attributes": {
            "appearance": ["long_hair"],
            "action": [{"name": "cry", "start_sec": 1.5, "end_sec": 3.0}],
            "emotion": [
                {"emotion": "neutral", "start_sec": 0, "end_sec": 1.5},
                {"emotion": "sadness", "start_sec": 1.5, "end_sec": 3.0},
            ],
        },
        "quality": 0.4,
    },
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def error_lines(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(error.value).splitlines()


# -- the schema ----------------------------------------------------------------------------------------------------


def test_the_schema_holds_celebvhq_s_83_attributes_in_mapping_order():
    assert len(schema.APPEARANCE_NAMES) == 40 and len(set(schema.APPEARANCE_NAMES)) == 40
    assert len(schema.ACTION_NAMES) == 35 and len(set(schema.ACTION_NAMES)) == 35
    assert len(schema.CELEBVHQ_EMOTIONS) == 8
    assert schema.APPEARANCE_NAMES[:3] == ("blurry", "male", "young")
    assert schema.APPEARANCE_NAMES[20] == "eyeglasses" and schema.APPEARANCE_NAMES[29] == "5_o_clock_shadow"
    assert schema.APPEARANCE_NAMES[-1] == "wearing_mask"
    assert schema.ACTION_NAMES[:3] == ("blow", "chew", "close_eyes")
    assert schema.ACTION_NAMES[10] == "head_wagging" and schema.ACTION_NAMES[-1] == "yawn"
    for group in (schema.APPEARANCE, schema.ACTION):
        assert all(a.index == i and a.question.endswith("?") for i, a in enumerate(group))
    assert schema.attribute("appearance", "Eyeglasses").question == "Is the person wearing eyeglasses?"
    assert len(schema.DFEW_EMOTIONS) == 7 and len(schema.MAFW_EMOTIONS) == 11


def test_lookup_ignores_case_and_suggests_the_closest_name():
    assert schema.lookup("appearance", "Pale_Skin") == "pale_skin"
    assert schema.lookup("emotion", "sad") == "sadness"  # CelebV-HQ spells it "sadness"
    with pytest.raises(schema.UnknownLabelError, match=r"unknown appearance attribute 'Eyeglass' \(did you mean "):
        schema.lookup("appearance", "Eyeglass")
    with pytest.raises(schema.UnknownLabelError, match="expected one of: happy, sad, neutral"):
        schema.lookup("emotion", "joyful", vocabulary=schema.DFEW_EMOTIONS)


def test_segmented_emotion_gives_start_end_and_the_longest_label():
    attributes = schema.FaceAttributes(
        emotion=(schema.Segment("neutral", 0, 1), schema.Segment("happy", 1, 3.5), schema.Segment("neutral", 3.5, 4))
    )
    assert attributes.segmented
    assert attributes.emotion_at("start") == "neutral" and attributes.emotion_at("end") == "neutral"
    assert attributes.emotion_overall() == "happy"


# -- reading records -----------------------------------------------------------------------------------------------


def test_records_read_from_jsonl_and_json_alike_and_round_trip(tmp_path):
    from_jsonl = data.read_records(write_jsonl(tmp_path / "data.jsonl", RECORDS))
    (tmp_path / "data.json").write_text(json.dumps(RECORDS), encoding="utf-8")
    from_json = data.read_records(tmp_path / "data.json")
    assert [r.to_dict() for r in from_jsonl] == [r.to_dict() for r in from_json]
    first, second = from_jsonl
    assert first.attributes.appearance == ("male", "young", "eyeglasses")
    assert first.attributes.emotion == "happy" and first.qa[0].kind == "appearance"
    assert second.attributes.action == (schema.Segment("cry", 1.5, 3.0),)
    assert second.attributes.emotion_at("end") == "sadness"
    data.write_records(from_jsonl, tmp_path / "again.jsonl")
    assert [r.to_dict() for r in data.read_records(tmp_path / "again.jsonl")] == [r.to_dict() for r in from_jsonl]


def test_an_unknown_attribute_names_the_file_line_field_and_the_close_match(tmp_path):
    bad = json.loads(json.dumps(RECORDS))
    bad[1]["attributes"]["appearance"] = ["long_hair", "wavy_hair", "Eyeglass"]
    path = write_jsonl(tmp_path / "data.jsonl", bad)
    with pytest.raises(ConfigError) as error:
        data.read_records(path)
    assert error_lines(error)[1].strip() == (
        f"{path}:2: attributes.appearance[2]: unknown appearance attribute 'Eyeglass' (did you mean 'eyeglasses'?)"
    )


def test_json_lists_name_the_record_index_and_every_problem_is_listed(tmp_path):
    bad = json.loads(json.dumps(RECORDS))
    bad[0]["attributes"]["emotion"] = "joyful"
    bad[1]["attributes"]["action"][0]["name"] = "crying"
    bad[1]["sumary"] = "typo"
    path = tmp_path / "data.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        data.read_records(path)
    lines = [line.strip() for line in error_lines(error)]
    assert lines[0] == f"{path}: 3 config errors in face video records"
    assert f"{path}: [0].attributes.emotion: unknown emotion 'joyful' (expected one of: neutral, happy, " in lines[1]
    assert lines[2] == f"{path}: [1].sumary: unknown field 'sumary' (did you mean 'summary'?)"
    assert lines[3] == f"{path}: [1].attributes.action[0].name: unknown action 'crying' (did you mean 'cry'?)"


def test_emotions_follow_the_vocabulary_the_data_says(tmp_path):
    row = {"id": "d1", "video": "d1.mp4", "attributes": {"emotion": "angry"}}
    path = write_jsonl(tmp_path / "dfew.jsonl", [row])
    assert data.read_records(path, emotions="dfew")[0].attributes.emotion == "angry"
    with pytest.raises(ConfigError, match=r"dfew.jsonl:1: attributes.emotion: unknown emotion 'angry' \(did you mean"):
        data.read_records(path)


def test_broken_json_lines_name_their_line(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(RECORDS[0]), "", '{"id": "v2", "video": "v2.mp4",, }', json.dumps(RECORDS[1])[:40]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        data.read_records(path)
    lines = [line.strip() for line in error_lines(error)]
    assert lines[1].startswith(f"{path}:3: invalid JSON: Expecting property name enclosed in double quotes")
    assert lines[2].startswith(f"{path}:4: invalid JSON: ")
    assert lines[2].endswith("the text ends in the middle of a value (is the file truncated?)")
    assert "Traceback" not in str(error.value)


def test_a_truncated_json_file_and_a_non_utf8_file_give_one_clear_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS, indent=1)[:-25], encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        data.read_records(path)
    (line,) = error_lines(error)[1:]
    assert line.strip().startswith(f"{path}:") and "(is the file truncated?)" in line
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        json.dumps({"id": "x", "video": "x.mp4"}).encode() + b"\n" + '{"summary": "café"}'.encode("latin-1")
    )
    with pytest.raises(ConfigError) as error:
        data.read_records(latin)
    (line,) = error_lines(error)[1:]
    assert line.strip().startswith(f"{latin}:2: not UTF-8 text (byte ")
    lines_in_json = tmp_path / "lines.json"
    lines_in_json.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"lines.json:2: invalid JSON: Extra data .*name the file .jsonl"):
        data.read_records(lines_in_json)
    with pytest.raises(ConfigError, match="the file is empty"):
        data.read_records(write_jsonl(tmp_path / "empty.jsonl", []))


def test_field_types_times_and_duplicate_ids_are_checked(tmp_path):
    rows = [
        {"id": "a", "video": "a.mp4", "quality": "high"},
        {"id": "a", "video": "a2.mp4"},
        {"id": "b", "attributes": {"action": [{"name": "nod", "start_sec": 2, "end_sec": 1}], "emotion": []}},
    ]
    with pytest.raises(ConfigError) as error:
        data.read_records(write_jsonl(tmp_path / "data.jsonl", rows))
    text = str(error.value)
    assert ":1: quality: expected a number, got a string" in text
    assert ":3: video: missing: needs the video file (a non-empty string)" in text
    assert ":3: attributes.action[0].end_sec: ends (1) before it starts (2)" in text
    assert ":3: attributes.emotion: an empty list" in text


# -- CelebV-HQ -----------------------------------------------------------------------------------------------------


def celebvhq_file(tmp_path: Path, clips: dict, *, capitalised: bool = False) -> Path:
    appearance = [name.title() if capitalised else name for name in schema.APPEARANCE_NAMES]
    info = {
        "meta_info": {"appearance_mapping": appearance, "action_mapping": list(schema.ACTION_NAMES)},
        "clips": clips,
    }
    path = tmp_path / "celebvhq_info.json"
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


def vector(names: list[str], mapping: tuple[str, ...]) -> list[int]:
    return [int(name in names) for name in mapping]


def celebvhq_clip(appearance: list[str], action: list[str], emotion: dict) -> dict:
    return {
        "ytb_id": "M2Ohb0FAaJU",
        "duration": {"start_sec": 81.62, "end_sec": 86.17},
        "bbox": {"top": 0.0, "bottom": 0.8815, "left": 0.1964, "right": 0.6922},
        "attributes": {
            "appearance": vector(appearance, schema.APPEARANCE_NAMES),
            "action": vector(action, schema.ACTION_NAMES),
            "emotion": emotion,
        },
        "version": "v0.1",
    }


CLIPS = {
    "M2Ohb0FAaJU_1": celebvhq_clip(["young", "eyeglasses"], ["talk"], {"sep_flag": False, "labels": "neutral"}),
    "_0tf2n3rlJU_0": celebvhq_clip(
        ["male", "black_hair"],
        ["smile", "head_wagging"],
        {
            "sep_flag": True,
            "labels": [
                {"emotion": "neutral", "start_sec": 0, "end_sec": 0.28},
                {"emotion": "happy", "start_sec": 1.28, "end_sec": 3.28},
            ],
        },
    ),
}


def test_the_celebvhq_reader_decodes_vectors_with_the_file_s_mapping(tmp_path):
    records = data.read_celebvhq(celebvhq_file(tmp_path, CLIPS, capitalised=True))
    first, second = records
    assert first.id == "M2Ohb0FAaJU_1" and first.video == "M2Ohb0FAaJU_1.mp4"
    assert first.attributes.appearance == ("young", "eyeglasses")
    assert first.attributes.actions == ("talk",) and first.attributes.emotion == "neutral"
    assert first.meta["ytb_id"] == "M2Ohb0FAaJU" and first.meta["duration"]["end_sec"] == 86.17
    assert second.attributes.actions == ("head_wagging", "smile")  # mapping order
    assert second.attributes.emotion == (schema.Segment("neutral", 0, 0.28), schema.Segment("happy", 1.28, 3.28))


def test_the_celebvhq_reader_names_the_clip_of_a_wrong_vector(tmp_path):
    clips = json.loads(json.dumps(CLIPS))
    clips["_0tf2n3rlJU_0"]["attributes"]["appearance"].pop()
    clips["M2Ohb0FAaJU_1"]["attributes"]["action"][3] = 2
    clips["M2Ohb0FAaJU_1"]["attributes"]["emotion"] = {"sep_flag": False, "labels": "joy"}
    path = celebvhq_file(tmp_path, clips)
    with pytest.raises(ConfigError) as error:
        data.read_celebvhq(path)
    lines = [line.strip() for line in error_lines(error)]
    assert lines[1] == f"{path}: clips.M2Ohb0FAaJU_1.attributes.action[3]: clip 'M2Ohb0FAaJU_1': expected 0 or 1, got 2"
    assert lines[2].startswith(f"{path}: clips.M2Ohb0FAaJU_1.attributes.emotion.labels: unknown emotion 'joy'")
    assert lines[3] == (
        f"{path}: clips._0tf2n3rlJU_0.attributes.appearance: clip '_0tf2n3rlJU_0' has 39 appearance values, "
        "expected 40 (one per name of meta_info.appearance_mapping)"
    )


def test_the_record_reader_points_celebvhq_files_to_their_reader(tmp_path):
    with pytest.raises(ConfigError, match="read it with favchat/celebvhq"):
        data.read_records(celebvhq_file(tmp_path, CLIPS))


# -- stages ------------------------------------------------------------------------------------------------------


def test_stage_summaries_answers_a_describe_prompt_with_the_summary(tmp_path):
    records = data.read_records(write_jsonl(tmp_path / "data.jsonl", RECORDS))
    converted = data.to_conversations(records, "summaries")
    first = converted.conversations[0]
    assert first.turns[0] == ("user", data.describe_prompt("v1"))
    assert first.turns[1] == ("assistant", RECORDS[0]["summary"])
    assert first.meta == {"id": "v1", "video_id": "v1", "kind": "summary"}
    assert first.to_record()["conversations"][0]["value"].startswith("<video>\n")


def test_stage_qa_keeps_pairs_of_records_at_or_above_min_quality(tmp_path):
    records = data.read_records(write_jsonl(tmp_path / "data.jsonl", RECORDS))
    everything = data.to_conversations(records, "qa")
    assert [c.id for c in everything.conversations] == ["v1/qa0", "v1/qa1", "v2/qa0"]
    assert everything.conversations[0].meta["qa_kind"] == "appearance"
    good = data.to_conversations(records, "qa", min_quality=0.5)
    assert [c.id for c in good.conversations] == ["v1/qa0", "v1/qa1"] and good.skipped == {"quality below 0.5": 1}
    (turns,) = [c.turns for c in data.to_conversations(records[:1], "qa", multi_turn=True).conversations]
    assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant"]


def test_attribute_questions_come_from_the_schema(tmp_path):
    records = data.read_records(write_jsonl(tmp_path / "data.jsonl", RECORDS))
    items = {c.id: c for c in data.to_conversations(records, "attributes").conversations}
    eyeglasses = items["v1/appearance/eyeglasses"]
    assert eyeglasses.turns == (("user", "Is the person wearing eyeglasses?"), ("assistant", "Yes."))
    assert eyeglasses.meta["choices"] == ["yes", "no"] and eyeglasses.meta["group"] == "appearance"
    v1_appearance = [c for c in items.values() if c.id.startswith("v1/appearance/")]
    assert sum(c.meta["answer"] == "yes" for c in v1_appearance) == 3
    assert sum(c.meta["answer"] == "no" for c in v1_appearance) == 3  # balanced negatives
    assert items["v1/action/smile"].turns[0][1] == "Is the person smiling in the video?"
    assert items["v1/emotion"].turns[1] == ("assistant", "happy")
    assert items["v1/emotion"].turns[0][1].startswith("What emotion does the person show? Answer with one of: neutral")
    end = items["v2/emotion@end"]
    assert end.turns[0][1].startswith("What emotion does the person show at the end of the clip?")
    assert end.turns[1] == ("assistant", "sadness") and end.meta["segment"] == "end"
    assert items["v2/emotion@start"].meta["answer"] == "neutral"
    again = {c.id for c in data.to_conversations(records, "attributes").conversations}
    assert again == set(items)  # the negative draw is seeded
    every = data.to_conversations(records[:1], "attributes", groups=["appearance"], negatives="all")
    assert len(every.conversations) == 40
    only_emotion = data.to_conversations(records, "emotion").conversations
    assert [c.id for c in only_emotion] == ["v1/emotion", "v2/emotion@start", "v2/emotion@end"]


def test_the_datasets_serve_items_and_meta(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    config = FaceVideoDataConfig(path=str(path), task="emotion", media_root="/media")
    dataset = data.FaceVideoDataset(config, processor=None)
    assert len(dataset) == 3
    media, turns = dataset.item(2)
    assert media == "/media/clips/v2.mp4" and turns[-1] == ("assistant", "sadness")
    assert dataset.meta(0)["kind"] == "emotion" and dataset.meta(0)["choices"] == list(schema.CELEBVHQ_EMOTIONS)
    summaries = data.FaceVideoDataset(FaceVideoDataConfig(path=str(path), limit=1), processor=None)
    assert len(summaries) == 1 and summaries.item(0)[0] == str(tmp_path / "clips" / "v1.mp4")
    celeb = data.CelebVHQDataset(CelebVHQDataConfig(path=str(celebvhq_file(tmp_path, CLIPS))), processor=None)
    assert celeb.item(0)[0] == str(tmp_path / "M2Ohb0FAaJU_1.mp4")
    assert {celeb.meta(i)["kind"] for i in range(len(celeb))} == {"attribute", "emotion"}
    with pytest.raises(ConfigError, match="task"):
        FaceVideoDataConfig.from_dict({"path": str(path), "task": "summary"})


# -- evaluators ----------------------------------------------------------------------------------------------------


def emotion_predictions(pairs: list[tuple[str, str]]) -> list[Prediction]:
    return [
        Prediction(id=str(i), question="What emotion?", reply=reply, reference=ref, meta={"kind": "emotion"})
        for i, (reply, ref) in enumerate(pairs)
    ]


def test_the_emotion_parser_reads_synonyms_and_simple_negations():
    dfew = evaluate.EmotionParser(schema.DFEW_EMOTIONS)
    assert dfew("She looks joyful.") == "happy" and dfew("Happiness") == "happy"
    assert dfew("The man is furious") == "angry" and dfew("anger") == "angry"
    assert dfew("surprised!") == "surprise" and dfew("He seems scared") == "fear" and dfew("afraid") == "fear"
    assert dfew("not happy") == UNPARSED and dfew("She isn't happy, she is sad.") == "sad"
    assert dfew("There is no anger; the person is calm and neutral.") == "neutral"
    assert dfew("I cannot tell.") == UNPARSED  # never neutral by default
    mafw = evaluate.EmotionParser(schema.MAFW_EMOTIONS)
    assert mafw("angry") == "anger" and mafw("happy") == "happiness" and mafw("worried") == "anxiety"


def test_uar_and_war_by_hand_on_a_small_example():
    predictions = emotion_predictions(
        [("happy", "happy"), ("sad", "happy"), ("angry", "sad"), ("sad", "sad"), ("no idea", "angry")]
    )
    config = EmotionEvalConfig(labels=["happy", "sad", "angry"], bootstrap=0)
    result = evaluate.EmotionEvaluator(config).evaluate(predictions)
    # recall: happy 1/2, sad 1/2, angry 0/1 (unparsed counts as wrong) -> UAR 1/3; WAR 2/5
    assert result["uar"] == pytest.approx(1 / 3) and result["war"] == pytest.approx(2 / 5)
    assert result["per_class"]["angry"] == {"recall": 0.0, "support": 1, "predicted": 1}
    assert result["unparsed"] == 1 and result["ci"] is None
    assert result["confusion"]["columns"][-1] == UNPARSED
    assert result["confusion"]["matrix"] == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    assert predictions[4].parsed["favchat/emotion"] == UNPARSED


def test_uar_and_war_agree_with_scikit_learn_and_the_intervals_are_seeded():
    from sklearn.metrics import accuracy_score, recall_score

    rng = np.random.default_rng(3)
    words = {"happy": "joyful", "sad": "sad", "neutral": "neutral", "angry": "furious", "surprise": "surprised",
             "disgust": "disgusted", "fear": "scared"}  # fmt: skip
    labels = list(schema.DFEW_EMOTIONS)
    truth = rng.choice(labels, size=300, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    guess = [t if rng.random() < 0.55 else rng.choice([*labels, "?"]) for t in truth]
    replies = [f"The person looks {words[g]}." if g != "?" else "hard to say" for g in guess]
    predictions = emotion_predictions(list(zip(replies, truth, strict=True)))
    predictions.append(Prediction(id="x", question="q", reply="happy", reference="contempt", meta={"kind": "emotion"}))
    predictions.append(Prediction(id="y", question="q", reply="happy", reference="happy", meta={"kind": "qa"}))
    evaluator = evaluate.EmotionEvaluator(EmotionEvalConfig(labels="dfew", bootstrap=500, seed=7))
    result = evaluator.evaluate(predictions)
    y_true = list(truth)
    y_pred = [g if g != "?" else UNPARSED for g in guess]
    assert result["uar"] == pytest.approx(recall_score(y_true, y_pred, labels=labels, average="macro"))
    assert result["war"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["n"] == 300 and result["excluded"] == 1 and result["ignored"] == 1
    assert result["unparsed"] == sum(g == "?" for g in guess)
    assert np.array(result["confusion"]["matrix"]).sum() == 300
    low, high = result["ci"]["uar"]
    assert low < result["uar"] < high and high - low < 0.2
    assert result["ci"] == evaluator.evaluate(predictions)["ci"]


def test_attribute_accuracy_per_attribute_and_group_with_chance():
    def item(attribute: str, group: str, reply: str, answer: str, choices: list[str] | None = None) -> Prediction:
        meta = {"kind": "emotion" if group == "emotion" else "attribute", "group": group, "attribute": attribute}
        meta.update(choices=choices or ["yes", "no"], answer=answer)
        return Prediction(id=attribute, question="?", reply=reply, reference=answer.capitalize(), meta=meta)

    predictions = [
        item("eyeglasses", "appearance", "Yes, the person wears glasses.", "yes"),
        item("eyeglasses", "appearance", "No.", "no"),
        item("eyeglasses", "appearance", "The person is not wearing any.", "no"),
        item("eyeglasses", "appearance", "Hmm.", "no"),
        item("smile", "action", "Yes", "no"),
        item("smile", "action", "yes", "yes"),
        item("emotion", "emotion", "She seems joyful", "happy", list(schema.CELEBVHQ_EMOTIONS)),
        item("emotion", "emotion", "sad", "sadness", list(schema.CELEBVHQ_EMOTIONS)),
    ]
    result = evaluate.AttributeEvaluator().evaluate(predictions)
    eyeglasses = result["attributes"]["eyeglasses"]
    assert eyeglasses == {"group": "appearance", "accuracy": 0.75, "chance": 0.75, "n": 4, "unparsed": 1,
                          "majority": "no"}  # fmt: skip
    assert result["attributes"]["smile"]["accuracy"] == 0.5 and result["attributes"]["smile"]["chance"] == 0.5
    assert result["groups"]["emotion"]["accuracy"] == 1.0 and result["groups"]["emotion"]["chance"] == 0.5
    assert result["accuracy"] == pytest.approx(6 / 8) and result["chance"] == pytest.approx((3 + 1 + 1) / 8)
    assert result["unparsed"] == 1 and predictions[3].parsed["favchat/attributes"] == UNPARSED


HYPOTHESES = [
    "A young man with glasses is talking and smiling at the camera.",
    "The woman looks sad and starts crying.",
    "A person nods.",
    "",
]
REFERENCES = [
    "A young man wearing eyeglasses talks and smiles.",
    "A woman looks calm, then begins to cry; she seems sad at the end.",
    "An old person nods slowly while listening.",
    "A man laughs.",
]


def test_caption_metrics_match_sacrebleu_rouge_score_and_nltk():
    import sacrebleu
    from nltk.translate.meteor_score import single_meteor_score
    from rouge_score import rouge_scorer

    from omnimm_plugins.simct.text import words

    predictions = [
        Prediction(id=str(i), question="Describe.", reply=h, reference=r, meta={"kind": "summary"})
        for i, (h, r) in enumerate(zip(HYPOTHESES, REFERENCES, strict=True))
    ]
    predictions.append(Prediction(id="e", question="?", reply="x", reference="y", meta={"kind": "emotion"}))
    result = evaluate.CaptionEvaluator(CaptionEvalConfig()).evaluate(predictions)
    assert result["n"] == 4 and result["ignored"] == 1 and result["empty_replies"] == 1
    assert result["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected_rouge = np.mean(
        [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPOTHESES, REFERENCES, strict=True)]
    )
    assert result["rougeL"] == pytest.approx(100 * expected_rouge)

    class NoSynonyms:  # NLTK's METEOR without its WordNet stage
        def synsets(self, *args, **kwargs):
            return []

    expected_meteor = np.mean(
        [
            single_meteor_score(words(r), words(h), wordnet=NoSynonyms()) if h else 0.0
            for h, r in zip(HYPOTHESES, REFERENCES, strict=True)
        ]
    )
    assert result["meteor"] == pytest.approx(100 * expected_meteor)
    assert 0 < result["meteor"] < 100 and result["bleu_details"]["hyp_len"] > 0
