"""Registers the core's components. Registration only: nothing here imports torch."""

from __future__ import annotations

from omnimm.hookspecs import hookimpl
from omnimm.registry import Registries

_CONFIGS = "omnimm.builtin.configs"
_MODULES = "omnimm.builtin.modules"


@hookimpl
def omnimm_register(registries: Registries) -> None:
    registries.encoders.register_lazy(
        "omnimm/tiny-vit", f"{_MODULES}:TinyViT", config=f"{_CONFIGS}:TinyViTConfig", extra="torch"
    )
    registries.adapters.register_lazy(
        "omnimm/mlp", f"{_MODULES}:MLPProjector", config=f"{_CONFIGS}:MLPConfig", extra="torch"
    )
    registries.fusers.register_lazy(
        "omnimm/concat", f"{_MODULES}:ConcatFuser", config=f"{_CONFIGS}:ConcatConfig", extra="torch"
    )
    vision = "omnimm.vision"
    for name, module, config in [
        ("openclip/vit", "OpenCLIPVision", "OpenCLIPVisionConfig"),
        ("hf/clip-vision", "HFCLIPVision", "HFCLIPVisionConfig"),
        ("timm/vit", "TimmViT", "TimmViTConfig"),
    ]:
        registries.encoders.register_lazy(
            name, f"{vision}.encoders:{module}", config=f"{vision}.configs:{config}", extra="video"
        )
    registries.models.register_lazy(
        "omnimm/multimodal-encoder",
        f"{_MODULES}:MultimodalEncoder",
        config=f"{_CONFIGS}:MultimodalEncoderConfig",
        extra="torch",
    )
    registries.connectors.register_lazy(
        "omnimm/projector",
        "omnimm.videollm.connector:ProjectorConnector",
        config="omnimm.videollm.configs:ProjectorConnectorConfig",
        extra="torch",
    )
    registries.models.register_lazy(
        "omnimm/video-llm",
        "omnimm.videollm.model:VideoLLM",
        config="omnimm.videollm.configs:VideoLLMConfig",
        extra="video",
    )
    registries.evaluators.register_lazy(
        "omnimm/choice-accuracy", "omnimm.evaluation:ChoiceAccuracy", config="omnimm.evaluation:ChoiceAccuracyConfig"
    )
    registries.datasets.register_lazy(
        "omnimm/conversations",
        "omnimm.videollm.data:ConversationDataset",
        config="omnimm.videollm.configs:ConversationDataConfig",
        extra="video",
    )
    registries.encoders.register_lazy(
        "hf/sentence-encoder",
        "omnimm.sentence.encoder:SentenceEncoder",
        config="omnimm.sentence.configs:SentenceEncoderConfig",
        extra="recse",
    )
    registries.llms.register_lazy(
        "hf/causal-lm", "omnimm.llm.causal_lm:HFCausalLM", config="omnimm.llm.configs:HFCausalLMConfig", extra="video"
    )
    registries.llms.register_lazy(
        "openai/chat", "omnimm.llm.openai_http:OpenAIChat", config="omnimm.llm.configs:OpenAIChatConfig"
    )
    for name, attribute, description in [
        ("omnimm/llava-v0", "LLAVA_V0", "The '###' Human/Assistant format of LLaVA v0 and Valley."),
        ("omnimm/chatml", "CHATML", "ChatML, as SmolLM2, Qwen and others use it."),
        ("omnimm/plain", "PLAIN", "No roles: prompt, newline, answer (caption pre-training)."),
    ]:
        registries.templates.register_lazy(name, f"omnimm.llm.templates:{attribute}", description=description)
