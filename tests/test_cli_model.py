"""The user's path with a video LLM on the command line: build on the meta device, inspect, ask, eval, and one clear
line for every kind of bad input."""

from __future__ import annotations

import json

import pytest
import torch

from omnimm import models

from .conftest import video_llm_config, write_test_video


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A few of the valley demo's videos, with the demo's tokenizer."""
    from omnimm.llm.templates import LLAVA_V0
    from omnimm.llm.tokenizer import train_word_tokenizer
    from omnimm_plugins.valley.shapes import corpus, generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root / "shapes", train=2, test=3, frames=4, size=32)
    texts = [LLAVA_V0.prompt([("user", "<video>\nquestion")]), *corpus()]
    train_word_tokenizer(texts, extra_tokens=["<video>"]).save_pretrained(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def saved_model(shapes):
    torch.manual_seed(0)
    model = models.build(video_llm_config(shapes / "tokenizer"))
    return model.save_pretrained(shapes / "model")


def test_validate_build_catches_configs_that_cannot_be_built(cli, tmp_path, word_tokenizer):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": video_llm_config(word_tokenizer)}))
    result = cli("config", "validate", "--build", good)
    assert result.returncode == 0 and result.stdout.strip().endswith("and builds"), result.output
    cases = {
        "unknown-type.json": ({"model_type": "llamma", "hidden_size": 48}, "model.llm cannot be built: hf/causal-lm:"),
        "missing-path.json": (None, "model.llm cannot be built: hf/causal-lm:"),
    }
    for name, (llm_config, expected) in cases.items():
        config = video_llm_config(word_tokenizer)
        if llm_config is None:
            config["llm"] = {"name": "hf/causal-lm", "path": str(tmp_path / "no-such-model")}
        else:
            config["llm"]["config"] = llm_config
        (tmp_path / name).write_text(json.dumps({"model": config}))
        result = cli("config", "validate", tmp_path / name)
        assert result.returncode == 0, result.output  # it validates...
        result = cli("config", "validate", "--build", tmp_path / name)
        assert result.returncode == 1 and "Traceback" not in result.output  # ...but cannot be built
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / name}: validates, but {expected}"), lines


def test_inspect_takes_a_run_file_and_marks_repeated_frames(cli, tmp_path, word_tokenizer):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"model": video_llm_config(word_tokenizer)}))
    short = write_test_video(tmp_path / "short.mkv", frames=2)
    result = cli("video", "inspect", short, "--config", run)
    assert result.returncode == 0, result.output
    assert result.stdout.count("repeats the frame before") == 2
    assert "warning: 2 of 4 sampled frames repeat the one before" in result.stderr
    assert "vision.patches" in result.stdout and "tokens into the LLM: 20 visual" in result.stdout


def test_build_prints_the_token_groups(cli, tmp_path, word_tokenizer):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"model": video_llm_config(word_tokenizer)}))
    result = cli("build", run)
    assert result.returncode == 0, result.output
    assert "visual tokens for a clip of 4 frames" in result.stdout
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines() if line.count("│") > 4]
    tokens = {row[0]: row[2] for row in cells}
    assert tokens["vision.cls"] == "1" and tokens["vision.patches"] == "16"
    assert tokens["video"] == "20" and tokens["into the LLM"] == "20"  # 16 pooled patches + 4 temporal tokens


def test_ask_streams_a_reply_from_a_saved_model(cli, saved_model, shapes):
    clip = next((shapes / "shapes" / "clips").glob("*.mkv"))
    result = cli("ask", saved_model, clip, "what colour are the shapes?", "--max-new-tokens", "3")
    assert result.returncode == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1 and "###" not in result.stdout


def test_ask_in_a_chat_keeps_the_conversation(saved_model, shapes):
    import subprocess

    from .conftest import OMNIMM

    clip = next((shapes / "shapes" / "clips").glob("*.mkv"))
    done = subprocess.run(
        [str(OMNIMM), "ask", str(saved_model), str(clip), "--chat", "--max-new-tokens", "2"],
        input="what colour are the shapes?\nhow many shapes are there?\n\n",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("model: ") == 2  # two answers, then the empty line ends the chat


def test_eval_writes_predictions_and_metrics(cli, saved_model, shapes, tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text(f"name: valley/shapes\nroot: {shapes / 'shapes'}\nsplit: test\nfollowups: false\n")
    result = cli(
        "eval",
        saved_model,
        "--data",
        data,
        "--evaluator",
        "omnimm/choice-accuracy",
        "-o",
        tmp_path / "e",
        "--max-new-tokens",
        "3",
        "--no-progress",
    )
    assert result.returncode == 0, result.output
    lines = (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 4  # every question about every test clip
    first = json.loads(lines[0])
    assert set(first) >= {"question", "reply", "reference", "parsed", "meta"}
    assert first["parsed"]["omnimm/choice-accuracy"] in [*first["meta"]["choices"], "<unparsed>"]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["omnimm/choice-accuracy"]
    assert metrics["n"] == 12 and set(metrics["groups"]) == {"colour", "shape", "count", "direction"}
    parsed = sum(json.loads(line)["parsed"]["omnimm/choice-accuracy"] != "<unparsed>" for line in lines)
    assert metrics["unparsed"] == 12 - parsed
    assert "omnimm/choice-accuracy" in result.stdout and "12 answers" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ask", "{tmp}/nothing", "{tmp}/clip.mkv", "what?"], "is neither a saved model"),
        (["ask", "{model}", "{tmp}/missing.mkv", "what?"], "missing.mkv: file not found"),
        (["eval", "{model}", "--data", "{tmp}/nope.yaml", "-e", "omnimm/choice-accuracy"], "config file not found"),
        (["eval", "{model}", "--data", "{tmp}/latin1.json", "-e", "omnimm/choice-accuracy"], "not UTF-8"),
        (["eval", "{model}", "--data", "{tmp}/list.json", "-e", "omnimm/choice-acuracy"], "did you mean"),
        (["train", "{tmp}/latin1.json"], "latin1.json"),
        (["eval", "{model}", "--data", "{tmp}/list.json", "-e", "simct/gate"], "does not score a model's answers"),
        (["eval", "{model}", "--data", "{tmp}/object.json", "-e", "omnimm/choice-accuracy"], "a mapping without"),
        (["ask", "{tmp}/no-llm", "{tmp}/clip.mkv", "what?"], "not a complete saved model"),
        (["ask", "{tmp}/bad-weights", "{tmp}/clip.mkv", "what?"], "not a readable safetensors file"),
        (["ask", "{tmp}/not-video", "{tmp}/clip.mkv", "what?"], "is not a video LLM"),
        # inputs are checked before the model is read: a bad video or data file is named even beside a bad model
        (["ask", "{tmp}/bad-weights", "{tmp}/missing.mkv", "what?"], "missing.mkv: file not found"),
        (
            ["eval", "{tmp}/bad-weights", "--data", "{tmp}/nope.yaml", "-e", "omnimm/choice-accuracy"],
            "config file not found",
        ),
    ],
)
def test_bad_input_gives_one_line(cli, saved_model, tmp_path, args, expected):
    import shutil

    write_test_video(tmp_path / "clip.mkv", frames=4)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "object.json").write_text('{"records": []}')
    shutil.copytree(saved_model, tmp_path / "no-llm")
    shutil.rmtree(tmp_path / "no-llm" / "llm")
    shutil.copytree(saved_model, tmp_path / "bad-weights")
    weights = tmp_path / "bad-weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a save cut short
    (tmp_path / "not-video").mkdir()
    (tmp_path / "not-video" / "config.json").write_text(
        json.dumps(
            {"omnimm": {"name": "omnimm/multimodal-encoder", "encoders": {"image": {"name": "omnimm/tiny-vit"}}}}
        )
    )
    (tmp_path / "latin1.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    (tmp_path / "list.json").write_text("[]")
    filled = [a.format(tmp=tmp_path, model=saved_model) for a in args]
    result = cli(*filled)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output and len(lines) <= 3, result.output
    assert expected in result.stderr, result.stderr
    debug = cli(*filled, env={"OMNIMM_DEBUG": "1"})
    assert "Traceback" in debug.stderr or debug.returncode == 2  # the traceback is there when asked for
