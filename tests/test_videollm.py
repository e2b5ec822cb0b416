"""The video LLM: token placement, labels, forward/backward, generation, save and reload, datasets."""

from __future__ import annotations

import json

import pytest
import torch

from omnimm import models
from omnimm.errors import ConfigError, MediaError
from omnimm.videollm.model import VideoLLM, causal_lm_loss
from omnimm.videollm.processor import IGNORE_INDEX

from .conftest import video_llm_config, write_test_video


@pytest.fixture
def model(word_tokenizer):
    torch.manual_seed(0)
    return models.build(video_llm_config(word_tokenizer))


@pytest.fixture
def clip_file(tmp_path):
    return write_test_video(tmp_path / "clip.mkv", frames=10)


def test_visual_token_count_is_n_plus_t(model, clip_file):
    assert model.num_visual_tokens(4) == 16 + 4
    clip = model.processor.read(clip_file)
    example = model.processor.encode([("user", "what colour is it?"), ("assistant", "red")], clip)
    assert example.input_ids.count(model.visual_token_id) == 20
    assert example.pixel_values["vision"].shape == (4, 3, 32, 32)


def test_labels_cover_the_answers_and_eos_only(model, clip_file):
    processor = model.processor
    clip = processor.read(clip_file)
    turns = [("human", "what colour is it?"), ("gpt", "red"), ("human", "describe the video."), ("gpt", "a clip")]
    example = processor.encode(turns, clip)
    learned = [token for token, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    tokens = processor.tokenizer.convert_ids_to_tokens(learned)
    assert tokens == ["red", "#", "#", "#", "a", "clip", "#", "#", "#", "</s>"]
    assert all(
        label == IGNORE_INDEX
        for token, label in zip(example.input_ids, example.labels, strict=True)
        if token == model.visual_token_id
    )


def test_the_placeholder_goes_where_the_text_says(model, clip_file):
    processor = model.processor
    clip = processor.read(clip_file)
    default = processor.encode([("user", "what colour is it?"), ("assistant", "red")], clip)
    explicit = processor.encode([("user", "what colour is it? <video>"), ("assistant", "red")], clip)
    first = default.input_ids.index(model.visual_token_id)
    assert explicit.input_ids.index(model.visual_token_id) > first
    with pytest.raises(ValueError, match="mentions <video> but no video"):
        processor.encode([("user", "<video> what?"), ("assistant", "red")])
    with pytest.raises(ValueError, match="mentions <video> 2 times"):
        processor.encode([("user", "<video> <video>"), ("assistant", "red")], clip)


def test_forward_backward_and_masked_scatter(model, clip_file):
    processor = model.processor
    clip = processor.read(clip_file)
    batch = processor.collate(
        [
            processor.encode([("user", "what colour is it?"), ("assistant", "red")], clip),
            processor.encode([("user", "describe the video."), ("assistant", "a clip of pancakes flipping")], clip),
        ]
    )
    out = model(**batch)
    assert out["logits"].shape[:2] == batch["input_ids"].shape and out["loss"].requires_grad
    out["loss"].backward()
    assert model.connector.projector.layers[0].weight.grad.abs().sum() > 0
    embeds, _, _ = model.inputs_embeds(batch["input_ids"], batch["pixel_values"])
    features, _, _ = model.connect(batch["pixel_values"])
    placeholders = batch["input_ids"][0] == model.visual_token_id
    assert torch.equal(embeds[0][placeholders], features[0]["video"])  # the visual tokens sit at the placeholders


def test_a_count_mismatch_is_a_clear_error(model, clip_file):
    processor = model.processor
    example = processor.encode([("user", "what?"), ("assistant", "red")], processor.read(clip_file))
    batch = processor.collate([example])
    batch["pixel_values"]["vision"] = [batch["pixel_values"]["vision"][0][:2]]  # 2 frames: 18 tokens, not 20
    with pytest.raises(
        ValueError, match="batch row 0 has 20 placeholder tokens for visual group 'video' but its video gives 18"
    ):
        model(**batch)


def test_videos_with_different_frame_counts_share_a_batch(word_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = models.build(video_llm_config(word_tokenizer, frames={"fps": 2}))
    short = write_test_video(tmp_path / "short.mkv", frames=6, fps=6)  # 1 s -> 2 frames
    long = write_test_video(tmp_path / "long.mkv", frames=24, fps=6)  # 4 s -> 8 frames
    examples = [
        model.processor.encode([("user", "what?"), ("assistant", "red")], model.processor.read(p))
        for p in (short, long)
    ]
    assert [e.pixel_values["vision"].shape[0] for e in examples] == [2, 8]
    assert torch.isfinite(model(**model.processor.collate(examples))["loss"])


def test_loss_normalises_by_the_given_token_count():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 3, 4, 5, 6]])
    mean = causal_lm_loss(logits, labels)
    assert torch.allclose(causal_lm_loss(logits, labels, num_items_in_batch=6), mean)  # 6 labelled positions
    assert torch.allclose(causal_lm_loss(logits, labels, num_items_in_batch=12), mean / 2)


def test_generate_and_answer(model, clip_file):
    reply = model.answer(clip_file, "what colour is it?", max_new_tokens=5)
    assert isinstance(reply, str) and "###" not in reply and "<video>" not in reply
    processor = model.processor
    clip = processor.read(clip_file)
    examples = [processor.encode([("user", q)], clip, for_generation=True) for q in ("what?", "describe the video.")]
    batch = processor.collate(examples, padding_side="left")
    assert batch["attention_mask"][0, 0] == 0  # left padded
    batch.pop("labels")
    assert model.generate(**batch, max_new_tokens=3).shape[0] == 2


def test_save_and_reload_give_identical_outputs(word_tokenizer, clip_file, tmp_path):
    torch.manual_seed(0)
    model = models.build(
        video_llm_config(
            word_tokenizer, standardize=True, connector={"name": "valley/stpool", "variant": "v3", "heads": 2}
        )
    )
    processor = model.processor
    batch = processor.collate([processor.encode([("user", "what?"), ("assistant", "red")], processor.read(clip_file))])
    model.train()
    model(**batch)  # gathers the standardiser's statistics
    model.eval()
    folder = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "llm", "model.safetensors"]
    saved = json.loads((folder / "config.json").read_text())["omnimm"]
    assert saved["llm"]["path"] == "llm" and saved["llm"]["load_weights"] is False
    reloaded = VideoLLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch)["logits"], reloaded(**batch)["logits"])
    assert model.answer(clip_file, "what?", max_new_tokens=4) == reloaded.answer(clip_file, "what?", max_new_tokens=4)
    model.save_pretrained(folder)  # saving over an existing save replaces it
    assert not list(tmp_path.glob(".saved*"))


def test_from_pretrained_on_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a saved video LLM"):
        VideoLLM.from_pretrained(tmp_path)


def test_config_checks(word_tokenizer):
    with pytest.raises(ConfigError, match=r"freeze\[0\]: 'connecter' matches no part"):
        models.validate(video_llm_config(word_tokenizer, freeze=["connecter"]))
    with pytest.raises(ConfigError, match=r"template: .*unknown template 'valey/v0' \(did you mean 'valley/v0'"):
        models.validate(video_llm_config(word_tokenizer, template="valey/v0"))
    with pytest.raises(ConfigError, match=r"frames.fps: give num_frames or fps, not both"):
        models.validate(video_llm_config(word_tokenizer, frames={"num_frames": 4, "fps": 1}))


def test_frozen_parts_and_parts_names(model):
    assert list(model.parts()) == [
        "encoders",
        "encoders.vision",
        "connector",
        "connector.projector",
        "connector.pool",
        "llm",
    ]
    assert not any(p.requires_grad for p in model.encoders.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())


def conversations(tmp_path, records):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return {"name": "omnimm/conversations", "path": str(path)}


def test_conversation_dataset_skips_unreadable_videos(model, tmp_path, caplog):
    from omnimm.registry import datasets

    write_test_video(tmp_path / "good.mkv")
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 40)
    turn = [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "red"}]
    records = [
        {"video": "broken.mp4", "conversations": turn},
        {"video": "good.mkv", "conversations": turn},
        {"video": "missing.mp4", "conversations": turn},
    ]
    data = datasets.build(conversations(tmp_path, records), processor=model.processor)
    with caplog.at_level("WARNING", logger="omnimm.data"):
        items = [data[i] for i in range(len(data))]
    assert all(item.clip.source.endswith("good.mkv") for item in items)
    assert sorted(p.split("/")[-1] for p in data.skipped) == ["broken.mp4", "missing.mp4"]
    assert len([r for r in caplog.records if r.message.startswith("skipping ")]) == 1  # warned once


def test_conversation_dataset_with_no_readable_video_stops(model, tmp_path):
    from omnimm.registry import datasets

    turn = [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "red"}]
    data = datasets.build(
        conversations(tmp_path, [{"video": "nope.mp4", "conversations": turn}]), processor=model.processor
    )
    with pytest.raises(MediaError, match="no usable item"):
        data[0]


def test_malformed_records_are_reported_with_their_index(model, tmp_path):
    from omnimm.registry import datasets

    records = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"conversations": [{"from": "human"}]},
        "text",
    ]
    with pytest.raises(ConfigError) as caught:
        datasets.build(conversations(tmp_path, records), processor=model.processor)
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["[1].conversations[0]", "[1].conversations", "[2]"]


def test_text_only_and_video_samples_share_a_batch(model, clip_file):
    processor = model.processor
    video = processor.encode([("user", "what colour is it?"), ("assistant", "red")], processor.read(clip_file))
    text = processor.encode([("user", "describe the video."), ("assistant", "a clip")])
    batch = processor.collate([text, video, text])
    assert [len(v) for v in batch["pixel_values"].values()] == [1]
    out = model(**batch)
    assert torch.isfinite(out["loss"])
    alone = model(**processor.collate([video]))  # the video row gets the same visual tokens as on its own
    row = batch["input_ids"][1] == model.visual_token_id
    embeds, _, _ = model.inputs_embeds(batch["input_ids"], batch["pixel_values"])
    single, _, _ = model.inputs_embeds(
        processor.collate([video])["input_ids"], processor.collate([video])["pixel_values"]
    )
    assert torch.allclose(embeds[1][row], single[0][row[: single.shape[1]]])
    assert torch.isfinite(alone["loss"])


def test_placeholders_in_an_assistant_turn_carry_no_label(model, clip_file):
    processor = model.processor
    example = processor.encode(
        [("user", "what colour is it?"), ("assistant", "it is red <video>")], processor.read(clip_file)
    )
    visual = [i for i, token in enumerate(example.input_ids) if token == model.visual_token_id]
    assert len(visual) == model.num_visual_tokens(4)
    assert all(example.labels[i] == IGNORE_INDEX for i in visual)
    assert any(label != IGNORE_INDEX for label in example.labels)  # the answer's words still count


def test_long_examples_are_cut_with_a_count_and_too_long_ones_skipped(word_tokenizer, tmp_path, caplog):
    from omnimm.registry import datasets
    from omnimm.videollm.processor import TooLongError

    write_test_video(tmp_path / "clip.mkv", frames=10)
    torch.manual_seed(0)
    model = models.build(video_llm_config(word_tokenizer, max_length=70))
    processor = model.processor
    assert processor.max_length == 70 and models.build(video_llm_config(word_tokenizer)).max_length == 2048
    clip = processor.read(tmp_path / "clip.mkv")
    long_answer = " ".join(["red blue"] * 20)
    example = processor.encode([("user", "what?"), ("assistant", long_answer)], clip)
    assert len(example.input_ids) == 70 and example.cut > 0
    with pytest.raises(TooLongError, match="more than max_length"):
        processor.encode([("user", long_answer)], clip, for_generation=True)
    processor.max_length = 40  # now the visual tokens themselves (positions 35-54) do not fit
    with pytest.raises(TooLongError, match="visual tokens end at 54"):
        processor.encode([("user", "what?"), ("assistant", "red")], clip)
    processor.max_length = 70
    turn = lambda answer: [{"from": "human", "value": "what?"}, {"from": "gpt", "value": answer}]  # noqa: E731
    records = [
        {"video": "clip.mkv", "conversations": turn(long_answer)},
        {"video": "clip.mkv", "conversations": turn("red")},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    data = datasets.build({"name": "omnimm/conversations", "path": str(tmp_path / "data.json")}, processor=processor)
    with caplog.at_level("WARNING", logger="omnimm.data"):
        [data[i] for i in range(len(data))]
    assert list(data.truncated) == [0]
    assert any("cut by" in r.message for r in caplog.records)
    assert any("cut to max_length 70" in line for line in data.report())


def test_a_video_shorter_than_the_frames_asked_for_is_reported(model, tmp_path, caplog):
    from omnimm.registry import datasets

    short = write_test_video(tmp_path / "short.mkv", frames=2)
    clip = model.processor.read(short)
    assert clip.indices == [0, 0, 0, 1] and clip.repeated == [1, 2]
    turn = [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "red"}]
    (tmp_path / "data.json").write_text(json.dumps([{"video": "short.mkv", "conversations": turn}]))
    data = datasets.build(
        {"name": "omnimm/conversations", "path": str(tmp_path / "data.json")}, processor=model.processor
    )
    with caplog.at_level("WARNING", logger="omnimm.data"):
        data[0]
    assert data.short_clips == {str(short): 2}
    assert any("2 of 4 sampled frames repeat" in r.message for r in caplog.records)


def test_lora_adapters_saved_unmerged_come_back(model, clip_file, tmp_path):
    processor = model.processor
    batch = processor.collate([processor.encode([("user", "what?"), ("assistant", "red")], processor.read(clip_file))])
    model.add_lora(rank=2, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # adapters that change the output
    model.eval()
    folder = model.save_pretrained(tmp_path / "saved")
    assert model.has_lora  # saving did not merge the adapters away
    saved = json.loads((folder / "config.json").read_text())["omnimm"]
    assert saved["lora"]["rank"] == 2 and saved["lora"]["target_modules"] == ["q_proj", "v_proj"]
    reloaded = VideoLLM.from_pretrained(folder).eval()
    assert reloaded.has_lora
    with torch.no_grad():
        assert torch.allclose(model(**batch)["logits"], reloaded(**batch)["logits"], atol=1e-6)
    model.merge_lora()
    assert model.config.lora is None
    with torch.no_grad():
        assert torch.allclose(model(**batch)["logits"], reloaded(**batch)["logits"], atol=1e-5)


def test_layout_tokens_must_be_tokens_of_their_own(word_tokenizer):
    with pytest.raises(ValueError, match=r"visual_groups: \['red'\] are ordinary tokens of the tokenizer"):
        models.build(video_llm_config(word_tokenizer, visual_groups={"video": {"start": "red"}}))
    with pytest.raises(ValueError, match=r"each group needs its own placeholder and delimiters; \['<video>'\] repeat"):
        models.build(video_llm_config(word_tokenizer, visual_groups={"video": {"start": "<video>"}}))
    with pytest.raises(ValueError, match=r"visual_groups: visual_groups names \['temporal'\]"):
        models.build(video_llm_config(word_tokenizer, visual_groups={"temporal": {"start": "<a>"}}))


def test_an_example_cut_down_to_no_answer_is_too_long(word_tokenizer, tmp_path):
    from omnimm.videollm.processor import TooLongError

    torch.manual_seed(0)
    model = models.build(video_llm_config(word_tokenizer, max_length=56))
    clip = model.processor.read(write_test_video(tmp_path / "clip.mkv", frames=4))
    with pytest.raises(TooLongError, match="keeps none of its answer tokens"):
        model.processor.encode([("user", "what colour is it ? describe the video ."), ("assistant", "red")], clip)


def test_decode_cuts_at_the_stop_string_in_the_text_too(model):
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    # A tokenizer that merges the stop string into the word before it, as SentencePiece models do ("▁red###"):
    # there are no stop tokens to find among the ids, but the text has the stop string.
    vocab = {"<unk>": 0, "red###": 1, "###": 2, "human:": 3, "red": 4}
    merged = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<unk>"))
    merged.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    merged.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    real = model.llm.tokenizer
    model.llm.tokenizer = PreTrainedTokenizerFast(tokenizer_object=merged, unk_token="<unk>")
    try:
        assert model._stop_sequence() == [2]
        assert model.decode([1, 3]) == "red"
    finally:
        model.llm.tokenizer = real
