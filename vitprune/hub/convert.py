"""Import a checkpoint released by a method's authors (DynamicViT, EViT, Evo-ViT) as a vitprune model.

The official files are PyTorch pickles holding ``{"model": state_dict, "optimizer": ..., "args": ...}`` (or a bare
state dict). vitprune reads only tensors (``weights_only``; ``argparse.Namespace`` allowed for ``args``), builds the
base architecture, applies the method, lets the method map the keys
(``TokenMethod.convert_official_state_dict``) and loads strictly: a key it does not know, a missing key or a shape
that does not fit is refused in one line.

When the checkpoint stores the training script's arguments (``args``), the options they set (the method's
``official_args``, e.g. EViT's ``base_keep_rate``, ``drop_loc`` and ``fuse_token``) are used for every option the
caller leaves out, and an option the caller gives with another value is refused: the weights were trained for the
stored one.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ast
from safetensors.torch import load_file

from ..errors import MethodOptionError, ModelNotFoundError
from ..files import RefusedPath, check_regular, read_tensors
from ..methods import apply_method
from ..methods.registry import get_method_class

STATE_KEYS = ("model", "state_dict", "model_ema", "module")


def read_state_dict(file: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.pth/.pt/.bin pickle or .safetensors), unwrapped from ``key``."""
    return read_checkpoint(file, key)[0]


def read_checkpoint(file: str | os.PathLike, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a checkpoint file (unwrapped from ``key``) and its stored training arguments (``args``, an
    ``argparse.Namespace`` or a dict, as plain values; empty when there are none)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint {path} does not exist.")
    try:
        check_regular(path)
    except RefusedPath:
        raise ModelNotFoundError(f"checkpoint {path} is not a regular file.") from None
    if path.suffix == ".safetensors":
        obj: Any = load_file(str(path))
    else:
        try:  # argparse.Namespace allowed for this load only, not every later one
            obj = read_tensors(path, safe_globals=[argparse.Namespace])
        except Exception as e:  # noqa: BLE001 - any unpickling problem is the file's
            raise ModelNotFoundError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}).") from None
    args = obj.get("args") if isinstance(obj, dict) else None
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
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
    return {k.removeprefix("module."): v for k, v in obj.items()}, args


def stored_options(method: str, args: dict[str, Any], given: dict[str, Any], source: str) -> dict[str, Any]:
    """``given`` completed with the options the training arguments ``args`` set (the method's ``official_args``);
    an option given with a value other than the stored one raises MethodOptionError."""
    cls = get_method_class(method)
    stored = {}
    for arg, option in cls.official_args.items():
        if args.get(arg) is not None:
            stored[option] = cls.Options.from_dict(cls.name, {option: _plain(args[arg])}).to_dict()[option]
    for option, value in stored.items():
        if option in given:
            mine = cls.Options.from_dict(cls.name, {option: given[option]}).to_dict()[option]
            if mine != value:
                raise MethodOptionError(
                    f"{source} was trained with `{option}` {value} (its stored training arguments); `{option}` "
                    f"{given[option]} would load its weights under another setting. Leave `{option}` out.")
    return {**stored, **given}


def _plain(value: Any) -> Any:
    """A stored argument as an option value: the reference scripts keep block lists as text, e.g. ``"(3, 6, 9)"``."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)  # literals only, never code
        except (ValueError, SyntaxError):
            return value
    return list(value) if isinstance(value, tuple) else value


def import_checkpoint(
    file: str | os.PathLike,
    base: str,
    method: str,
    *,
    key: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build ``base`` (a timm name, e.g. ``deit_small_patch16_224``) with ``method`` and the official weights;
    options the checkpoint's training arguments set are taken from there unless given (the same value only)."""
    from .load import load_model

    state, args = read_checkpoint(file, key)
    options = stored_options(method, args, options, Path(file).name)
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
