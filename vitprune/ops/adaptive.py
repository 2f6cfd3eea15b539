"""Per-image (adaptive) token counts and the masks and paddings that run them without per-image Python loops.

Adaptive token pruning keeps, for each image, the smallest set of patch tokens whose importance mass reaches a
threshold: the counts differ between images, so a batch is either padded to its largest count (padding slots
hidden from attention by an additive key mask) or, in training, kept at full length with a keep mask. These ops
work on *patch* scores only (``B x P``, positions after the ``num_prefix`` prefix tokens); prefix tokens (class,
distillation, register) are never scored, counted, dropped or fused, and stay first.

Conventions as in :mod:`vitprune.ops.tokens`: ``valid`` (``B x P`` bool, or ``None`` for all) marks the patch
slots that hold a live token (padding and already-pruned slots are ``False``); no op loops over samples or tokens
in Python, and none synchronises with the host.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .tokens import keep_tokens, num_kept

_EPS = 1e-9


def _ceil_frac(fraction: float, n: Tensor) -> Tensor:
    """``ceil(fraction * n)`` per element in float64 (``0.7 * 10`` is 7, not 8), as long."""
    return torch.ceil(n.double() * fraction - _EPS).long()


def valid_counts(valid: Optional[Tensor], batch: int, num_patches: int, device: torch.device) -> Tensor:
    """Live patch tokens per image (``B``, long)."""
    if valid is None:
        return torch.full((batch,), num_patches, dtype=torch.long, device=device)
    return valid.sum(dim=1)


def order_by_score(scores: Tensor, valid: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(sorted_scores, order)``: patch positions by descending score, dead slots last, ties in position order.

    ``sorted_scores`` is ``>= 0`` with dead slots at 0 (so they carry no mass), float32.
    """
    s = scores.float().clamp_min(0.0)
    key = s if valid is None else s.masked_fill(~valid, -1.0)
    sorted_key, order = torch.sort(key, dim=1, descending=True, stable=True)
    return sorted_key.clamp_min(0.0), order


def mass_keep_counts(
    sorted_scores: Tensor, threshold: float, min_fraction: float, n_valid: Tensor,
) -> Tensor:
    """Per-image kept counts (``B``, long) of SaiT's adaptive rule, from descending ``sorted_scores``.

    The count is the length of the shortest prefix whose mass, normalised to sum 1 over the live patches, reaches
    ``threshold``; never more than ``ceil(threshold * n)`` (true in exact arithmetic since the prefix is sorted,
    enforced against float rounding), then clamped to ``[ceil(min_fraction * n), n]`` with ``n`` the live patches.
    """
    total = sorted_scores.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    cum = (sorted_scores / total).cumsum(dim=1)
    k = (cum < threshold).sum(dim=1) + 1
    k = torch.minimum(k, _ceil_frac(threshold, n_valid))
    k = torch.maximum(k, _ceil_frac(min_fraction, n_valid))
    return torch.minimum(k, n_valid)


def fixed_keep_count(rate: float, n: int, min_fraction: float) -> int:
    """Kept patch tokens at a fixed rate: ``ceil(rate * n)``, at least ``ceil(min_fraction * n)``, at most ``n``."""
    k = num_kept(rate, n, "ceil")
    return min(n, max(k, math.ceil(min_fraction * n - _EPS)))


def adaptive_count_bound(threshold: float, min_fraction: float, n: int) -> int:
    """The most tokens :func:`mass_keep_counts` can keep out of ``n`` (an image with uniform importance)."""
    if threshold >= 1.0:
        return n
    k = max(math.ceil(threshold * n - _EPS), math.ceil(min_fraction * n - _EPS))
    return min(n, k)


def rank_keep_mask(order: Tensor, counts: Tensor) -> Tensor:
    """``B x P`` bool mask, True at the first ``counts[b]`` positions of ``order[b]`` (in original slot order)."""
    P = order.shape[1]
    in_prefix = torch.arange(P, device=order.device)[None, :] < counts[:, None]
    return torch.zeros_like(in_prefix).scatter(1, order, in_prefix)


def gather_padded(x: Tensor, order: Tensor, counts: Tensor, width: int, num_prefix: int) -> tuple[Tensor, Tensor]:
    """Keep each image's first ``counts[b]`` tokens of ``order`` in ``width`` slots (one gather).

    Returns ``(x', valid')``: ``x'`` is ``[prefix, patches[order[:, :width]]]``; slots past an image's count hold
    its next-ranked tokens (real values, never garbage) and are marked False in ``valid'`` (``B x width``).
    """
    idx = order[:, :width]
    valid = torch.arange(width, device=order.device)[None, :] < counts[:, None]
    return keep_tokens(x, idx, num_prefix), valid


def masked_fuse(patches: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
    """One token per image: ``sum_j mask_j * weights_j * patches_j`` (``B x 1 x C``); EViT's fusion over a mask."""
    w = (weights.float() * mask.float()).to(patches.dtype).unsqueeze(-1)
    return (patches * w).sum(dim=1, keepdim=True)


def patch_distribution(scores: Tensor, valid: Optional[Tensor] = None, eps: float = 1e-12) -> Tensor:
    """Importance over live patches normalised to sum 1 (``B x P``, float32, 0 on dead slots)."""
    s = scores.float().clamp_min(0.0)
    if valid is not None:
        s = s.masked_fill(~valid, 0.0)
    return s / s.sum(dim=1, keepdim=True).clamp_min(eps)


def distribution_kl(target: Tensor, student: Tensor, valid: Optional[Tensor] = None, eps: float = 1e-8) -> Tensor:
    """Mean over the batch of ``KL(target || student)``, both renormalised over the live patches ``valid``.

    ``target`` and ``student`` are non-negative ``B x P`` importances (e.g. head-averaged class-attention rows over
    patch keys); 0 when they agree, positive otherwise. Gradients flow into ``student`` only if it carries them.
    """
    t = patch_distribution(target, valid)
    s = patch_distribution(student, valid)
    terms = torch.where(t > 0, t * (torch.log(t.clamp_min(eps)) - torch.log(s.clamp_min(eps))), torch.zeros_like(t))
    return terms.sum(dim=1).mean()


__all__ = [
    "adaptive_count_bound", "distribution_kl", "fixed_keep_count", "gather_padded", "mass_keep_counts",
    "masked_fuse", "order_by_score", "patch_distribution", "rank_keep_mask", "valid_counts",
]
