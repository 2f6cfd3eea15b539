"""Evaluation and distillation training."""
from .evaluate import evaluate

__all__ = ["evaluate"]
