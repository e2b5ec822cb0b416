"""LLM backbones (`hf/causal-lm`), attention kernels (SDPA, xformers), chat templates and tiny tokenizers."""
