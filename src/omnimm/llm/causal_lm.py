"""`hf/causal-lm`: a transformers causal LM and its tokenizer behind one small interface."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnimm.deps import require
from omnimm.llm.attention import resolve_attention
from omnimm.llm.chat import Message, check_messages
from omnimm.llm.configs import HFCausalLMConfig
from omnimm.llm.tokenizer import BYTES, byte_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFCausalLM(nn.Module):
    """A transformers `AutoModelForCausalLM` (`.model`) with its tokenizer (`.tokenizer`).

    Composite models talk to it through `embed`, `forward(inputs_embeds=...)`, `generate(inputs_embeds=...)`
    and `add_special_tokens`.
    """

    def __init__(self, config: HFCausalLMConfig) -> None:
        super().__init__()
        transformers = require("transformers", extra="video", purpose="llm 'hf/causal-lm'")
        self.config = config
        attention = resolve_attention(config.attention)
        dtype = _DTYPES[config.dtype]
        if config.tokenizer == BYTES:
            self.tokenizer = byte_tokenizer()
        else:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                config.tokenizer or config.path, **({"gguf_file": config.gguf_file} if config.gguf_file else {})
            )
        if config.path is not None and config.load_weights:
            extra = {"gguf_file": config.gguf_file} if config.gguf_file else {}
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                config.path, attn_implementation=attention, dtype=dtype, **extra
            )
        else:
            if config.path is not None:
                hf_config = transformers.AutoConfig.from_pretrained(config.path)
            else:
                options = dict(config.config)
                options.setdefault("vocab_size", len(self.tokenizer))  # an inline model fits its tokenizer
                hf_config = transformers.AutoConfig.for_model(options.pop("model_type"), **options)
            self.model = transformers.AutoModelForCausalLM.from_config(
                hf_config, attn_implementation=attention, dtype=dtype
            )
        rows = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > rows:
            raise ValueError(
                f"llm 'hf/causal-lm': the tokenizer has {len(self.tokenizer)} tokens but the model only {rows} "
                f"embeddings; raise vocab_size (or leave it out of an inline config to match the tokenizer)"
            )
        if self.tokenizer.pad_token is None:  # batching needs one; the eos token is the usual stand-in
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.attention = attention

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Add tokens the tokenizer lacks (resizing the embeddings) and return their ids."""
        missing = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_special_tokens(
                {"additional_special_tokens": missing}, replace_extra_special_tokens=False
            )
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        return [self.tokenizer.convert_tokens_to_ids(t) for t in tokens]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def embed_weight(self) -> torch.Tensor:
        """The input embedding matrix `[vocab, hidden]`."""
        return self.model.get_input_embeddings().weight

    def max_positions(self) -> int | None:
        """The longest sequence the model's position encoding covers (`max_position_embeddings`), if it says."""
        value = getattr(self._base_model().config, "max_position_embeddings", None)
        return int(value) if value else None

    def forward(self, **kwargs: Any) -> Any:
        return self.model(**kwargs)

    def generate(self, **kwargs: Any) -> torch.Tensor:
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return self.model.generate(**kwargs)

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's tokenizer, without special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, messages: Sequence[Message]) -> tuple[str, str | None]:
        """The text `chat()` feeds the model for `messages`, and the stop string (None: the eos token)."""
        messages = check_messages(messages)
        if self.config.chat_template is None and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            return text, None
        from omnimm.registry import templates

        template = templates.get(self.config.chat_template or "omnimm/chatml")
        turns = [(m["role"], m["content"]) for m in messages]
        return template.prompt(turns), template.stop.strip() or None

    @torch.no_grad()
    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> str:
        """The assistant's reply to `messages` (greedy when `temperature` is 0)."""
        text, stop = self.chat_prompt(messages)
        device = next(self.model.parameters()).device
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            options.update(temperature=temperature, top_p=top_p)
            if seed is not None:
                torch.manual_seed(seed)
        else:  # silence warnings about sampling options in the model's generation config
            options.update(temperature=None, top_p=None, top_k=None)
        if stop:
            options.update(stop_strings=[stop], tokenizer=self.tokenizer)
        output = self.generate(**inputs, **options)
        reply = self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        if stop and stop in reply:
            reply = reply[: reply.index(stop)]
        return reply.strip()

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write a folder `hf/causal-lm` (and transformers) can load: config, safetensors weights, tokenizer.

        Works for models loaded from GGUF too (their weights are dequantised; transformers itself refuses to save
        them): the config is written without the GGUF quantisation record.
        """
        safetensors_torch = require("safetensors.torch", extra="torch", purpose="saving an LLM")
        target = self.save_architecture(folder)
        safetensors_torch.save_model(self._base_model(), str(target / "model.safetensors"), metadata={"format": "pt"})
        return target

    def _base_model(self) -> Any:
        return getattr(self.model, "get_base_model", lambda: self.model)()

    def save_architecture(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model's config and the tokenizer (no weights) to `folder`; returns it."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self._base_model().config)
        if hasattr(config, "quantization_config"):  # a GGUF load leaves this behind; the weights are dense now
            del config.quantization_config
        config.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        return target
