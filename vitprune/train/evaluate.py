"""Top-1 / top-5 accuracy and cross-entropy of a model on a dataset split."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..measure.speed import autocast, resolve_device, resolve_dtype


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    loss: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def evaluate(
    model: Union[str, nn.Module],
    data: Union[str, Any] = "demo",
    *,
    split: str = "val",
    batch_size: int = 64,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    workers: int = 0,
    on_batch: Optional[Callable[[int], None]] = None,
) -> EvalResult:
    """Evaluate ``model`` (or MODEL spec) on ``data`` (a dataset spec such as ``demo``, or a dataset object)."""
    from ..data import build_split, eval_transform
    from ..hub import load_model

    if isinstance(model, str):
        model = load_model(model)
    dev = resolve_device(device)
    dt = "fp32" if dtype is None and dev.type == "cpu" else resolve_dtype(dtype, dev)
    dataset = build_split(data, split, eval_transform(model)) if isinstance(data, str) else data
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    model = model.to(dev).eval()
    n, correct1, correct5, loss_sum = 0, 0, 0, 0.0
    for images, targets in loader:
        images, targets = images.to(dev), targets.to(dev)
        with autocast(dev, dt):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == targets).sum().item()
        correct5 += (top == targets[:, None]).any(dim=1).sum().item()
        n += targets.numel()
        if on_batch:
            on_batch(targets.numel())
    return EvalResult(top1=100.0 * correct1 / n, top5=100.0 * correct5 / n, loss=loss_sum / n, images=n)
