"""`omnimm/video-llm`: frames -> encoders -> fuser -> adapter/projector -> visual tokens spliced into a causal LM."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnimm.deps import require
from omnimm.registry import adapters, encoders, fusers, llms, models, templates
from omnimm.videollm.configs import VideoLLMConfig
from omnimm.videollm.processor import IGNORE_INDEX, VideoLLMProcessor

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LLM_FOLDER = "llm"


class VideoLLM(nn.Module):
    """A video (or image) LLM composed from registered parts.

    `forward(input_ids, attention_mask, pixel_values, labels)` returns `{"loss", "logits"}`; `generate` and
    `answer` produce text; `save_pretrained` / `from_pretrained` store a JSON config and safetensors weights.
    """

    accepts_loss_kwargs = True  # HF Trainer passes num_items_in_batch: exact token-mean loss across devices

    def __init__(self, config: VideoLLMConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({key: encoders.build(cfg) for key, cfg in config.encoders.items()})
        widths = [int(e.out_dim) for e in self.encoders.values()]
        tokens = [int(e.num_patches) + 1 for e in self.encoders.values()]
        self.fuser = fusers.build(config.fuser, in_dims=widths) if config.fuser is not None else None
        width = int(self.fuser.out_dim) if self.fuser is not None else widths[0]
        self.tokens_per_frame = self.fuser.tokens_out(tokens) if self.fuser is not None else tokens[0]
        self.standardizer = FeatureStandardizer(self.tokens_per_frame, width) if config.standardize else None
        self.llm = llms.build(config.llm)
        hidden = self.llm.hidden_size
        patches = self.tokens_per_frame - 1
        self.projector = adapters.build(config.projector, in_dim=width, out_dim=hidden)
        pooled_width = hidden if config.project_first else width  # Valley projects first, then pools
        self.adapter = None
        if config.adapter is not None:
            self.adapter = adapters.build(config.adapter, dim=pooled_width, num_patches=patches)
        self.visual_token_id = self.llm.add_special_tokens([config.visual_token])[0]
        self.template = templates.get(config.template)
        self.processor = VideoLLMProcessor(
            tokenizer=self.llm.tokenizer,
            template=self.template,
            visual_token=config.visual_token,
            visual_token_id=self.visual_token_id,
            transforms={key: encoder.preprocess for key, encoder in self.encoders.items()},
            sampling=config.frames,
            tokens_for_frames=self.num_visual_tokens,
        )
        self.requires_grad_(True)
        parts = self.parts()
        for pattern in config.freeze:
            for name in fnmatch.filter(parts, pattern):
                parts[name].requires_grad_(False)

    # -- structure --------------------------------------------------------------------------------------------------

    def parts(self) -> dict[str, nn.Module]:
        """Named parts, as `freeze` and training stages name them."""
        found: dict[str, nn.Module] = {"encoders": self.encoders}
        found.update({f"encoders.{key}": module for key, module in self.encoders.items()})
        for name in ("fuser", "adapter"):
            module = getattr(self, name)
            if module is not None:
                found[name] = module
        found["projector"] = self.projector
        found["llm"] = self.llm
        return found

    def num_visual_tokens(self, frames: int) -> int:
        """How many positions the visual input of `frames` frames takes in the LLM's sequence."""
        if self.adapter is None:
            return frames * self.tokens_per_frame
        return int(self.adapter.num_tokens(frames, self.tokens_per_frame - 1))

    # -- vision -----------------------------------------------------------------------------------------------------

    def encode_frames(self, pixel_values: Mapping[str, Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """Per sample, the fused frame tokens `[T_i, 1+N, D]`; all frames of the batch go through each encoder at
        once."""
        per_encoder = []
        for key, encoder in self.encoders.items():
            clips = pixel_values[key]
            lengths = [len(c) for c in clips]
            frames = torch.cat(list(clips)).to(self._device(), self._vision_dtype(encoder))
            per_encoder.append(encoder(frames).split(lengths))
        samples = (
            list(per_encoder[0])
            if self.fuser is None
            else [self.fuser(list(s)) for s in zip(*per_encoder, strict=True)]
        )
        return [self.standardizer(tokens) for tokens in samples] if self.standardizer is not None else samples

    def visual_features(self, pixel_values: Mapping[str, Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """Per sample, the visual tokens in the LLM's width: `[K_i, hidden]`."""
        samples = self.encode_frames(pixel_values)
        # Samples with the same number of frames pool together; a batch sampled with num_frames is one group.
        groups: dict[int, list[int]] = {}
        for index, tokens in enumerate(samples):
            groups.setdefault(len(tokens), []).append(index)
        outputs: dict[int, torch.Tensor] = {}
        for indices in groups.values():
            stacked = torch.stack([samples[i] for i in indices])  # [B, T, 1+N, D]
            pooled = self._pool_and_project(stacked)
            outputs.update(zip(indices, pooled, strict=True))
        return [outputs[i] for i in range(len(samples))]

    @torch.no_grad()
    def trace(self, pixel_values: Mapping[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
        """Shapes at each stage for one clip (`{key: [T, 3, S, S]}`), for inspection."""
        steps: list[tuple[str, tuple[int, ...]]] = []
        per_encoder = []
        for key, encoder in self.encoders.items():
            steps.append((f"pixel_values[{key}]", tuple(pixel_values[key].shape)))
            tokens = encoder(pixel_values[key].to(self._device(), self._vision_dtype(encoder)))
            steps.append((f"encoders.{key} ({encoder.config.name})", tuple(tokens.shape)))
            per_encoder.append(tokens)
        tokens = self.fuser(per_encoder) if self.fuser is not None else per_encoder[0]
        if self.fuser is not None:
            steps.append((f"fuser ({self.config.fuser.name})", tuple(tokens.shape)))
        if self.standardizer is not None:
            tokens = self.standardizer(tokens)
            steps.append(("standardize", tuple(tokens.shape)))
        tokens = tokens.unsqueeze(0)
        stages = [("projector", self.projector), ("adapter", self.adapter)]
        for name, module in stages if self.config.project_first else reversed(stages):
            if module is None:
                tokens = tokens.reshape(1, -1, tokens.shape[-1])
                steps.append((f"{name} (none: all frame tokens)", tuple(tokens.shape[1:])))
                continue
            tokens = module(tokens)
            steps.append((f"{name} ({module.config.name})", tuple(tokens.shape[1:])))
        return steps

    def _pool_and_project(self, tokens: torch.Tensor) -> torch.Tensor:
        batch = tokens.shape[0]
        if self.config.project_first:
            tokens = self.projector(tokens)
            return self.adapter(tokens) if self.adapter is not None else tokens.reshape(batch, -1, tokens.shape[-1])
        pooled = self.adapter(tokens) if self.adapter is not None else tokens.reshape(batch, -1, tokens.shape[-1])
        return self.projector(pooled)

    # -- language ---------------------------------------------------------------------------------------------------

    def inputs_embeds(
        self, input_ids: torch.Tensor, pixel_values: Mapping[str, Sequence[torch.Tensor]] | None
    ) -> torch.Tensor:
        """Token embeddings with the visual tokens written over the placeholder positions (HF llava's pattern)."""
        embeds = self.llm.embed(input_ids)
        placeholders = input_ids == self.visual_token_id
        counts = placeholders.sum(dim=1).tolist()
        if not any(counts):
            return embeds
        if pixel_values is None:
            raise ValueError(
                f"input_ids contain {self.config.visual_token} placeholders but no pixel_values were given"
            )
        features = self.visual_features(pixel_values)
        rows = [row for row, count in enumerate(counts) if count]
        if len(rows) != len(features):
            raise ValueError(
                f"{len(rows)} batch rows have {self.config.visual_token} placeholders "
                f"but {len(features)} videos were given"
            )
        for row, feature in zip(rows, features, strict=True):
            if counts[row] != len(feature):
                raise ValueError(
                    f"batch row {row} has {counts[row]} {self.config.visual_token} placeholder tokens but its video "
                    f"gives {len(feature)} visual tokens; tokenize with model.processor so the counts agree"
                )
        visual = torch.cat(features).to(embeds.dtype)
        return embeds.masked_scatter(placeholders.unsqueeze(-1).expand_as(embeds), visual)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: Mapping[str, Sequence[torch.Tensor]] | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        input_ids = input_ids.to(self._device())
        embeds = self.inputs_embeds(input_ids, pixel_values)
        mask = attention_mask.to(self._device()) if attention_mask is not None else None
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask).logits
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = causal_lm_loss(logits, labels.to(logits.device), num_items_in_batch)
        return out

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: Mapping[str, Sequence[torch.Tensor]] | None = None,
        *,
        max_new_tokens: int = 64,
        **options: Any,
    ) -> torch.Tensor:
        """New token ids for a left-padded batch (`processor.collate(..., padding_side="left")`)."""
        input_ids = input_ids.to(self._device())
        embeds = self.inputs_embeds(input_ids, pixel_values)
        options.setdefault("do_sample", False)
        options.setdefault("eos_token_id", self._stop_ids() or None)
        stop = self._stop_sequence()
        if len(stop) > 1:  # a stop string of several tokens: watch the tail of each row
            transformers = require("transformers", extra="valley", purpose="generation")
            criteria = transformers.StoppingCriteriaList([_StopSequence(stop)])
            options["stopping_criteria"] = criteria + list(options.get("stopping_criteria") or [])
        return self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask.to(self._device()),
            max_new_tokens=max_new_tokens,
            **options,
        )

    def answer(
        self,
        video: str | os.PathLike[str] | None,
        question: str | Sequence[tuple[str, str]],
        *,
        max_new_tokens: int = 64,
        **options: Any,
    ) -> str:
        """Read a video (or image), ask `question` (or continue a conversation of `(role, text)` turns), return the
        reply."""
        clip = self.processor.read(video) if video is not None else None
        turns = [("user", question)] if isinstance(question, str) else list(question)
        example = self.processor.encode(turns, clip, for_generation=True)
        batch = self.processor.collate([example], padding_side="left")
        batch.pop("labels")
        new = self.generate(**batch, max_new_tokens=max_new_tokens, **options)
        return self.decode(new[0])

    def decode(self, token_ids: torch.Tensor | Sequence[int]) -> str:
        """Generated ids -> text, cut where the template's stop sequence starts."""
        ids = [int(i) for i in token_ids]
        stop = self._stop_sequence()
        for start in range(len(ids) - len(stop) + 1 if stop else 0):
            if ids[start : start + len(stop)] == stop:
                ids = ids[:start]
                break
        return self.llm.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _stop_sequence(self) -> list[int]:
        stop = self.template.stop.strip()
        return self.llm.tokenizer(stop, add_special_tokens=False).input_ids if stop else []

    def _stop_ids(self) -> list[int]:
        tokenizer = self.llm.tokenizer
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stop = self._stop_sequence()
        return [*ids, stop[0]] if len(stop) == 1 else ids

    def _device(self) -> torch.device:
        return next(self.llm.parameters()).device

    @staticmethod
    def _vision_dtype(encoder: nn.Module) -> torch.dtype:
        parameter = next(encoder.parameters(), None)
        return parameter.dtype if parameter is not None else torch.float32

    # -- LoRA -------------------------------------------------------------------------------------------------------

    def add_lora(
        self, rank: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: Any = "all-linear"
    ) -> None:
        """Wrap the LLM with peft LoRA adapters (only they train when a stage trains `llm`)."""
        peft = require("peft", extra="valley", purpose="LoRA")
        lora = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
        self.llm.model = peft.get_peft_model(self.llm.model, lora)

    @property
    def has_lora(self) -> bool:
        return hasattr(self.llm.model, "merge_and_unload")

    def merge_lora(self) -> None:
        """Fold LoRA weights into the LLM and drop the adapters (before saving a plain model)."""
        if self.has_lora:
            self.llm.model = self.llm.model.merge_and_unload()

    # -- files ------------------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write `config.json`, `model.safetensors` and the LLM's config and tokenizer (`llm/`) to `folder`.

        LoRA adapters are merged first. The folder is written next to its destination and swapped in at the end,
        so an interrupted save leaves the previous one intact.
        """
        safetensors_torch = require("safetensors.torch", extra="torch", purpose="saving a model")
        self.merge_lora()
        target = Path(folder)
        staging = target.with_name(f".{target.name}.saving-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            self.llm.save_architecture(staging / LLM_FOLDER)
            llm = self.config.llm.model_copy(
                update={"path": LLM_FOLDER, "config": {}, "tokenizer": None, "gguf_file": None, "load_weights": False}
            )
            saved = self.config.without_weights().model_copy(update={"llm": llm})
            (staging / CONFIG_FILE).write_text(json.dumps({"omnimm": saved.to_dict()}, indent=2) + "\n")
            safetensors_torch.save_model(self, str(staging / WEIGHTS_FILE))
            _swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> VideoLLM:
        """Rebuild a saved model; outputs are identical to the model that was saved."""
        safetensors_torch = require("safetensors.torch", extra="torch", purpose="loading a model")
        source = Path(folder)
        config_file = source / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{source} is not a saved video LLM: {CONFIG_FILE} is missing")
        data = json.loads(config_file.read_text())["omnimm"]
        llm = data["llm"]
        if llm.get("path") and not Path(llm["path"]).is_absolute():
            llm["path"] = str(source / llm["path"])
        config = models.validate(data, source=str(config_file))
        model = models.get(config.name)(config)
        missing, unexpected = safetensors_torch.load_model(model, str(source / WEIGHTS_FILE), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{source / WEIGHTS_FILE} does not match the model in {CONFIG_FILE}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return model


class _StopSequence:
    """Generation stopping criterion: a row is done once it ends with `sequence` (token ids, any tokenizer)."""

    def __init__(self, sequence: Sequence[int]) -> None:
        self.sequence = torch.tensor(list(sequence))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        length = len(self.sequence)
        if input_ids.shape[1] < length:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return (input_ids[:, -length:] == self.sequence.to(input_ids.device)).all(dim=1)


class FeatureStandardizer(nn.Module):
    """`(x - mean) / std` per token position and channel, with statistics accumulated over the first
    `warmup_frames` frames seen in training mode and frozen afterwards (saved with the model)."""

    def __init__(self, tokens: int, dim: int, warmup_frames: int = 4096) -> None:
        super().__init__()
        self.warmup_frames = warmup_frames
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(tokens, dim))
        self.register_buffer("sq_mean", torch.ones(tokens, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.training and int(self.count) < self.warmup_frames:
            with torch.no_grad():
                frames = tokens.detach().float().reshape(-1, *self.mean.shape)
                total = self.count + len(frames)
                weight = len(frames) / float(total)
                self.mean.lerp_(frames.mean(dim=0), weight)
                self.sq_mean.lerp_(frames.square().mean(dim=0), weight)
                self.count.copy_(total)
        if int(self.count) == 0:
            return tokens
        std = (self.sq_mean - self.mean.square()).clamp(min=1e-6).sqrt()
        return (tokens - self.mean.to(tokens.dtype)) / std.to(tokens.dtype)


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` with `staging` (a folder): the old one is moved aside first and removed last."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Next-token cross-entropy over labelled positions; divided by `num_items_in_batch` when given (so that
    gradient accumulation and data parallelism average over tokens, not over batches), else by the local count."""
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shifted_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        count = (shifted_labels != IGNORE_INDEX).sum().clamp(min=1)
        return total / count
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
