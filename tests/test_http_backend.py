"""`openai/chat` against real misbehaving servers on loopback: each failure is one BackendError naming the URL."""

from __future__ import annotations

import pytest

from omnimm import BackendError, ConfigError, llms

from .openai_server import (
    Drip,
    chunked,
    closed_port,
    hang_up,
    openai_server,
    oversized,
    raw_socket_server,
    redirect,
    reset,
)

pytestmark = pytest.mark.timeout(60)

ASK = [{"role": "user", "content": "hi"}]


def backend(url: str, **options):
    return llms.build({"name": "openai/chat", "base_url": url, "model": "m", "max_retries": 0, "timeout": 5, **options})


def failure(llm) -> str:
    with pytest.raises(BackendError) as error:
        llm.chat(ASK)
    text = str(error.value)
    assert text.startswith(llm.url) and "\n" not in text
    return text


def test_connection_refused_names_the_url():
    text = failure(backend(f"http://127.0.0.1:{closed_port()}/v1"))
    assert "cannot reach the server" in text and "refused" in text


def test_http_500_is_retried_then_reported_with_its_status():
    with openai_server() as server:
        server.fail_with = [500, 500]
        text = failure(backend(server.url, max_retries=1))
        assert "HTTP 500" in text and "overloaded" in text and "2 attempt(s)" in text
        assert len(server.requests) == 2


def test_a_body_that_is_not_json():
    with openai_server() as server:
        server.garbage = True
        assert "not JSON" in failure(backend(server.url))


def test_a_reply_that_is_not_http():
    with raw_socket_server(b"SSH-2.0-OpenSSH_9.6\r\n") as url:
        text = failure(backend(url))
    assert "not HTTP" in text and "SSH-2.0" in text


@pytest.mark.parametrize(
    "pieces",
    [(b"40\r\n", b'{"choices": '), (b"zz\r\n",)],
    ids=["closed-mid-chunk", "garbled-chunk-size"],
)
def test_a_broken_chunked_body_is_cut_short_and_retried(pieces: tuple[bytes, ...]):
    with openai_server() as server:
        server.then = [chunked(*pieces), chunked(*pieces)]
        text = failure(backend(server.url, max_retries=1))
        assert "the answer was cut short" in text and "2 attempt(s)" in text
        assert len(server.requests) == 2


@pytest.mark.parametrize("behaviour", [hang_up, reset], ids=["hang-up", "reset"])
def test_a_connection_dropped_before_the_answer(behaviour):
    with openai_server() as server:
        server.then = [behaviour]
        text = failure(backend(server.url))
    assert "closed the connection" in text or "reset" in text


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_server_dripping_bytes_is_cut_off_at_the_timeout(where: str):
    drip = Drip(interval=0.4, where=where)  # each byte well within the timeout; the whole answer takes ~20 s
    with openai_server() as server:
        server.then = [drip]
        text = failure(backend(server.url, timeout=1))
    assert "no complete answer within the 1 s timeout" in text
    assert drip.sent < drip.total  # the client hung up before the server was done


def test_a_server_that_never_answers_times_out():
    with openai_server() as server:
        server.then = [Drip(interval=30, where="head")]
        assert "within the 1 s timeout" in failure(backend(server.url, timeout=1))


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_to_another_port_is_refused_and_the_key_stays_home(monkeypatch, status: int):
    monkeypatch.setenv("OMNIMM_TEST_API_KEY", "sk-secret")
    with openai_server() as elsewhere, openai_server() as server:
        target = elsewhere.url + "/chat/completions"
        server.then = [redirect(target, status)]
        text = failure(backend(server.url, api_key_env="OMNIMM_TEST_API_KEY"))
        assert server.headers[0]["Authorization"] == "Bearer sk-secret"  # the configured server has it
        assert elsewhere.seen == []  # nothing, and no key, reached the other port
    assert target in text and f"HTTP {status}" in text and "another host" in text


def test_a_redirect_on_the_same_server_is_refused_too():
    with openai_server() as server:
        server.then = [redirect("/v2/chat/completions", 308)]
        text = failure(backend(server.url))
        assert server.url.replace("/v1", "/v2/chat/completions") in text and "base_url" in text
        assert server.seen == ["POST /v1/chat/completions"]


def test_an_oversized_answer_is_not_read_whole():
    with openai_server() as server:
        server.then = [oversized(20 * 2**20)]
        assert "larger than 16 MiB" in failure(backend(server.url))


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "HOME", "GITHUB_TOKEN", "openai_api_key"])
def test_api_key_env_must_name_an_api_key_variable(name: str):
    with pytest.raises(ConfigError, match=r"api_key_env: expected .*API_KEY"):
        llms.validate({"name": "openai/chat", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": name})
    for good in ("OPENAI_API_KEY", "VLLM_API_KEY", "API_KEY"):
        llms.validate({"name": "openai/chat", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": good})


def test_streamed_answers_are_refused_in_the_config():
    with pytest.raises(ConfigError, match=r"extra_body\.stream"):
        llms.validate({"name": "openai/chat", "base_url": "http://x/v1", "model": "m", "extra_body": {"stream": True}})


def test_https_to_a_server_without_tls_is_one_error_and_not_retried():
    with raw_socket_server(b"HTTP/1.1 400 Bad Request\r\n\r\n") as url:
        text = failure(backend(url.replace("http://", "https://"), max_retries=2))
    assert "TLS failed" in text and "attempt" not in text
