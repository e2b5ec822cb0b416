"""Config of the `hf/causal-lm` backbone (pydantic only)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from omnimm.config import ComponentConfig, field_error

Attention = Literal["auto", "sdpa", "eager", "xformers"]


class HFCausalLMConfig(ComponentConfig):
    """Any transformers causal LM with its tokenizer: from a local folder, or from an inline config (tiny models)."""

    path: str | None = None
    """A local folder with `config.json`, weights and tokenizer files (what `save_pretrained` writes)."""
    config: dict[str, Any] = Field(default_factory=dict)
    """An inline transformers config for a randomly initialised model, with `model_type` (e.g. `llama`) and its
    options; used when `path` is not set."""
    tokenizer: str | None = None
    """A local tokenizer folder; defaults to `path`. Required with an inline `config`; `bytes` builds a byte-level
    tokenizer in code (no files: for tiny test models)."""
    gguf_file: str | None = None
    """A GGUF file inside `path` to load (dequantised) instead of safetensors weights; needs the `gguf` package."""
    load_weights: bool = True
    """`false` builds the architecture of `path` with random weights (used before loading saved weights)."""
    attention: Attention = "auto"
    """Attention kernel: `auto` picks xformers on CUDA when installed, else torch SDPA; `sdpa`, `eager` and
    `xformers` force one (xformers falls back to SDPA for tensors on the CPU, where it has no kernels)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype after loading."""
    chat_template: str | None = None
    """For `chat()`: a name in the templates registry (e.g. `omnimm/chatml`). Unset: the tokenizer's own chat
    template when it has one, else `omnimm/chatml`."""

    @model_validator(mode="after")
    def _source(self) -> HFCausalLMConfig:
        if self.path is None and not self.config:
            raise field_error("path", "set a local model folder, or an inline `config` with a `model_type`")
        if self.path is None:
            if "model_type" not in self.config:
                raise field_error("config.model_type", "an inline config needs a model_type (e.g. llama)")
            if self.tokenizer is None:
                raise field_error("tokenizer", "an inline config needs a tokenizer folder")
        if self.gguf_file is not None and self.path is None:
            raise field_error("gguf_file", "needs `path`: the folder that holds the GGUF file")
        return self

    def without_weights(self) -> HFCausalLMConfig:
        return self.model_copy(update={"load_weights": False})


class OpenAIChatConfig(ComponentConfig):
    """A chat model behind an OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server, ollama, a hosted API)."""

    base_url: str
    """The API root, e.g. `http://127.0.0.1:8000/v1` (requests go to `{base_url}/chat/completions`)."""
    model: str
    """The model name the server expects."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key, sent as a Bearer token to `base_url` only (redirects are not
    followed). Its name must end in `API_KEY` (`OPENAI_API_KEY`, `VLLM_API_KEY`, ...), so a config cannot hand
    another secret (`AWS_SECRET_ACCESS_KEY`, `GITHUB_TOKEN`) to a server; `null` sends no key. Keys never go into
    configs."""
    timeout: float = Field(120.0, gt=0)
    """Seconds one request may take in all: connecting, sending and reading the whole answer (not per socket read,
    so a server that sends a byte now and then is cut off too). A call makes at most `1 + max_retries` requests."""
    max_retries: int = Field(2, ge=0)
    """Retries after a connection error, a reset, a cut-off answer, a timeout, a 408, 429 or 5xx answer, with
    exponential back-off (0.25 s, 0.5 s, ... at most 4 s)."""
    tokenizer: str | None = None
    """A local tokenizer folder matching the served model, for exact token counts. Unset: counts are estimated as
    one token per 4 characters (prompt budgets become approximate)."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra request fields passed through unchanged (e.g. `{"top_k": 20}` for vLLM). Not `stream`: answers are
    read as one JSON document."""

    @model_validator(mode="after")
    def _url(self) -> OpenAIChatConfig:
        if not self.base_url.startswith(("http://", "https://")):
            raise field_error("base_url", f"expected an http:// or https:// URL, got {self.base_url!r}")
        if self.api_key_env is not None and not API_KEY_ENV.fullmatch(self.api_key_env):
            raise field_error(
                "api_key_env",
                f"expected the name of an API-key variable ending in API_KEY (e.g. OPENAI_API_KEY), got "
                f"{self.api_key_env!r}: its value is sent to base_url",
            )
        if self.extra_body.get("stream"):
            raise field_error("extra_body.stream", "streamed answers are not supported (one JSON answer is read)")
        return self


API_KEY_ENV = re.compile(r"(?:[A-Z][A-Z0-9_]*_)?API_KEY")
"""Names `api_key_env` may take: a variable meant to hold an API key, not any secret of the environment."""
