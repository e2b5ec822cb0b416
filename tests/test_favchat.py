"""favchat as a whole: the plugin's registrations, its configs, a video LLM with the real face encoder and the MoE
connector built from config, landmarks from files, the feature cache, the demo and the faces command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omnimm import models
from omnimm.config import load_config
from omnimm.registry import get_registry

from .conftest import SHARED, requires_shared


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from omnimm.llm.templates import LLAVA_V0
    from omnimm.llm.tokenizer import train_word_tokenizer
    from omnimm_plugins.favchat.synthetic import corpus, generate_faces

    root = tmp_path_factory.mktemp("favchat")
    generate_faces(root / "faces", train=4, test=2)
    tokens = ["<video>", "<face_start>", "<face_end>"]
    train_word_tokenizer([LLAVA_V0.prompt([("user", "<video>\nq")]), *corpus()], extra_tokens=tokens).save_pretrained(
        root / "tokenizer"
    )
    return root


def demo_model_config(root):
    from omnimm_plugins.favchat.demo import demo_config

    return demo_config(root, "test").model


def test_kept_clips_are_reused_and_written_again_when_the_renderer_changed(tmp_path):
    from omnimm_plugins.favchat.synthetic import generate_faces

    folder = generate_faces(tmp_path / "faces", train=2, test=1)
    clip = folder / "clips" / "00000.mkv"
    first = clip.stat().st_mtime_ns
    generate_faces(folder, train=2, test=1)
    assert clip.stat().st_mtime_ns == first  # same settings, same renderer: kept
    index = json.loads((folder / "index.json").read_text())
    index["settings"]["renderer"] = "an-older-renderer"
    (folder / "index.json").write_text(json.dumps(index))
    clip.unlink()
    generate_faces(folder, train=2, test=1)
    assert clip.is_file()  # written again
    assert json.loads((folder / "index.json").read_text())["settings"]["renderer"] != "an-older-renderer"


def test_the_plugin_registers_its_components():
    assert get_registry("face_detectors").names() == [
        "favchat/mtcnn",
        "favchat/retinaface",
        "favchat/scrfd",
        "favchat/yunet",
    ]
    for registry, name in [
        ("encoders", "favchat/face"),
        ("connectors", "favchat/moe-adapter"),
        ("datasets", "favchat/videos"),
        ("datasets", "favchat/celebvhq"),
        ("evaluators", "favchat/emotion"),
        ("evaluators", "favchat/attributes"),
        ("evaluators", "favchat/captions"),
    ]:
        assert name in get_registry(registry), (registry, name)


def test_packaged_configs_validate_and_name_real_parts():
    recipe = load_config("favchat:recipe")
    assert [stage.name for stage in recipe.train.stages] == ["stage1-summaries", "stage2-qa"]
    assert recipe.train.stages[1].data.min_quality == 0.8 and recipe.train.stages[1].lora is not None
    assert "connector.router" in recipe.model.part_names() and "encoders.face" in recipe.model.part_names()
    assert load_config("favchat:demo").model.connector.name == "favchat/moe-adapter"


def test_a_misspelt_detector_is_a_config_error_with_the_field():
    from omnimm import ConfigError, encoders

    with pytest.raises(ConfigError, match=r"detector.name: unknown face detector 'favchat/yunett'.*favchat/yunet"):
        encoders.validate({"name": "favchat/face", "detector": {"name": "favchat/yunett"}})


def test_the_demo_model_counts_its_tokens_exactly(faces):
    torch.manual_seed(0)
    model = models.build(demo_model_config(faces))
    clip = model.processor.read(faces / "faces" / "clips" / "00000.mkv")
    assert clip.num_frames == 6 and "landmarks" not in clip.extra
    pixels = model.processor.pixels(clip)
    assert pixels["face"]["mask"].all()  # every frame's face aligned from the landmarks file
    groups, _ = model.encode_frames({key: [value] for key, value in pixels.items()})[0]
    assert {ref: tuple(t.shape) for ref, t in groups.items()} == {
        ref: (6, group.tokens, group.dim) for ref, group in model.encoder_groups.items()
    }
    example = model.processor.encode([("user", "who is the person?"), ("assistant", "anna")], clip)
    for name, group in model.visual_groups(6).items():
        assert example.input_ids.count(model.layout.placeholders[name]) == group.tokens
    assert model.num_visual_tokens(6) == (16 + 6) + 3 * 6 + 2  # scene N + T, 3 face levels x 6 frames, delimiters
    out = model(**model.processor.collate([example]))
    assert set(out["aux_losses"]) == {"balance", "z"}
    assert torch.allclose(
        out["loss"], out["lm_loss"] + 0.01 * out["aux_losses"]["balance"] + 0.001 * out["aux_losses"]["z"]
    )
    out["loss"].backward()
    assert model.connector.router.weight.grad is not None
    assert not any(p.requires_grad for p in model.encoders["face"].parameters())  # the face encoder is frozen


def test_landmarks_from_a_file_must_exist_and_fit(faces, tmp_path):
    from omnimm.errors import MediaError
    from omnimm.video import read_video
    from omnimm_plugins.favchat.face.configs import FaceEncoderConfig
    from omnimm_plugins.favchat.face.encoder import landmarks_from_file

    clip = read_video(faces / "faces" / "clips" / "00001.mkv", num_frames=3)
    marks = landmarks_from_file(clip)
    assert marks.shape == (3, 5, 2) and np.isfinite(marks).all()
    (tmp_path / "x.mkv").write_bytes((faces / "faces" / "clips" / "00001.mkv").read_bytes())
    lonely = read_video(tmp_path / "x.mkv", num_frames=3)
    with pytest.raises(MediaError, match="no landmarks file beside the video"):
        landmarks_from_file(lonely)
    np.save(tmp_path / "x.landmarks.npy", np.zeros((2, 5, 2)))
    with pytest.raises(MediaError, match=r"landmarks must be \[frames, 5, 2\] covering frame 5"):
        landmarks_from_file(lonely)
    assert FaceEncoderConfig(landmarks="file").landmarks == "file"


def test_the_feature_cache_runs_the_face_network_once_per_face(faces):
    from omnimm import encoders

    encoder = encoders.build({"name": "favchat/face", "stages": ["stage4"], "grid": 1, "feature_cache": 100}).eval()
    encoder.requires_grad_(False)
    calls = []
    original = encoder.backbone.forward_features
    encoder.backbone.forward_features = lambda x, wanted: calls.append(len(x)) or original(x, wanted)
    from omnimm.video import read_video

    clip = read_video(faces / "faces" / "clips" / "00002.mkv", num_frames=4)
    clip.extra["landmarks"] = np.load(faces / "faces" / "clips" / "00002.landmarks.npy")[clip.indices]
    inputs = encoder.preprocess.clip_pixels(clip)
    first = encoder(inputs)
    second = encoder(inputs)
    assert calls == [4] and torch.equal(first["stage4"], second["stage4"])  # the second pass came from the cache
    encoder.backbone.forward_features = original
    with torch.no_grad():
        uncached = encoders.build({"name": "favchat/face", "stages": ["stage4"], "grid": 1}).eval()(inputs)
    assert torch.allclose(first["stage4"], uncached["stage4"], atol=1e-5)


@requires_shared
def test_faces_command_through_the_demo_model(cli):
    result = cli("favchat", "faces", SHARED / "data" / "faces" / "obama.jpg", "--config", "favchat:inspect")
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[0].startswith("frame 0 t=0.00s box=")
        and lines[1] == f"1 face(s) in 1 frame(s) of {SHARED / 'data' / 'faces' / 'obama.jpg'}"
    )
    assert "face.stage3: [1, 1, 4, 512] from aligned crops" in result.stdout  # 1 clip, 1 frame, 2 x 2 tokens
    assert "connector (favchat/moe-adapter) -> face: [1, 13, 64]" in result.stdout  # 3 levels x 4 + the embedding


def test_demo_quick_run_prints_accuracy_per_question(cli, tmp_path):
    result = cli("demo", "favchat", "--quick", "--no-ablation", "--workdir", tmp_path / "demo")
    assert result.returncode == 0, result.output[-3000:]
    for kind in ("identity", "glasses", "start", "end", "blink", "turn"):
        assert kind in result.stdout
    assert "expert load on the held-out clips" in result.stdout and "time: data" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "demo" / "faces" / "train.jsonl").read_text().splitlines()]
    assert records[0]["attributes"]["emotion"][0]["emotion"] in ("neutral", "happy", "sadness", "surprise")
    assert (tmp_path / "demo" / "runs" / "favchat" / "eval" / "metrics.json").is_file()


def test_the_demo_intervals_are_wilson_intervals():
    from scipy.stats import binomtest

    from omnimm_plugins.favchat.cli import wilson_interval

    for successes, trials in [(35, 60), (0, 60), (60, 60), (7, 12)]:
        reference = binomtest(successes, trials).proportion_ci(method="wilson")
        ours = wilson_interval(successes / trials, trials)
        assert ours == pytest.approx((reference.low, reference.high), abs=1e-9)
