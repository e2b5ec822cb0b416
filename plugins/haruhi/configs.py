"""Configs of the haruhi plugin (pydantic only: validating a config imports neither faiss nor torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from omnimm.config import ComponentConfig, EncoderRef, LLMRef, field_error


class MemoryStoreConfig(ComponentConfig):
    """`haruhi/memory`: a faiss index of unit-length embeddings (inner product = cosine), ids mapped to texts."""

    index: Literal["flat", "ivf", "hnsw"] | None = None
    """Unset (the default): chosen by size, `flat` up to `exact_up_to` memories, `hnsw` above (the store switches
    when it grows past the limit). `flat`: exact search. `ivf`: inverted lists, approximate, fast to build,
    supports deletes. `hnsw`: graph, approximate, fastest queries, deletes are tombstones until compaction."""
    exact_up_to: int = Field(20_000, ge=0)
    """With `index` unset: the largest store searched exactly (`flat`)."""
    target_recall: float = Field(0.98, gt=0, le=1)
    """Recall@10 against exact search that an approximate index is tuned for when `nprobe` / `ef_search` are unset:
    measured on a held-out sample of the store's own vectors when it is built (and again once it has grown or
    shrunk by a fifth), recorded in the manifest."""
    nlist: int | None = Field(None, ge=1)
    """IVF cells. Unset: 4 * sqrt(n) on the first add, at most n / 39 (faiss' minimum training points per cell)."""
    nprobe: int | None = Field(None, ge=1)
    """IVF cells visited per query (recall vs speed). Unset: the fewest that reach `target_recall`."""
    hnsw_m: int = Field(32, ge=4)
    """HNSW neighbours per node (twice as many on the bottom layer). More neighbours cost more per search step but
    need fewer steps for a recall; on MiniLM vectors 32 reached recall@10 0.985-0.99 in the least time of 12, 16,
    24 and 32 (`benchmarks/haruhi_hnsw_m.py`)."""
    hnsw_vectors: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    """How an HNSW index stores its vectors. 16 bits take 41% fewer bytes per memory (1,097 against 1,865 for
    MiniLM's 384 dimensions, graph included) for a little recall that `ef_search` tuning wins back; at equal recall@10
    the query time on MiniLM vectors was about that of float32, within this machine's run-to-run noise
    (`benchmarks/haruhi_hnsw_m.py --vectors`). Scores of hits are cosines to within 0.0059 (bfloat16) or 0.0005
    (float16); `flat` and `ivf` always keep float32. A loaded store keeps the storage it was saved with."""
    ef_construction: int = Field(200, ge=8)
    """HNSW candidate list size while building (a better graph reaches a recall with a shorter `ef_search`)."""
    ef_search: int | None = Field(None, ge=1)
    """HNSW candidate list size per query (recall vs speed). Unset: the smallest that reaches `target_recall`
    (scaled by k / 10 for k > 10)."""
    tuning_similarity: float = Field(0.85, gt=0, le=1)
    """Build-time tuning: memories at least this similar (cosine) to a held-out tuning vector are held out with it,
    and a tuning vector with a near-copy already in the store is not used, so that each is searched as a new text
    would be; a vector beside its own near-copy (overlapping windows, duplicates) is found far more easily than a
    query and overstates recall."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: search on the GPU when faiss-gpu is installed and a GPU is visible (`flat` and `ivf`)."""


class PromptConfig(ComponentConfig):
    """How a prompt is composed: retrieval depth, token budgets and the language template."""

    top_k: int = Field(10, ge=1)
    """Scenes retrieved per query (before packing)."""
    max_story_tokens: int = Field(1500, ge=0)
    """Token budget for the scenes (their heading and separators included)."""
    max_history_tokens: int = Field(1200, ge=0)
    """Token budget for earlier exchanges; the newest come first and a turn is never cut."""
    language: Literal["en", "zh"] = "en"
    """Template for the scene heading, separators and query format."""
    story_heading: str | None = None
    """Overrides the language template's scene heading."""


class GenerationConfig(ComponentConfig):
    """Decoding options passed to the LLM backend."""

    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0)
    """0 decodes greedily."""
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None


class SessionConfig(ComponentConfig):
    """A role-play session: which character, how to embed queries, which LLM answers, and the prompt rules."""

    character: str
    """A character package folder (see `omnimm haruhi import-script`)."""
    encoder: EncoderRef | None = None
    """Embeds queries. Unset: the encoder the character was indexed with (recorded in its manifest)."""
    llm: LLMRef | None = None
    """Any backend with `chat()` and `count_tokens()`: `hf/causal-lm`, `openai/chat`, ... Unset: retrieval and prompt
    composition only (tokens are then estimated at 4 characters each)."""
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    user_role: str = ""
    """The name the user speaks as in queries (e.g. `JULIET`); empty: the query text alone."""

    @model_validator(mode="after")
    def _character(self) -> SessionConfig:
        if not self.character.strip():
            raise field_error("character", "give the folder of a character package")
        return self
