"""Vision encoders: per-frame CLS + patch tokens from a chosen layer, with each encoder's own preprocessing.

Registered names: `openclip/vit` (open_clip), `hf/clip-vision` (transformers' CLIPVisionModel), `timm/vit` (timm).
Every encoder maps frames `[F, 3, S, S]` to tokens `[F, 1 + N, D]` (CLS first) and exposes `out_dim`,
`num_patches` and `preprocess` (uint8 frames `[F, H, W, 3]` -> normalised `[F, 3, S, S]`).
"""
