"""Import a checkpoint released by a method's authors (DynamicViT, EViT, Evo-ViT) as a vitprune model.

The official files are PyTorch pickles holding ``{"model": state_dict, "optimizer": ..., "args": ...}`` (or a bare
state dict). vitprune reads only tensors (``weights_only``; ``argparse.Namespace`` allowed for ``args``), builds the
base architecture, applies the method, lets the method map the keys
(``TokenMethod.convert_official_state_dict``) and loads strictly: a key it does not know, a missing key or a shape
that does not fit is refused in one line.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MethodOptionError, ModelNotFoundError

STATE_KEYS = ("model", "state_dict", "model_ema", "module")


def read_state_dict(file: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.pth/.pt/.bin pickle or .safetensors), unwrapped from ``key``."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path))
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):  # for this load only, not every later one
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling problem is the file's
            raise ModelNotFoundError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}).") from None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ModelNotFoundError(f"{path} has no entry {key!r} (entries: {', '.join(map(str, obj))}).")
        obj = obj[key]
    else:
        for k in STATE_KEYS:
            if isinstance(obj, dict) and k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelNotFoundError(f"{path} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def import_checkpoint(
    file: str | os.PathLike,
    base: str,
    method: str,
    *,
    key: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build ``base`` (a timm name, e.g. ``deit_small_patch16_224``) with ``method`` and the official weights."""
    from ..methods import apply_method
    from .load import load_model

    state = read_state_dict(file, key)
    model = load_model(base, pretrained=False)
    apply_method(model, method, **options)
    mapped = model.vitprune_method.convert_official_state_dict(state, model)
    own = model.state_dict()
    unknown = [k for k in mapped if k not in own]
    if unknown:
        raise MethodOptionError(f"{Path(file).name}: key {unknown[0]!r} is not part of {base} with {method}.")
    missing = [k for k in own if k not in mapped]
    if missing:
        raise MethodOptionError(f"{Path(file).name}: no tensor for {missing[0]!r} ({len(missing)} missing).")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise MethodOptionError(
                f"{Path(file).name}: {k} has shape {tuple(v.shape)}, {base} needs {tuple(own[k].shape)}.")
    model.load_state_dict(mapped, strict=True)
    model.vitprune_base_model = base
    return model.eval()
