"""`omnimm/video-llm`: frames -> encoders (named token groups) -> connector -> visual tokens in a causal LM."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnimm.deps import require
from omnimm.errors import BuildError, ConfigError, StoreError
from omnimm.files import (
    atomic_write_text,
    incomplete_leftovers,
    remove_leftovers,
    restore_folder,
    safetensors_problem,
    staging_folder,
    swap_in_folder,
)
from omnimm.llm.tokenizer import BYTES
from omnimm.registry import connectors, encoders, llms, models, templates
from omnimm.training.configs import LoRASettings
from omnimm.video import VideoClip
from omnimm.videollm.configs import VideoLLMConfig, VisualGroupTokens
from omnimm.videollm.connector import check_connector_class
from omnimm.videollm.feature_cache import FeatureCache, frozen
from omnimm.videollm.groups import MASK, TokenGroup, group_ref
from omnimm.videollm.processor import IGNORE_INDEX, VideoLLMProcessor

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LLM_FOLDER = "llm"

log = logging.getLogger("omnimm.videollm")


class VideoLLM(nn.Module):
    """A video (or image) LLM composed from registered parts: encoders giving named token groups, a connector that
    turns them into the LLM's visual tokens (optionally several groups, with auxiliary losses), a causal LM.

    `forward(input_ids, attention_mask, pixel_values, labels)` returns `{"loss", "lm_loss", "aux_losses", "logits"}`;
    `generate` and `answer` produce text; `save_pretrained` / `from_pretrained` store a JSON config and safetensors
    weights.
    """

    accepts_loss_kwargs = True  # HF Trainer passes num_items_in_batch: exact token-mean loss across devices

    def __init__(self, config: VideoLLMConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict(
            {key: building(f"encoders.{key}", encoders.build, cfg) for key, cfg in config.encoders.items()}
        )
        self.encoder_groups = {
            group_ref(key, name): group
            for key, encoder in self.encoders.items()
            for name, group in _token_groups(key, encoder).items()
        }
        self.standardizers = (
            nn.ModuleDict(
                {
                    key: nn.ModuleDict(
                        {name: FeatureStandardizer(g.tokens, g.dim) for name, g in _token_groups(key, enc).items()}
                    )
                    for key, enc in self.encoders.items()
                }
            )
            if config.standardize
            else None
        )
        self.llm = building("llm", llms.build, config.llm)
        hidden = self.llm.hidden_size
        self.connector = building(
            "connector", _build_connector, config.connector, inputs=self.encoder_groups, out_dim=hidden
        )
        self.layout = building("visual_groups", lambda _: _layout(config, self.connector, self.llm), None)
        ids = self.llm.add_special_tokens(self.layout.tokens())
        self.layout.bind(dict(zip(self.layout.tokens(), ids, strict=True)))
        self.visual_token_id = self.layout.marker_id
        self.delimiters = None
        if self.layout.delimiters:
            mean = self.llm.embed_weight().detach().float().mean(dim=0)  # as Valley/LLaVA initialise new tokens
            self.delimiters = nn.Parameter(mean.repeat(len(self.layout.delimiters), 1).to(self.llm.embed_weight()))
        self.template = templates.get(config.template)
        self.max_length = config.max_length or self.llm.max_positions()
        self.processor = VideoLLMProcessor(
            tokenizer=self.llm.tokenizer,
            template=self.template,
            visual_token=config.visual_token,
            visual_token_id=self.visual_token_id,
            transforms={key: encoder.preprocess for key, encoder in self.encoders.items()},
            sampling=config.frames,
            visual_ids=self.visual_ids,
            ignored_ids=self.layout.all_ids(),
            max_length=self.max_length,
        )
        self.feature_cache: FeatureCache | None = None
        self.use_feature_cache(config.feature_cache)
        self.requires_grad_(True)
        if config.lora is not None:  # peft leaves only the adapters trainable in the LLM
            self.add_lora(**config.lora.model_dump(exclude={"merge"}))
        parts = self.parts()
        for pattern in config.freeze:
            for name in fnmatch.filter(parts, pattern):
                parts[name].requires_grad_(False)

    # -- structure --------------------------------------------------------------------------------------------------

    def parts(self) -> dict[str, nn.Module]:
        """Named parts, as `freeze`, training stages and per-part learning rates name them."""
        found: dict[str, nn.Module] = {"encoders": self.encoders}
        found.update({f"encoders.{key}": module for key, module in self.encoders.items()})
        found["connector"] = self.connector
        found.update({f"connector.{name}": module for name, module in self.connector.sub_parts().items()})
        if self.delimiters is not None:
            found["delimiters"] = _ParameterPart(self.delimiters)
        found["llm"] = self.llm
        return found

    def visual_groups(self, frames: int) -> dict[str, TokenGroup]:
        """The connector's output groups for a clip of `frames` frames: tokens and width of each."""
        return self.connector.output_groups(frames)

    def visual_ids(self, frames: int) -> list[int]:
        """The token ids the prompt marker expands to for a clip of `frames` frames (placeholders and delimiters)."""
        return self.layout.expand(self.visual_groups(frames))

    def num_visual_tokens(self, frames: int) -> int:
        """How many positions the visual input of `frames` frames takes in the LLM's sequence (delimiters
        included)."""
        return len(self.visual_ids(frames))

    @property
    def frame_tokens(self) -> int:
        """Tokens per frame over every encoder group (what the LLM would see per frame without a connector)."""
        return sum(group.tokens for group in self.encoder_groups.values())

    # -- vision -----------------------------------------------------------------------------------------------------

    def encode_frames(
        self, pixel_values: Mapping[str, Sequence[Any]]
    ) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """Per sample, its token groups `{ref: [T_i, n, d]}` and frame masks `{encoder: [T_i]}`; all frames of the
        batch go through each encoder at once."""
        samples: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        for key, encoder in self.encoders.items():
            clips = list(pixel_values[key])
            if not samples:
                samples = [({}, {}) for _ in clips]
            if len(clips) != len(samples):
                raise ValueError(f"pixel_values['{key}'] has {len(clips)} clips, other encoders {len(samples)}")
            lengths = [_frame_count(clip) for clip in clips]
            groups, mask = self._encoder_output(key, encoder, clips)
            for name, tokens in groups.items():
                standardize = self.standardizers[key][name] if self.standardizers is not None else None
                for sample, piece in zip(samples, tokens.split(lengths), strict=True):
                    sample[0][group_ref(key, name)] = standardize(piece) if standardize is not None else piece
            if mask is not None:
                for sample, piece in zip(samples, mask.split(lengths), strict=True):
                    sample[1][key] = piece
        return samples

    def _encoder_output(self, key: str, encoder: nn.Module, clips: list[Any]) -> tuple[dict[str, torch.Tensor], Any]:
        """One encoder's groups over the clips' frames; a frozen encoder runs without autograd, through the feature
        cache when there is one."""

        def run(chosen: list[Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
            return _split_output(key, encoder, encoder(_to(_concat(chosen), device, self._vision_dtype(encoder))))

        device = self._device()
        if not frozen(encoder):
            return run(clips)
        with torch.no_grad():
            if self.feature_cache is None:
                return run(clips)
            groups = _token_groups(key, encoder)
            return self.feature_cache.encode(self.config.encoders[key], encoder, clips, groups, run, device)

    def use_feature_cache(self, folder: str | os.PathLike[str] | None) -> FeatureCache | None:
        """Cache the outputs of frozen encoders in `folder` (see `omnimm.videollm.feature_cache`); None turns the
        cache off. The model config's `feature_cache` does this when the model is built."""
        sampling = self.config.frames.model_dump(mode="json")
        self.feature_cache = FeatureCache(folder, sampling=sampling) if folder is not None else None
        return self.feature_cache

    def connect(
        self, pixel_values: Mapping[str, Sequence[Any]]
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor], dict[str, Any]]:
        """Per sample, the connector's output groups `{group: [K_g, hidden]}`; plus its auxiliary losses and numeric
        statistics, averaged over the samples (clips of different lengths go through the connector separately)."""
        samples = self.encode_frames(pixel_values)
        by_length: dict[int, list[int]] = {}  # clips with the same frame count go through the connector together
        for index, (groups, _) in enumerate(samples):
            by_length.setdefault(len(next(iter(groups.values()))), []).append(index)
        outputs: dict[int, dict[str, torch.Tensor]] = {}
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, Any] = {}
        for frames, indices in by_length.items():
            groups = {ref: torch.stack([samples[i][0][ref] for i in indices]) for ref in samples[indices[0]][0]}
            masks = {key: torch.stack([samples[i][1][key] for i in indices]) for key in samples[indices[0]][1]}
            out = self.connector(groups, masks)
            self._check_output(out.tokens, frames, len(indices))
            share = len(indices) / len(samples)
            for name, value in out.losses.items():
                losses[name] = losses.get(name, 0) + value * share
            for name, value in out.stats.items():  # numbers averaged over the clips, as the losses
                number = _as_number(value)
                stats[name] = stats.get(name, 0.0) + number * share if number is not None else value
            for position, index in enumerate(indices):
                outputs[index] = {name: tokens[position] for name, tokens in out.tokens.items()}
        return [outputs[i] for i in range(len(samples))], losses, stats

    def _check_output(self, tokens: Mapping[str, torch.Tensor], frames: int, batch: int) -> None:
        expected = self.visual_groups(frames)
        got = {name: tuple(t.shape) for name, t in tokens.items()}
        want = {name: (batch, g.tokens, g.dim) for name, g in expected.items()}
        if got != want:
            raise ValueError(
                f"connector '{self.config.connector.name}' returned groups {got} for {frames} frames, but its "
                f"output_groups() say {want}"
            )

    @torch.no_grad()
    def trace(self, pixel_values: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
        """Shapes at each stage for one clip (`{key: [T, 3, S, S]}` or the encoder's own input), for inspection."""
        steps: list[tuple[str, tuple[int, ...]]] = []
        for key in self.encoders:
            value = pixel_values[key]
            shape = value["pixels"].shape if isinstance(value, Mapping) else value.shape
            steps.append((f"pixel_values[{key}]", tuple(shape)))
        groups, masks = self.encode_frames({key: [value] for key, value in pixel_values.items()})[0]
        for ref, tokens in groups.items():
            key = ref.split(".", 1)[0]
            steps.append((f"encoders.{key} ({self.config.encoders[key].name}) -> {ref}", tuple(tokens.shape)))
        for key, mask in masks.items():
            steps.append(
                (f"encoders.{key} frames with a mask set ({int(mask.sum())} of {len(mask)})", tuple(mask.shape))
            )
        batched = {ref: tokens[None] for ref, tokens in groups.items()}
        out = self.connector(batched, {key: mask[None] for key, mask in masks.items()})
        for name, tokens in out.tokens.items():
            steps.append((f"connector ({self.config.connector.name}) -> {name}", tuple(tokens.shape[1:])))
        frames = len(next(iter(groups.values())))
        steps.append(("visual positions in the LLM's sequence (with delimiters)", (self.num_visual_tokens(frames),)))
        return steps

    # -- language ---------------------------------------------------------------------------------------------------

    def inputs_embeds(
        self, input_ids: torch.Tensor, pixel_values: Mapping[str, Sequence[Any]] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """Token embeddings with each output group written over its placeholder positions (HF llava's pattern) and
        the learned delimiter embeddings over theirs; plus the connector's auxiliary losses and statistics."""
        embeds = self.llm.embed(input_ids)
        layout = self.layout
        if self.delimiters is not None:
            for index, token_id in enumerate(layout.delimiter_ids):
                where = (input_ids == token_id).unsqueeze(-1)
                embeds = torch.where(where, self.delimiters[index].to(embeds.dtype), embeds)
        visual_rows = torch.isin(input_ids, torch.tensor(layout.placeholder_ids, device=input_ids.device))
        rows = [row for row, has in enumerate(visual_rows.any(dim=1).tolist()) if has]
        if not rows:
            return embeds, {}, {}
        if pixel_values is None:
            raise ValueError(
                f"input_ids contain {self.config.visual_token} placeholders but no pixel_values were given"
            )
        features, losses, stats = self.connect(pixel_values)
        if len(rows) != len(features):
            raise ValueError(
                f"{len(rows)} batch rows have {self.config.visual_token} placeholders "
                f"but {len(features)} videos were given"
            )
        for group, token_id in layout.placeholders.items():
            where = input_ids == token_id
            counts = where.sum(dim=1).tolist()
            for row, feature in zip(rows, features, strict=True):
                if counts[row] != len(feature[group]):
                    raise ValueError(
                        f"batch row {row} has {counts[row]} placeholder tokens for visual group '{group}' but its "
                        f"video gives {len(feature[group])} tokens; tokenize with model.processor so the counts agree"
                    )
            visual = torch.cat([feature[group] for feature in features]).to(embeds.dtype)
            embeds = embeds.masked_scatter(where.unsqueeze(-1).expand_as(embeds), visual)
        return embeds, losses, stats

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: Mapping[str, Sequence[Any]] | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        input_ids = input_ids.to(self._device())
        embeds, aux_losses, stats = self.inputs_embeds(input_ids, pixel_values)
        mask = attention_mask.to(self._device()) if attention_mask is not None else None
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask).logits
        out: dict[str, Any] = {"logits": logits, "aux_losses": aux_losses, "connector_stats": stats}
        if labels is not None:
            labels = labels.to(logits.device)
            lm_loss = causal_lm_loss(logits, labels, num_items_in_batch)
            out["lm_loss_mean"] = (
                lm_loss.detach() if num_items_in_batch is None else _token_mean(lm_loss, labels, num_items_in_batch)
            )
            aux = lm_loss.new_zeros(())
            for name, value in aux_losses.items():
                aux = aux + self.connector.loss_weight(name) * value
            out["lm_loss"] = lm_loss
            out["aux_loss"] = aux
            out["loss"] = lm_loss + aux
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
        embeds, _, _ = self.inputs_embeds(input_ids, pixel_values)
        options.setdefault("do_sample", False)
        options.setdefault("eos_token_id", self._stop_ids() or None)
        stop, text = self._stop_sequence(), self.template.stop.strip()
        if text:  # watch each row's tail, as tokens and as text (a SentencePiece tokenizer may merge "red###")
            transformers = require("transformers", extra="video", purpose="generation")
            criteria = transformers.StoppingCriteriaList([_StopSequence(stop, text, self.llm.tokenizer)])
            options["stopping_criteria"] = criteria + list(options.get("stopping_criteria") or [])
        return self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask.to(self._device()),
            max_new_tokens=max_new_tokens,
            **options,
        )

    def answer(
        self,
        video: str | os.PathLike[str] | VideoClip | None,
        question: str | Sequence[tuple[str, str]],
        *,
        max_new_tokens: int = 64,
        **options: Any,
    ) -> str:
        """Read a video (or image; or take a clip already read), ask `question` (or continue a conversation of
        `(role, text)` turns), return the reply. `streamer=` (a transformers streamer) receives the words as they
        come."""
        clip = video if isinstance(video, VideoClip) or video is None else self.processor.read(video)
        turns = [("user", question)] if isinstance(question, str) else list(question)
        example = self.processor.encode(turns, clip, for_generation=True)
        batch = self.processor.collate([example], padding_side="left")
        batch.pop("labels")
        new = self.generate(**batch, max_new_tokens=max_new_tokens, **options)
        return self.decode(new[0])

    def decode(self, token_ids: torch.Tensor | Sequence[int]) -> str:
        """Generated ids -> text, cut where the template's stop sequence starts (as tokens, or in the text)."""
        ids = [int(i) for i in token_ids]
        stop = self._stop_sequence()
        for start in range(len(ids) - len(stop) + 1 if stop else 0):
            if ids[start : start + len(stop)] == stop:
                ids = ids[:start]
                break
        text = self.llm.tokenizer.decode(ids, skip_special_tokens=True)
        stop_text = self.template.stop.strip()
        return (text.split(stop_text, 1)[0] if stop_text else text).strip()

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
        """Wrap the LLM with peft LoRA adapters (only they train when a stage trains `llm`). The settings are kept in
        `config.lora`, so a saved model with unmerged adapters rebuilds them."""
        peft = require("peft", extra="video", purpose="LoRA")
        lora = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
        self.llm.model = peft.get_peft_model(self.llm.model, lora)
        settings = LoRASettings(rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules, merge=False)
        self.config = self.config.model_copy(update={"lora": settings})

    @property
    def has_lora(self) -> bool:
        return hasattr(self.llm.model, "merge_and_unload")

    def merge_lora(self) -> None:
        """Fold LoRA weights into the LLM and drop the adapters."""
        if self.has_lora:
            self.llm.model = self.llm.model.merge_and_unload()
            self.config = self.config.model_copy(update={"lora": None})

    # -- files ------------------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write `config.json`, `model.safetensors` and the LLM's config and tokenizer (`llm/`) to `folder`.

        LoRA adapters are saved as they are (unmerged; `merge_lora()` first for a plain model): the config records
        them and `from_pretrained` rebuilds them. The folder is written next to its destination and swapped in at
        the end, so a save killed at any point leaves the previous save (or, between the swap's two renames, the new
        one) loadable; the next save or load puts it back in place and removes what killed saves left.
        """
        safetensors_torch = require("safetensors.torch", extra="torch", purpose="saving a model")
        target = Path(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        restore_interrupted_save(target)  # the previous version back in place before anything is removed
        for path in remove_leftovers(target):
            log.info("%s: removed %s, left by a save that did not finish", target, path.name)
        staging = staging_folder(target)
        staging.mkdir()
        try:
            self.llm.save_architecture(staging / LLM_FOLDER)
            llm = self.config.llm.model_copy(
                update={"path": LLM_FOLDER, "config": {}, "tokenizer": None, "gguf_file": None, "load_weights": False}
            )
            # The cache folder is this machine's: a loaded model never writes there unless asked again.
            saved = self.config.without_weights().model_copy(update={"llm": llm, "feature_cache": None})
            atomic_write_text(staging / CONFIG_FILE, json.dumps({"omnimm": saved.to_dict()}, indent=2) + "\n")
            # Written last, under its own name only once complete: its presence marks the folder complete.
            partial = staging / f".{WEIGHTS_FILE}.tmp"
            safetensors_torch.save_model(self, str(partial))
            os.replace(partial, staging / WEIGHTS_FILE)
            swap_in_folder(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], *, llm_path: str | os.PathLike[str] | None = None
    ) -> VideoLLM:
        """Rebuild a saved model; outputs are identical to the model that was saved.

        The folder may come from anyone: the files it names must lie inside it, and damaged files give a
        `StoreError` naming them. `llm_path` (the caller's own choice, so not confined) replaces the LLM folder
        the config names.
        """
        safetensors_torch = require("safetensors.torch", extra="torch", purpose="loading a model")
        source = _readable_folder(Path(folder).resolve())  # absolute: a relative `llm/` is never a hub repo id
        config = _read_saved_config(source, llm_path)
        weights = source / WEIGHTS_FILE
        problem = safetensors_problem(weights)
        if problem is not None:
            if not weights.is_file():
                raise FileNotFoundError(f"{source} is not a complete saved model: {problem}")
            raise StoreError(f"{weights}: not a readable safetensors file: {problem}")
        model = models.get(config.name)(config)
        if not isinstance(model, cls):
            raise StoreError(f"{source / CONFIG_FILE}: '{config.name}' is not a video LLM")
        try:
            missing, unexpected = safetensors_torch.load_model(model, str(weights), strict=False)
        except Exception as error:  # safetensors' own SafetensorError, torch's RuntimeError for a wrong shape
            if isinstance(error, (KeyboardInterrupt, MemoryError)):
                raise
            raise StoreError(
                f"{weights}: not a readable safetensors file for this model ({_first_line(error)})"
            ) from None
        if missing or unexpected:
            raise StoreError(
                f"{source / WEIGHTS_FILE} does not match the model in {CONFIG_FILE}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return model


def saved_config(folder: str | os.PathLike[str], *, llm_path: str | os.PathLike[str] | None = None) -> VideoLLMConfig:
    """The config of a saved video LLM folder (its `llm.path` made absolute, inside the folder), without building
    the model; weights paths are cleared (the folder's `model.safetensors` holds the weights)."""
    return _read_saved_config(_readable_folder(Path(folder).resolve()), llm_path)


def saved_folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete save (what is missing or cut short), or None. Reads headers only."""
    if not (folder / CONFIG_FILE).is_file():
        return f"{CONFIG_FILE} is missing"
    if not (folder / LLM_FOLDER).is_dir():
        return f"{LLM_FOLDER}/ is missing"
    return safetensors_problem(folder / WEIGHTS_FILE)


def restore_interrupted_save(target: Path) -> Path | None:
    """Put a killed save's complete copy back where `target` belongs (see `omnimm.files.restore_folder`), saying
    so; returns the folder to read, None when nothing was restored."""
    restored = restore_folder(target, saved_folder_problem)
    if restored is None:
        return None
    log.warning("%s", restored[1])
    return restored[0]


def _readable_folder(target: Path) -> Path:
    """The folder to load: `target`, or the complete copy a killed save left when `target` is missing."""
    restored = restore_interrupted_save(target)
    if restored is not None:
        return restored
    if not (target / CONFIG_FILE).is_file():
        left = incomplete_leftovers(target, saved_folder_problem)
        interrupted = f"; interrupted saves left only incomplete copies ({'; '.join(left)})" if left else ""
        raise FileNotFoundError(f"{target} is not a saved video LLM: {CONFIG_FILE} is missing{interrupted}")
    return target


def _read_saved_config(source: Path, llm_path: str | os.PathLike[str] | None) -> VideoLLMConfig:
    config_file = source / CONFIG_FILE
    data = _read_json_config(config_file)
    llm = data.get("llm")
    if llm is not None and not isinstance(llm, dict):
        raise StoreError(f"{config_file}: 'llm' must be a mapping, not {type(llm).__name__}")
    if llm_path is not None:  # the caller's own folder: taken as given
        llm = data["llm"] = {**(llm or {}), "path": str(llm_path)}
    if llm:
        _confine_llm_paths(llm, source, config_file, given_path=llm_path is not None)
    try:
        config = models.validate(data, source=str(config_file))
    except ConfigError as error:  # one line: a saved file is not the user's config to edit field by field
        details = "; ".join(issue.format() for issue in error.issues)
        raise StoreError(f"{config_file}: not a valid saved video LLM config: {details}") from None
    if not isinstance(config, VideoLLMConfig):
        raise StoreError(f"{config_file}: '{config.name}' is not a video LLM")
    return config.without_weights()  # no pretrained paths from the file: the saved weights replace them


def _read_json_config(config_file: Path) -> dict[str, Any]:
    """`config.json`'s `omnimm` mapping; a `StoreError` naming the file when it is not that."""
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise StoreError(
            f"{config_file}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno}); the save is damaged"
        ) from None
    except UnicodeDecodeError as error:
        raise StoreError(f"{config_file}: not UTF-8 text (byte {error.start}); the save is damaged") from None
    if not isinstance(data, dict) or not isinstance(data.get("omnimm"), dict):
        raise StoreError(
            f"{config_file}: expected a JSON object with an 'omnimm' mapping (a video LLM saved by omnimm)"
        )
    return data["omnimm"]


def _confine_llm_paths(llm: dict[str, Any], source: Path, config_file: Path, *, given_path: bool) -> None:
    """Make the LLM's `path` and `tokenizer` absolute inside `source`; anything pointing elsewhere (an absolute
    path, `..`, a link out of the folder) is refused: a downloaded folder must not read files outside itself.
    A `path` the caller gave is left as it is."""
    for field in ("tokenizer",) if given_path else ("path", "tokenizer"):
        value = llm.get(field)
        if value is None or (field == "tokenizer" and value == BYTES):
            continue
        llm[field] = str(_inside(source, value, f"llm.{field}", config_file))
    if llm.get("gguf_file") is not None and llm.get("path") and not given_path:
        _inside(Path(llm["path"]), llm["gguf_file"], "llm.gguf_file", config_file)
    if llm.get("path") and not Path(llm["path"]).is_dir():
        raise FileNotFoundError(f"{source} is not a complete saved model: {llm['path']} is missing")


def _inside(folder: Path, value: Any, field: str, config_file: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise StoreError(f"{config_file}: {field} must be a path inside the model folder, not {value!r}")
    path = Path(value)
    resolved = (folder / path).resolve()
    if path.is_absolute() or ".." in path.parts or not resolved.is_relative_to(folder):
        raise StoreError(
            f"{config_file}: {field} '{value}' points outside the model folder; a saved model's files must lie "
            f"inside it (pass llm_path= to from_pretrained to use another LLM folder)"
        )
    return resolved


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class VisualLayout:
    """Where visual features go in the token sequence: the prompt marker expands to each output group of the
    connector, `[start] placeholder * K [end]` per group, in the connector's order."""

    def __init__(self, marker: str, groups: dict[str, tuple[str, str | None, str | None]]) -> None:
        self.marker = marker
        self.groups = groups  # group -> (placeholder, start, end)
        self.delimiters = [t for _, start, end in groups.values() for t in (start, end) if t is not None]
        self._ids: dict[str, int] = {}

    @classmethod
    def build(cls, config: VideoLLMConfig, output_groups: list[str]) -> VisualLayout:
        unknown = sorted(set(config.visual_groups) - set(output_groups))
        if unknown:
            raise ValueError(
                f"visual_groups names {unknown}, but connector '{config.connector.name}' outputs {output_groups}"
            )
        groups = {}
        for group in output_groups:
            tokens = config.visual_groups.get(group, VisualGroupTokens())
            default = config.visual_token if len(output_groups) == 1 else f"<{group}>"
            groups[group] = (tokens.placeholder or default, tokens.start, tokens.end)
        layout = cls(config.visual_token, groups)
        placeholders = [p for p, _, _ in groups.values()]
        every = [*placeholders, *layout.delimiters]  # the marker may double as one group's placeholder
        doubled = sorted({t for t in every if every.count(t) > 1} | ({layout.marker} & set(layout.delimiters)))
        if doubled:
            raise ValueError(f"visual_groups: each group needs its own placeholder and delimiters; {doubled} repeat")
        return layout

    def check_vocabulary(self, tokenizer: Any) -> None:
        """Layout tokens must be tokens of their own: an ordinary word there would be overwritten wherever the text
        uses it."""
        special = set(getattr(tokenizer, "all_special_tokens", []))
        ordinary = [t for t in self.tokens() if t in tokenizer.get_vocab() and t not in special]
        if ordinary:
            raise ValueError(
                f"visual_groups: {ordinary} are ordinary tokens of the tokenizer; use tokens of their own such as "
                f"<face_start> (they are added as special tokens)"
            )

    def tokens(self) -> list[str]:
        """Every token the layout uses, each once (the tokenizer must know them)."""
        return list(dict.fromkeys([self.marker, *(p for p, _, _ in self.groups.values()), *self.delimiters]))

    def bind(self, ids: Mapping[str, int]) -> None:
        self._ids = dict(ids)

    @property
    def marker_id(self) -> int:
        return self._ids[self.marker]

    @property
    def placeholders(self) -> dict[str, int]:
        return {group: self._ids[placeholder] for group, (placeholder, _, _) in self.groups.items()}

    @property
    def placeholder_ids(self) -> list[int]:
        return list(self.placeholders.values())

    @property
    def delimiter_ids(self) -> list[int]:
        return [self._ids[token] for token in self.delimiters]

    def all_ids(self) -> set[int]:
        return set(self._ids.values())

    def expand(self, groups: Mapping[str, TokenGroup]) -> list[int]:
        ids: list[int] = []
        for group, (placeholder, start, end) in self.groups.items():
            ids += [self._ids[start]] if start is not None else []
            ids += [self._ids[placeholder]] * groups[group].tokens
            ids += [self._ids[end]] if end is not None else []
        return ids


class _ParameterPart(nn.Module):
    """Lets a bare parameter (the delimiter embeddings) be a named part: trainable or frozen like any module."""

    def __init__(self, parameter: nn.Parameter) -> None:
        super().__init__()
        self._parameter = [parameter]  # not registered here: the model owns it

    def parameters(self, recurse: bool = True) -> Any:  # type: ignore[override]
        return iter(self._parameter)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return iter([("delimiters", self._parameter[0])])

    def requires_grad_(self, requires_grad: bool = True) -> _ParameterPart:
        self._parameter[0].requires_grad_(requires_grad)
        return self


def building(where: str, factory: Any, config: Any, **deps: Any) -> Any:
    """Build one part; an error while building says which part of the model config it comes from."""
    try:
        return factory(config, **deps)
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as error:
        if isinstance(error, BuildError):
            raise
        name = getattr(config, "name", None)
        raise BuildError(where, f"{name + ': ' if name else ''}{error}") from error


def _layout(config: VideoLLMConfig, connector: Any, llm: Any) -> VisualLayout:
    layout = VisualLayout.build(config, list(connector.output_groups(1)))
    layout.check_vocabulary(llm.tokenizer)
    return layout


def _build_connector(config: Any, **deps: Any) -> Any:
    check_connector_class(connectors.get(config.name), config.name)
    return connectors.build(config, **deps)


def _token_groups(key: str, encoder: nn.Module) -> dict[str, TokenGroup]:
    groups = getattr(encoder, "token_groups", None)
    if not groups:
        name = getattr(getattr(encoder, "config", None), "name", type(encoder).__name__)
        raise BuildError(
            f"encoders.{key}",
            f"encoder '{name}' does not describe its output: give it a `token_groups` attribute "
            f"({{name: omnimm.videollm.groups.TokenGroup(tokens_per_frame, width)}})",
        )
    return dict(groups)


def _split_output(key: str, encoder: nn.Module, output: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """An encoder's output as `{group: [F, n, d]}` and its frame mask: a mapping as is, a tensor split along tokens
    in the order of `token_groups`."""
    groups = _token_groups(key, encoder)
    if isinstance(output, Mapping):
        mask = output.get(MASK)
        found = {name: output[name] for name in groups if name in output}
        missing = [name for name in groups if name not in output]
        if missing:
            raise ValueError(f"encoders.{key} returned no tensor for its token group(s) {missing}")
        return found, mask
    sizes = [group.tokens for group in groups.values()]
    if output.ndim != 3 or output.shape[1] != sum(sizes):
        raise ValueError(
            f"encoders.{key} returned {list(output.shape)}; its token_groups say [frames, {sum(sizes)}, width]"
        )
    return dict(zip(groups, output.split(sizes, dim=1), strict=True)), None


def _as_number(value: Any) -> float | None:
    """A statistic as a float (numbers and one-element tensors), else None."""
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _frame_count(clip: Any) -> int:
    return len(clip["pixels"] if isinstance(clip, Mapping) else clip)


def _concat(clips: list[Any]) -> Any:
    if isinstance(clips[0], Mapping):
        return {name: torch.cat([clip[name] for clip in clips]) for name in clips[0]}
    return torch.cat(clips)


def _to(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(value, Mapping):
        return {name: _to(item, device, dtype) for name, item in value.items()}
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


class _StopSequence:
    """Generation stopping criterion: a row is done once it ends with `sequence` (token ids) or once the decoded text
    of its last tokens holds `text` (a tokenizer that merges the stop string into a word gives other ids)."""

    def __init__(self, sequence: Sequence[int], text: str, tokenizer: Any) -> None:
        self.sequence = torch.tensor(list(sequence))
        self.text = text
        self.tokenizer = tokenizer
        self.window = max(8, 4 * len(self.sequence))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        length = len(self.sequence)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if length and input_ids.shape[1] >= length:
            done |= (input_ids[:, -length:] == self.sequence.to(input_ids.device)).all(dim=1)
        tails = self.tokenizer.batch_decode(input_ids[:, -self.window :], skip_special_tokens=True)
        return done | torch.tensor([self.text in tail for tail in tails], device=input_ids.device)


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


def _token_mean(loss: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
    """This batch's own token-mean loss, from one normalised by the tokens of a larger batch (for logging)."""
    count = (labels[:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
    return (loss.detach() * torch.as_tensor(num_items_in_batch, device=loss.device) / count).detach()


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
