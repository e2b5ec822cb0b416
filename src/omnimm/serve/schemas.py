"""The chat-completions request body and errors in OpenAI's shape (`{"error": {message, type, param, code}}`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omnimm.errors import OmnimmError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    503: "server_overloaded",
    504: "timeout",
}


class APIError(OmnimmError, ValueError):
    """A request the server refuses: the HTTP status, one line saying why, and the request field at fault."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class Message(BaseModel):
    """One chat message; `content` is checked by `media.read_content` (text, or a list of content parts)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: Any = Field(...)


class ChatRequest(BaseModel):
    """What `/v1/chat/completions` reads. Unknown fields (`user`, `frequency_penalty`, ...) are accepted and ignored,
    as OpenAI clients send them."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(..., min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    """Unset or 0: greedy decoding (the library's models are small; OpenAI's default of 1 would sample)."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop: at most 4 stop sequences", param="stop")
        return tuple(s for s in stops if s)


def parse_request(data: Any) -> ChatRequest:
    """Validate a decoded JSON body; the first problem becomes a 400 naming its field (`messages[0].content`)."""
    from omnimm.configbase import issues_from_validation_error

    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(data).__name__}")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as error:
        issue = issues_from_validation_error(error)[0]
        raise APIError(400, f"{issue.path}: {issue.message}", param=issue.path) from None
