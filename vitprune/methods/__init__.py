"""Token-sparsification methods behind one contract (see ``base.py``) and a registry.

Every method module is imported here, once, in the order ``vitprune methods`` lists them; importing it registers
its class (``@register``). A new method is one module plus its line below.
"""
from __future__ import annotations

from typing import Any

from torch import nn

import copy

from ..errors import MethodOptionError
from .base import (
    MethodOptions, OptionSpec, PatchedViT, StepContext, TeacherOutput, TokenMethod, TokenState, option_specs,
    patched_class, tracking, unpatched_class, vit_info, warn_ignored,
)
from .registry import create_method, describe_methods, get_method_class, method_classes, method_names, register
from . import dynamicvit, evit, evovit, tome, dge, sait  # noqa: E402, F401, I001  (each registers its method)


def apply_method(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Patch a timm ViT in place with a token-sparsification method and return it.

    >>> model = timm.create_model("deit_small_patch16_224")
    >>> vitprune.apply_method(model, "dynamicvit", keep_rate=0.7)

    The patched model trains (the paper's training behaviour) and infers (tokens really removed) as is.
    """
    m = create_method(method, **options)
    warn_ignored(m.options, options)  # an option the chosen setting ignores says so
    return patch_with(model, m)


def patch_with(model: nn.Module, m: TokenMethod) -> nn.Module:
    """Patch ``model`` in place with the method object ``m`` (``apply_method`` without the option handling; what
    ``vitprune.load`` uses to rebuild a saved model from its recorded options)."""
    if getattr(model, "vitprune_method", None) is not None:
        raise MethodOptionError(
            f"this model is already patched with {model.vitprune_method.name}; start from the dense model.")
    m.info = m.supports(model)
    m.patch(model)
    model.__class__ = patched_class(type(model))
    model.vitprune_method = m
    return model


def dense_copy(model: nn.Module) -> nn.Module:
    """A dense copy of a (patched or dense) model: same backbone weights, method modules and patch removed."""
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
    "MethodOptions", "OptionSpec", "PatchedViT", "StepContext", "TeacherOutput", "TokenMethod", "TokenState", "apply_method",
    "create_method", "describe_methods", "dense_copy", "get_method", "get_method_class", "list_methods",
    "method_classes", "method_names", "option_specs", "patch_with", "patched_class", "register", "tracking",
    "vit_info",
]
