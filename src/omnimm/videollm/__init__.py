"""Video LLMs: encoders -> optional fuser -> adapter (pooling) -> projector -> LLM, with visual tokens spliced
into the LLM's input embeddings at placeholder tokens; data, training stages and checkpoints."""
