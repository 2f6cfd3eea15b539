"""Multiply-accumulate counts with fvcore, for dense and patched ViTs.

fvcore counts one multiply-add as one "flop" (a MAC); the token-pruning papers print the same numbers as
"GFLOPs". vitprune reports them as "GMACs (papers' GFLOPs)".

fvcore's defaults miss ``aten::scaled_dot_product_attention`` (timm's fused attention): DeiT-S would read 4.251
instead of 4.608 GMAC. vitprune registers handles for it and for the other matrix ops timm ViTs and the methods
emit that fvcore does not know. fvcore's own conventions stay: linear/matmul MACs, 5 x numel per affine
LayerNorm, element-wise ops (add, GELU, softmax) not counted: so are the rotary embeddings of timm's Eva models
(a multiply-add of q and k with per-token sin/cos rows) and the SiLU and product of their SwiGLU MLPs, whose linear
layers are counted. Any op that is neither counted nor on fvcore's ignore list is reported in ``uncounted`` so the
report can say so.
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from typing import Any, Optional

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore's import touches the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

# element-wise or data-movement ops that fvcore does not list but that cost no MACs by its conventions
_NO_MAC_OPS = [
    "aten::gelu", "aten::softmax", "aten::log_softmax", "aten::add", "aten::add_", "aten::mul", "aten::mul_",
    "aten::div", "aten::div_", "aten::sub", "aten::rsub", "aten::sigmoid", "aten::exp", "aten::sum", "aten::mean",
    "aten::amax", "aten::topk", "aten::sort", "aten::argsort", "aten::scatter", "aten::scatter_add",
    "aten::scatter_add_", "aten::scatter_reduce", "aten::index_select", "aten::unbind", "aten::expand_as",
    "aten::new_ones", "aten::ones_like", "aten::zeros_like", "aten::masked_fill_", "aten::linalg_vector_norm",
    "aten::norm", "aten::clamp_min", "aten::log", "aten::reciprocal", "aten::pow", "aten::sqrt", "aten::rsqrt",
    "aten::argmax", "aten::cumsum", "aten::lt", "aten::le", "aten::ne", "aten::logical_not", "aten::where",
    "aten::abs", "aten::neg", "aten::type_as", "aten::to", "aten::repeat", "aten::repeat_interleave",
    "aten::avg_pool2d", "aten::adaptive_avg_pool1d", "aten::pad", "aten::tanh", "aten::erf", "aten::silu",
    "aten::split", "aten::split_with_sizes", "aten::stack", "aten::flip", "aten::roll", "aten::eye",
    "aten::max_pool2d", "aten::unflatten", "aten::movedim", "aten::square", "aten::gather", "aten::mse_loss",
    "aten::fill_", "aten::zero_", "aten::bitwise_and", "aten::bitwise_or", "aten::any", "aten::all", "aten::min",
    "aten::minimum", "aten::maximum", "aten::clone", "aten::masked_scatter", "aten::index_add",
    "aten::sin", "aten::cos", "aten::_upsample_bicubic2d_aa",  # rotary tables; NaFlexViT's position-table resize
]


def _shape(v: Any) -> Optional[list[int]]:
    t = v.type()
    sizes = getattr(t, "sizes", None)
    return list(sizes()) if sizes is not None and sizes() is not None else None


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::scaled_dot_product_attention``: ``QK^T`` (B H Nq Nk D) + ``AV`` (B H Nq Nk Dv)."""
    q, k, v = (_shape(inputs[i]) for i in range(3))
    *batch, nq, d = q
    nk, dv = k[-2], v[-1]
    return prod(batch) * nq * nk * (d + dv)


def baddbmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    a, b = _shape(inputs[1]), _shape(inputs[2])
    return a[0] * a[1] * a[2] * b[2]


@dataclass
class MacCount:
    """MACs per image of one forward pass."""

    macs: float
    by_operator: dict[str, float] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)  # op name -> occurrences fvcore skipped
    source: str = "fvcore"  # or "method" for an analytic, per-image count

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def model_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The input a model is built for: its patch embedding's image size (a model created with ``img_size=256``
    differs from its pretrained_cfg), else pretrained_cfg's ``input_size``."""
    cfg_size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    pe = getattr(model, "patch_embed", None) or getattr(model, "embeds", None)  # NaFlexViT: its embeds
    img = getattr(pe, "img_size", None) or getattr(pe, "default_img_size", None)
    if img is None:
        return cfg_size
    img = (img, img) if isinstance(img, int) else tuple(img)
    return (cfg_size[0], int(img[0]), int(img[1]))


def count_macs(
    model: nn.Module,
    input_size: Optional[tuple[int, int, int]] = None,
    images: Optional[torch.Tensor] = None,
) -> MacCount:
    """MACs per image of ``model`` in eval mode (pruning active), with fvcore plus vitprune's handles.

    ``images``: a real batch to count on (methods whose token counts depend on the image report the mean over
    it); otherwise one random image of ``input_size`` (default: the model's own).
    """
    was_training = model.training
    model.eval()
    try:
        if images is None:
            size = input_size or model_input_size(model)
            p = next(model.parameters())
            images = torch.randn(1, *size, device=p.device, dtype=p.dtype)
        method = getattr(model, "vitprune_method", None)
        if method is not None:
            with torch.no_grad():
                analytic = method.macs(model, images)
            if analytic is not None:
                return MacCount(macs=float(analytic), source="method")
        counter = FlopCountAnalysis(model, images)
        counter.set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
        counter.set_op_handle("aten::baddbmm", baddbmm_macs)
        counter.set_op_handle(**{op: None for op in _NO_MAC_OPS})
        counter.unsupported_ops_warnings(False)
        counter.uncalled_modules_warnings(False)
        counter.tracer_warnings("none")
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            total = counter.total()
            by_op = {k: v / images.shape[0] for k, v in counter.by_operator().items()}
            uncounted = dict(Counter(counter.unsupported_ops()))
        return MacCount(macs=total / images.shape[0], by_operator=by_op, uncounted=uncounted)
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
