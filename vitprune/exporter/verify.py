"""Check an exported file against PyTorch before reporting it: the same images through ONNX Runtime and the model.

Images: ``--images`` (files or ``demo:N``), else the first 8 digits of the bundled demo's val split. Either way they
go through the model's own evaluation preprocessing (timm's ``resolve_data_config`` + ``create_transform``: resize,
crop, normalisation from its ``pretrained_cfg``), so the digits reach a 224-px ImageNet model as 224-px normalised
images. They are real images with structure, which is what a token-selection rule ranks; for a model trained on
other data they check that ONNX Runtime computes what PyTorch computes, not accuracy.

Batch sizes: a dynamic-batch file is run at batch 1 (every image alone) and at batch 8 (all of them); a
fixed-batch file at its batch size (the images repeated to fill it).

Tolerance: ``max |Δlogit| <= 1e-4 x max(1, max |logit|)``. Both sides compute in float32 (unit roundoff 6e-8) with
different kernels and summation orders; measured between ONNX Runtime and PyTorch: 1e-7 to 2e-6 of the logit scale
(tiny test ViTs and DeiT-S, dense and every exportable method), so the bound leaves a margin of 50x over the largest
seen. One kept token chosen differently, a dense graph or a wrong gather moves logits by 1e-2 of their scale or
more, far above it. A model whose selection scores tie to the last bit (untrained DynamicViT predictors, whose
std-0.02 init gives keep scores equal to ~1e-7) can fail the check on some inputs: which of the tied tokens is
kept is then up to each backend's rounding, not a property of the export.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..errors import ExportError
from ..data import eval_transform
from ..data.images import load_images

RELATIVE_TOLERANCE = 1e-4
DEFAULT_IMAGES = 8


@dataclass
class Verification:
    """ONNX Runtime against PyTorch on the same images."""

    images: str  # what the images were, e.g. "8 demo digits"
    batch_sizes: list[int]
    max_abs_diff: float
    logit_scale: float  # max |logit| of PyTorch's outputs
    tolerance: float
    argmax_agree: int
    compared: int  # outputs compared (an image counts once per batch size)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        sizes = " and ".join(str(b) for b in self.batch_sizes)
        return (f"ONNX Runtime vs PyTorch on {self.images}, batch {sizes}: max |Δlogit| {self.max_abs_diff:.1e} "
                f"(tolerance {self.tolerance:.1e}), argmax agrees {self.argmax_agree}/{self.compared}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "relative_tolerance": RELATIVE_TOLERANCE}


def sample_images(model: nn.Module, images: Optional[Sequence[Any]] = None,
                  count: int = DEFAULT_IMAGES) -> tuple[torch.Tensor, str]:
    """(batch, description): ``images`` (files, ``demo:N``, PIL images) or the first ``count`` demo val digits,
    through ``model``'s own evaluation transform."""
    specs = list(images) if images else [f"demo:{i}" for i in range(count)]
    pil, _ = load_images(specs)
    transform = eval_transform(model)
    batch = torch.stack([transform(im) for im in pil])
    what = f"{len(specs)} demo digits" if not images else f"{len(specs)} image" + ("s" if len(specs) > 1 else "")
    return batch, what


def verify(run_onnx: Callable[[torch.Tensor], Any], model: nn.Module, images: torch.Tensor, what: str, *,
           batch_size: Optional[int] = None) -> Verification:
    """Compare ``run_onnx`` (e.g. an ``OrtModel``) with ``model`` on ``images`` and raise ``ExportError`` (one
    line) beyond the tolerance. ``batch_size``: the file's fixed batch (None: dynamic, checked at 1 and all)."""
    result = compare(run_onnx, model, images, what, batch_size=batch_size)
    if not math.isfinite(result.max_abs_diff) or not result.passed:
        raise ExportError(f"{result.summary()}: they disagree, so the export was not written.")
    return result


def compare(run_onnx: Callable[[torch.Tensor], Any], model: nn.Module, images: torch.Tensor, what: str, *,
            batch_size: Optional[int] = None) -> Verification:
    """``verify``'s comparison without its verdict: max |Δlogit| and argmax agreement at the batch sizes ``verify``
    uses (a quantized file is judged on them by ``vitprune.exporter.quantize``, not by the fp32 tolerance)."""
    n = images.shape[0]
    sizes = [batch_size] if batch_size else sorted({1, n})
    diff, scale, agree, compared = 0.0, 0.0, 0, 0
    model = model.eval()
    for b in sizes:
        for start in range(0, n, b):
            idx = (start + torch.arange(b)) % n  # full batches; a batch larger than the images repeats them
            x = images[idx]
            with torch.no_grad():
                ref = model(x).float()
            got = torch.as_tensor(run_onnx(x)).float()
            diff = max(diff, float((got - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            compared += b
    tol = RELATIVE_TOLERANCE * max(1.0, scale)
    return Verification(what, sizes, diff, scale, tol, agree, compared)


__all__ = ["DEFAULT_IMAGES", "RELATIVE_TOLERANCE", "Verification", "compare", "sample_images", "verify"]
