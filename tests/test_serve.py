"""`omnimm serve`: a real server process on 127.0.0.1, spoken to by the official `openai` client, the project's own
`openai/chat` backend and raw HTTP (httpx), with the valley demo's model (untrained, built as the demo builds it) and
one of its clips sent as a data URL."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from omnimm_plugins.valley.demo import save_untrained_model

from .conftest import OMNIMM, REPO

openai = pytest.importorskip("openai", reason="the official client is in the dev extra")
pytest.importorskip("fastapi", reason="omnimm serve needs the serve extra")

QUESTION = "what colour is the shape?"


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def client(self, **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=options.pop("api_key", "none"), **options)


def start_server(*args: object, wait: float = 120) -> Server:
    """`omnimm serve ... --port 0` in a subprocess; returns once it printed its address and /health answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIMM_")}
    process = subprocess.Popen(
        [str(OMNIMM), "serve", *map(str, args), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + wait
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if found:
            url = found.group(1)
            httpx.get(f"{url}/health", timeout=10).raise_for_status()
            return Server(url, process)
    process.kill()
    raise AssertionError(f"omnimm serve did not start: {''.join(seen)}")


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


def data_url(path: Path, mime: str = "video/x-matroska") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def video_message(clip: Path, question: str = QUESTION) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "video_url", "video_url": {"url": data_url(clip)}},
            {"type": "text", "text": question},
        ],
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    return save_untrained_model(tmp_path_factory.mktemp("valley-demo"))


@pytest.fixture(scope="module")
def server(demo) -> Iterator[Server]:
    folder, clip = demo
    running = start_server(folder, "--allow-files", clip.parent, "--batch-wait-ms", "300", "--max-body-mb", "1")
    yield running
    stop(running)


def test_the_official_client_gets_the_models_answer(server, demo):
    from omnimm.videollm.model import VideoLLM

    folder, clip = demo
    answer = server.client().chat.completions.create(model="valley", messages=[video_message(clip)], max_tokens=6)
    model = VideoLLM.from_pretrained(folder).eval()
    expected = model.answer(clip, QUESTION, max_new_tokens=6)  # the library's own path, in this process
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.usage.completion_tokens <= 6 and answer.usage.prompt_tokens > model.num_visual_tokens(8)
    assert [m.id for m in server.client().models.list().data] == ["valley"]


def test_streamed_deltas_add_up_to_the_whole_answer(server, demo):
    _, clip = demo
    client = server.client()
    whole = client.chat.completions.create(model="valley", messages=[video_message(clip)], max_tokens=8)
    chunks = list(
        client.chat.completions.create(model="valley", messages=[video_message(clip)], max_tokens=8, stream=True)
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1  # it really streamed, word by word
    assert "".join(deltas) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_continued_conversation_and_the_openai_chat_backend(server, demo):
    from omnimm.registry import llms

    _, clip = demo
    client = server.client()
    first = client.chat.completions.create(model="valley", messages=[video_message(clip)], max_tokens=4)
    turns = [video_message(clip), {"role": "assistant", "content": first.choices[0].message.content}]
    turns.append({"role": "user", "content": "and which way does it move?"})
    second = client.chat.completions.create(model="valley", messages=turns, max_tokens=4)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    backend = llms.build(
        {"name": "openai/chat", "base_url": f"{server.url}/v1", "model": "valley", "api_key_env": None}
    )
    reply = backend.chat([{"role": "user", "content": "describe the video."}], max_new_tokens=5)
    assert isinstance(reply, str) and reply


def test_a_file_inside_the_allowed_folder_is_read_and_one_outside_refused(server, demo, tmp_path):
    _, clip = demo
    inside = {"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(clip)}}, QUESTION]}
    inside["content"][1] = {"type": "text", "text": QUESTION}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "valley", "messages": [inside]}, timeout=60)
    assert reply.status_code == 200, reply.text
    outside = tmp_path / "secret.mkv"
    outside.write_bytes(clip.read_bytes())
    for url in (str(outside), f"file://{outside}", f"{clip.parent}/../../{outside.name}", "../" * 12 + "etc/passwd"):
        part = {"type": "video_url", "video_url": {"url": url}}
        body = {"model": "valley", "messages": [{"role": "user", "content": [part]}]}
        refused = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
        assert refused.status_code == 403, (url, refused.text)
        assert refused.json()["error"]["param"] == "messages[0].content[0].video_url.url"


def test_bad_requests_get_openai_shaped_errors_naming_the_field(server):
    client = server.client(max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["code"] == "model_not_found" and "'valley'" in unknown.value.body["message"]
    post = lambda body, **kw: httpx.post(f"{server.url}/v1/chat/completions", timeout=30, **kw)  # noqa: E731
    missing = post(None, json={"model": "valley", "messages": [{"role": "user"}]})
    assert missing.status_code == 400
    assert missing.json()["error"] == {
        "message": "messages[0].content: required field is missing",
        "type": "invalid_request_error",
        "param": "messages[0].content",
        "code": None,
    }
    bad_part = post(None, json={"model": "valley", "messages": [{"role": "user", "content": [{"type": "audio"}]}]})
    assert bad_part.status_code == 400 and bad_part.json()["error"]["param"] == "messages[0].content[0].type"
    not_json = post(None, content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
    remote = {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}
    fetched = post(None, json={"model": "valley", "messages": [{"role": "user", "content": [remote]}]})
    assert fetched.status_code == 400 and "data URL" in fetched.json()["error"]["message"]


def test_an_oversized_body_is_refused_with_413_declared_or_streamed(server):
    big = json.dumps({"model": "valley", "messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode()
    declared = httpx.post(f"{server.url}/v1/chat/completions", content=big, timeout=30)
    assert declared.status_code == 413 and "1 MiB" in declared.json()["error"]["message"]
    chunked = httpx.post(  # no Content-Length: counted as it arrives
        f"{server.url}/v1/chat/completions", content=(big[i : i + 65536] for i in range(0, len(big), 65536)), timeout=30
    )
    assert chunked.status_code == 413
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_concurrent_requests_are_answered_in_shared_batches(server, demo):
    _, clip = demo
    client = server.client()

    def ask(number: int) -> object:
        question = f"{QUESTION} ({number})"
        return client.chat.completions.create(model="valley", messages=[video_message(clip, question)], max_tokens=5)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert all(a.choices[0].message.content for a in answers)
    sizes = [a.model_extra["omnimm"]["batch_size"] for a in answers]
    assert max(sizes) > 1, sizes
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    count = float(re.search(r"^omnimm_batch_size_count (\S+)$", metrics, re.M).group(1))
    total = float(re.search(r"^omnimm_batch_size_sum (\S+)$", metrics, re.M).group(1))
    assert total > count  # some generate calls answered more than one request
    assert re.search(r'^omnimm_requests_total\{status="200"\} \d', metrics, re.M)


def test_a_full_queue_answers_503_and_a_key_is_required_when_set(demo):
    folder, clip = demo
    running = start_server(folder, "--max-batch", "1", "--max-queue", "1", "--api-key", "s3cret")
    try:
        assert httpx.get(f"{running.url}/v1/models", timeout=10).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            running.client(api_key="wrong", max_retries=0).models.list()
        client = running.client(api_key="s3cret", max_retries=0)

        def ask(number: int) -> str:
            try:
                message = video_message(clip, f"{QUESTION} {number}")
                client.chat.completions.create(model="valley", messages=[message], max_tokens=40)
            except openai.APIStatusError as error:
                return f"{error.status_code} {error.body.get('code')}"
            return "200"

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(ask, range(8)))
        assert "200" in outcomes and "503 queue_full" in outcomes, outcomes
        assert set(outcomes) <= {"200", "503 queue_full"}
    finally:
        stop(running)


def test_a_public_address_without_a_key_is_refused_in_one_line(demo, cli):
    folder, _ = demo
    result = cli("serve", folder, "--host", "0.0.0.0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is reachable from other machines: give --api-key KEY (or bind 127.0.0.1)"
    ]
    missing = cli("serve", folder.parent / "nothing-here")
    assert missing.returncode == 1 and "Traceback" not in missing.output and "nothing-here" in missing.stderr


def test_a_character_answers_in_role_with_its_scenes(tmp_path):
    from omnimm import encoders
    from omnimm_plugins.haruhi.character import character_from_script

    from .openai_server import openai_server

    script = tmp_path / "romeo.txt"
    script.write_text("ROMEO:\nBut, soft! what light through yonder window breaks?\n\nJULIET:\nAy me!\n")
    character = character_from_script(script, "ROMEO", window=3, language="en")
    character.save(tmp_path / "character")
    character.index(built_encoder=encoders.build({"name": "hf/sentence-encoder"}))
    with openai_server() as llm:
        config = tmp_path / "llm.yaml"
        config.write_text(f"name: openai/chat\nbase_url: {llm.url}\nmodel: tiny\napi_key_env: null\n")
        running = start_server("--character", tmp_path / "character", "--llm", config)
        try:
            client = running.client()
            assert [m.id for m in client.models.list().data] == ["ROMEO"]
            messages = [{"role": "user", "content": "What light is that?"}]
            answer = client.chat.completions.create(model="ROMEO", messages=messages)
            assert answer.choices[0].message.content.startswith("reply 1 to:")
            assert "window" in answer.model_extra["omnimm"]["scenes"][0]["text"]
            sent = llm.requests[-1]["messages"]
            assert "yonder window" in json.dumps(sent)  # the retrieved scene went into the LLM's prompt
            streamed = client.chat.completions.create(model="ROMEO", messages=messages, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).startswith("reply 2")
        finally:
            stop(running)


def test_generation_options_reach_the_model(server, demo):
    _, clip = demo
    client = server.client(max_retries=0)
    whole = client.chat.completions.create(model="valley", messages=[video_message(clip)], max_tokens=8)
    text = whole.choices[0].message.content
    words = text.split()
    assert len(words) >= 3, text
    stop = f" {words[2]}"
    expected = text[: text.index(stop)]
    cut = client.chat.completions.create(model="valley", messages=[video_message(clip)], max_tokens=8, stop=[stop])
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (expected, "stop")
    streamed = client.chat.completions.create(
        model="valley", messages=[video_message(clip)], max_tokens=8, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected

    def sampled(seed: int) -> str:
        reply = client.chat.completions.create(
            model="valley", messages=[video_message(clip)], max_tokens=8, temperature=1.5, top_p=0.95, seed=seed
        )
        return reply.choices[0].message.content

    assert sampled(3) == sampled(3) != text  # sampling took place, reproducibly for one seed
    for field, value in (("top_p", 3), ("temperature", -1), ("max_tokens", 0)):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="valley", messages=[video_message(clip)], **{field: value})
        assert refused.value.body["param"] == field, refused.value.body


def test_a_request_past_its_deadline_gets_504(demo):
    folder, clip = demo
    running = start_server(folder, "--timeout", "0.3")
    try:
        body = {"model": "valley", "messages": [video_message(clip)], "max_tokens": 400}
        late = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=60)
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "timeout" and "0.3 s" in late.json()["error"]["message"]
        streamed = httpx.post(f"{running.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-1])["error"]["code"] == "timeout"  # the stream ends with the error event
        assert httpx.get(f"{running.url}/health", timeout=10).json()["queue"] == 0
    finally:
        stop(running)
