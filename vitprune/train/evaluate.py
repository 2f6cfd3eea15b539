"""Top-1 / top-5 accuracy and cross-entropy of a model on a dataset split; for a model without a classifier
(``losses.feature_output``: no head, or an embedding head such as CLIP's projection) the feature agreement instead:
the mean cosine similarity of its output to a reference model's (the dense tower) on the same images."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..measure.speed import autocast, resolve_device, resolve_dtype
from ..errors import DataError
from ..methods import dense_copy, get_method
from ..data import Splits, build_split, collate, eval_transform, worker_init
from .losses import feature_output

log = logging.getLogger("vitprune")


@dataclass
class EvalResult:
    top1: Optional[float]  # percent; None for a model without a classifier
    top5: Optional[float]  # percent
    loss: Optional[float]
    images: int
    skipped: int = 0  # unreadable images left out
    skipped_files: list[str] = field(default_factory=list, repr=False)
    #: a model without a classifier: the mean cosine similarity of its outputs to the reference model's
    cosine: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("skipped_files")
        return out


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Union[str, Any] = "demo",
    *,
    split: str = "val",
    batch_size: int = 64,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    workers: int = 0,
    val_split: Optional[float] = None,
    streaming: bool = False,
    on_batch: Optional[Callable[[int], None]] = None,
    reference: Optional[nn.Module] = None,
) -> EvalResult:
    """Evaluate ``model`` on ``data``: a dataset spec (``demo``, an ImageFolder-style folder, a
    ``save_to_disk`` folder, webdataset shards, ``hf:org/name``; ``streaming`` as ``load_data``'s), a loaded
    ``vitprune.data.Splits``, or a dataset object yielding ``(image, label)``. ``split`` is ``"train"``, ``"val"``
    or ``"test"`` (the held-out split training never reads; ``DataError`` naming the splits there are when the data
    has none).

    Labels are mapped onto the model's head (``vitprune.data.match_head``); data whose classes do not fit the head
    raise ``DataError``. Unreadable images are skipped and counted (``skipped``).

    A model without a classifier (``feature_output``) is scored without labels: ``cosine`` is the mean over images
    of the cosine similarity between its output and ``reference``'s (default: the dense model under a compressed
    one, ``methods.dense_copy``; a dense model is its own reference, 1.0); top-1, top-5 and loss are None.
    """
    features = feature_output(model)
    if features and reference is None and get_method(model) is not None:
        reference = dense_copy(model)
    dev = resolve_device(device)
    dt = "fp32" if dtype is None and dev.type == "cpu" else resolve_dtype(dtype, dev)
    if isinstance(data, (str, Splits)):
        dataset = build_split(data, split, eval_transform(model), val_split=val_split,
                              model=None if features else model, streaming=streaming)
    else:
        dataset = data
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate, worker_init_fn=worker_init)
    model = model.to(dev).eval()
    if reference is not None:
        reference = reference.to(dev).eval()
    n, correct1, correct5, loss_sum, cos_sum = 0, 0, 0, 0.0, 0.0
    skipped: list[str] = []
    for images, targets, bad in loader:
        for b in bad:
            log.warning("skipped unreadable image %s (%s)", b.where, b.reason)
            skipped.append(b.where)
        if targets.numel() == 0:
            continue
        images, targets = images.to(dev), targets.to(dev)
        with autocast(dev, dt):
            logits = model(images)
            ref = reference(images) if features and reference is not None else None
        logits = logits.float()
        if features:
            cos_sum += F.cosine_similarity(logits, ref.float(), dim=-1).sum().item() if ref is not None \
                else float(targets.numel())
            n += targets.numel()
            if on_batch:
                on_batch(targets.numel())
            continue
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == targets).sum().item()
        correct5 += (top == targets[:, None]).any(dim=1).sum().item()
        n += targets.numel()
        if on_batch:
            on_batch(targets.numel())
    if n == 0:
        raise DataError("no readable image in the evaluation split" + (f" ({len(skipped)} unreadable)" if skipped
                                                                       else "") + ".")
    if features:
        return EvalResult(top1=None, top5=None, loss=None, images=n, skipped=len(skipped), skipped_files=skipped,
                          cosine=cos_sum / n)
    return EvalResult(top1=100.0 * correct1 / n, top5=100.0 * correct5 / n, loss=loss_sum / n, images=n,
                      skipped=len(skipped), skipped_files=skipped)
