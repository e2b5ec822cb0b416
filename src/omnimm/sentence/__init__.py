"""Sentence embeddings: `hf/sentence-encoder` (any transformers encoder; all-MiniLM-L6-v2 offline by default)."""
