"""Token-sparsification methods behind one contract (see ``base.py``) and a registry."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import MethodOptionError
from .base import (
    MethodOptions, PatchedViT, StepContext, TeacherOutput, TokenMethod, TokenState, patched_class, tracking, vit_info,
)
from .registry import create_method, describe_methods, get_method_class, method_names, register


def apply_method(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Patch a timm ViT in place with a token-sparsification method and return it.

    >>> model = timm.create_model("deit_small_patch16_224")
    >>> vitprune.apply_method(model, "dynamicvit", keep_rate=0.7)

    The patched model trains (the paper's training behaviour) and infers (tokens really removed) as is.
    """
    if getattr(model, "vitprune_method", None) is not None:
        raise MethodOptionError(
            f"this model is already patched with {model.vitprune_method.name}; start from the dense model.")
    m = create_method(method, **options)
    m.info = m.supports(model)
    m.patch(model)
    model.__class__ = patched_class(type(model))
    model.vitprune_method = m
    return model


def dense_copy(model: nn.Module) -> nn.Module:
    """A dense copy of a (patched or dense) model: same backbone weights, method modules and patch removed."""
    import copy

    from .base import unpatched_class

    dense = copy.deepcopy(model)
    method = getattr(dense, "vitprune_method", None)
    if method is not None:
        method.unpatch(dense)
        dense.__class__ = unpatched_class(type(dense))
        del dense.vitprune_method
    for attr in ("vitprune_state", "_vitprune_track"):
        dense.__dict__.pop(attr, None)
    return dense


def get_method(model: nn.Module) -> TokenMethod | None:
    """The method a model is patched with, or None for a dense model."""
    return getattr(model, "vitprune_method", None)


def list_methods() -> list[str]:
    return method_names()


__all__ = [
    "MethodOptions", "PatchedViT", "StepContext", "TeacherOutput", "TokenMethod", "TokenState", "apply_method",
    "create_method", "describe_methods", "dense_copy", "get_method", "get_method_class", "list_methods", "method_names", "patched_class",
    "register", "tracking", "vit_info",
]
