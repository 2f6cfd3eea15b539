"""Datasets: the bundled demo digits (more sources arrive with the trainer).

Preprocessing always comes from the model's own ``pretrained_cfg`` through timm's ``resolve_data_config`` and
``create_transform``, so a dataset is read exactly as the model expects.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from ..errors import DataError


def eval_transform(model: nn.Module) -> Callable:
    """timm's evaluation transform for ``model`` (resize, center crop, normalise from its pretrained_cfg)."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config(model=model), is_training=False)


def build_split(spec: str, split: str, transform: Optional[Callable] = None) -> Any:
    """The ``split`` ("train" or "val") of dataset ``spec`` with ``transform`` applied to each image."""
    if spec == "demo":
        from .demo import DigitsDemo

        return DigitsDemo(split, transform=transform)
    raise DataError(f"dataset {spec!r}: only the bundled 'demo' dataset is supported in this version.")
