"""Staged training on HF's `Trainer`: which parts learn, learning rates, data, LoRA, checkpoints and resume."""
