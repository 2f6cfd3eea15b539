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

import ast
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import MethodOptionError
from ..methods import apply_method
from ..methods.registry import get_method_class
from .checkpoint import STATE_KEYS, read_checkpoint, read_state_dict  # noqa: F401 - also imported from here
from .load import load_model


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
