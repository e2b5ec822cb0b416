"""`openai/chat`: any server that speaks the OpenAI chat-completions protocol (vLLM, llama.cpp, ollama, hosted APIs).

Standard library only (urllib): nothing to install for the HTTP part. What a call guarantees:

- the API key is read from the environment variable named by `api_key_env` (which must end in `API_KEY`) and sent
  only to `base_url`: redirects are never followed, so neither the key nor the conversation goes anywhere else;
- `timeout` bounds a whole request (connect, send, status line, headers, body), not each socket read: a server
  dripping a byte at a time is cut off at the deadline;
- every failure (refused, reset, hang-up, not HTTP, cut-off body, bad status, not JSON) is one `BackendError`
  naming the URL and the reason, never a traceback from `http.client`.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from omnimm.errors import BackendError
from omnimm.llm.chat import Message, check_messages
from omnimm.llm.configs import OpenAIChatConfig

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
CHARS_PER_TOKEN = 4
MAX_ANSWER_BYTES = 16 * 2**20
"""A chat answer is kilobytes; anything larger is not one, and is not held in memory."""


class OpenAIChat:
    """Chat with a served model; `count_tokens` uses a local tokenizer when configured, else an estimate."""

    def __init__(self, config: OpenAIChatConfig) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._tokenizer: Any = None
        self._warned_estimate = False
        if config.tokenizer is not None:
            from omnimm.deps import require

            transformers = require("transformers", extra="haruhi", purpose="counting tokens for 'openai/chat'")
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(config.tokenizer)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        if not self._warned_estimate:
            log.warning("openai/chat: no `tokenizer` configured; token counts are estimated (4 characters/token)")
            self._warned_estimate = True
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [dict(m) for m in check_messages(messages)],
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            **({"seed": seed} if seed is not None else {}),
            **self.config.extra_body,
        }
        answer = self._post(body)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(
                f"{self.url}: the answer has no choices[0].message.content: {_preview(answer)}"
            ) from None
        if not isinstance(content, str):
            raise BackendError(f"{self.url}: choices[0].message.content is {type(content).__name__}, not text")
        return content.strip()

    # -- transport ------------------------------------------------------------------------------------------------

    def _post(self, body: dict[str, Any]) -> Any:
        data = json.dumps(body).encode("utf-8")
        attempt = 1
        while True:
            try:
                return _decode(self.url, self._attempt(data))
            except _Retryable as failure:
                if attempt > self.config.max_retries:
                    raise BackendError(f"{self.url}: {failure} (gave up after {attempt} attempt(s))") from None
                log.warning("%s: %s; retrying", self.url, failure)
            time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
            attempt += 1

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _attempt(self, data: bytes) -> bytes:
        """One request under one deadline: the raw answer, or `_Retryable` / `BackendError`."""
        request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
        failure: Exception | None = None
        timed_out = False  # a socket timeout and the deadline read the same: the request took too long
        with _Deadline(self.config.timeout) as deadline:
            try:
                raw = _read_answer(self.url, _opener(deadline).open(request, timeout=self.config.timeout))
            except urllib.error.HTTPError as error:
                failure = self._status_failure(error, "Authorization" in request.headers)
            except urllib.error.URLError as error:
                timed_out = isinstance(error.reason, TimeoutError)
                failure = self._failure(*_unreachable(error.reason))
            except (http.client.HTTPException, OSError, ValueError) as error:
                timed_out = isinstance(error, TimeoutError)
                failure = self._failure(*_transport_failure(error))
        if deadline.expired or timed_out:
            raise _Retryable(f"no complete answer within the {self.config.timeout:g} s timeout")
        if failure is not None:
            raise failure
        return raw

    def _failure(self, reason: str, transient: bool) -> Exception:
        return _Retryable(reason) if transient else BackendError(f"{self.url}: {reason}")

    def _status_failure(self, error: urllib.error.HTTPError, with_key: bool) -> Exception:
        detail = _error_detail(error)
        if 300 <= error.code < 400:
            return BackendError(self._redirect_refusal(error, with_key))
        return self._failure(f"HTTP {error.code} {error.reason}: {detail}", error.code in _RETRY_STATUS)

    def _redirect_refusal(self, error: urllib.error.HTTPError, with_key: bool) -> str:
        location = error.headers.get("Location")
        if not location:
            return f"{self.url}: HTTP {error.code} redirect without a Location header"
        target = urllib.parse.urljoin(self.url, location)
        where = "another host" if _origin(target) != _origin(self.url) else "the same host"
        key = ", which would carry the API key" if with_key and where == "another host" else ""
        return (
            f"{self.url}: HTTP {error.code} redirect to {target} ({where}{key}) not followed: "
            "set base_url to the address that answers"
        )


class _Retryable(Exception):
    """A failure worth another attempt (connection trouble, a stall, 429/5xx); its text says what happened."""


def _decode(url: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise BackendError(f"{url}: the answer is not JSON: {raw[:200]!r}") from None


def _read_answer(url: str, response: Any) -> bytes:
    with response:
        raw = response.read(MAX_ANSWER_BYTES + 1)
        missing = getattr(response, "length", None)  # bytes Content-Length still promises (read(n) stops at EOF)
    if len(raw) > MAX_ANSWER_BYTES:
        raise BackendError(f"{url}: the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB; not a chat answer")
    if missing:
        raise http.client.IncompleteRead(raw, missing)
    return raw


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The start of an error answer's body, on one line (a broken body leaves it empty)."""
    try:
        with error:
            text = error.read(4096).decode("utf-8", "replace")
    except (http.client.HTTPException, OSError, ValueError):
        text = ""
    return " ".join(text.split())[:300]


def _unreachable(reason: Any) -> tuple[str, bool]:
    """Why connecting failed, and whether another attempt may help (a TLS mismatch does not heal)."""
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({reason})", False
    return f"cannot reach the server ({reason})", True


def _transport_failure(error: BaseException) -> tuple[str, bool]:
    """What went wrong between connecting and the last byte, and whether another attempt may help."""
    if isinstance(error, http.client.RemoteDisconnected):
        return "the server closed the connection without answering", True
    if isinstance(error, http.client.BadStatusLine):
        return f"the server's answer is not HTTP (it began {str(error.line)[:60]!r})", False
    if isinstance(error, http.client.IncompleteRead):
        more = f", {error.expected} more expected" if error.expected is not None else ""
        return f"the answer was cut short ({len(error.partial)} bytes read{more})", True
    if isinstance(error, (http.client.HTTPException, ValueError)):
        return f"malformed HTTP answer ({type(error).__name__}: {error})", False
    if isinstance(error, ConnectionResetError):
        return "the connection was reset by the server", True
    return f"the connection failed ({type(error).__name__}: {error})", True


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _preview(answer: Any) -> str:
    text = json.dumps(answer) if not isinstance(answer, str) else answer
    return text[:200]


# -- deadline and redirects -----------------------------------------------------------------------------------------


class _Deadline:
    """Shuts the sockets of one request down when its time is up, whatever read is blocked: a socket timeout only
    bounds each read, so a server sending a byte now and then would otherwise hold a call indefinitely."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            self._sockets.clear()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shut(sock)
            else:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:  # the plain socket call: on a TLS socket it wakes the blocked read without touching the TLS state
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watched:
    """Registers its socket with the request's deadline once connected."""

    sock: Any

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._deadline.watch(self.sock)


class _WatchedHTTP(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_WatchedHTTP, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_WatchedHTTPS, deadline=self._deadline), req, context=self._context)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect comes back as its HTTPError: urllib would re-send the Authorization header to any host (and turn
    the POST into a GET)."""

    def redirect_request(self, *args: Any) -> None:
        return None


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment still apply) with watched connections and no redirects."""
    return urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), _NoRedirects())
