"""The core's own components: small, dependency-light building blocks that every plugin can compose.

- `omnimm/tiny-vit` (encoder): a ViT built from scratch with random weights, for tests, demos and shape checks.
- `omnimm/mlp` (adapter): a projector, linear (`depth: 1`) or LLaVA's `mlp2x_gelu` (`depth: 2`).
- `omnimm/concat` (fuser): joins the token sequences of several encoders.
- `omnimm/multimodal-encoder` (model): encoders -> optional fuser -> optional adapter, with frozen parts.

Configs live in `configs` (pydantic only); the torch modules in `modules`.
"""
