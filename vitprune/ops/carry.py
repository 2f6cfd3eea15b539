"""Run blocks on a subset of the tokens and carry the others along unchanged.

Evo-ViT's "slow" tokens (the informative patches, plus every prefix token) go through a stage of blocks while the
placeholders wait; afterwards the processed tokens are written back where they came from. These ops do that with
one gather in and one scatter out per stage, keeping the full sequence in its original order (so a score vector
over the patches stays aligned with the tokens, and a token's position is its patch's position).

Conventions as in :mod:`vitprune.ops.tokens`: ``x`` is ``B x N x C`` with ``num_prefix`` prefix tokens first;
``idx`` (``B x k``) addresses *patch* tokens (``0..N-num_prefix-1``). Prefix tokens (class, distillation,
registers) are always part of the subset, never scored or weighted, and stay first. No Python loop over samples
or tokens and no host synchronisation.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .tokens import take_rows

_EPS = 1e-12


def prefixed_index(idx: Tensor, num_prefix: int) -> Tensor:
    """Sequence positions ``[0..num_prefix-1, num_prefix + idx]`` (``B x (num_prefix + k)``) of the prefix tokens
    and the chosen patches: the index :func:`take` and :func:`put` use."""
    if num_prefix == 0:
        return idx
    prefix = torch.arange(num_prefix, device=idx.device, dtype=idx.dtype).expand(idx.shape[0], num_prefix)
    return torch.cat([prefix, idx + num_prefix], dim=1)


def take(x: Tensor, positions: Tensor) -> Tensor:
    """``x`` at sequence ``positions`` (``B x M`` from :func:`prefixed_index`) -> ``B x M x C``: one gather."""
    return take_rows(x, positions)


def put(x: Tensor, positions: Tensor, src: Tensor) -> Tensor:
    """A copy of ``x`` with ``src`` (``B x M x C``) written at sequence ``positions``: one scatter. Tokens not in
    ``positions`` are carried over bit for bit. Out of place, so it is differentiable and safe under autograd."""
    return x.scatter(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]), src.to(x.dtype))


def chosen_positions(idx: Tensor, num_patches: int, fill: int = -1) -> Tensor:
    """``B x P`` long: for every patch, its position among the chosen ones (``0..k-1``), or ``fill`` when it was not
    chosen. This is the ``assignment`` a token map records (``fill = -1``: not represented by any live token)."""
    B, k = idx.shape
    out = torch.full((B, num_patches), fill, dtype=torch.long, device=idx.device)
    return out.scatter(1, idx, torch.arange(k, device=idx.device).expand(B, k))


def rest_mask(idx: Tensor, num_patches: int) -> Tensor:
    """``B x P`` float mask: 1 for the patches *not* in ``idx``, 0 for the chosen ones."""
    mask = torch.ones(idx.shape[0], num_patches, device=idx.device)
    return mask.scatter(1, idx, 0.0)


def rest_weighted_token(patches: Tensor, scores: Tensor, idx: Tensor) -> Tensor:
    """One token summarising the patches *not* in ``idx``: ``sum_j w_j x_j`` with ``w_j = s_j / sum s`` over those
    patches (normalised weights) -> ``B x 1 x C``. ``patches`` ``B x P x C``, ``scores`` ``B x P`` (>= 0).

    Evo-ViT's representative token. No gather of the rest: the chosen patches get weight 0 and the sum is one
    batched matrix product. If every weight of an image is 0 the token is 0 (no division by zero)."""
    w = scores.float() * rest_mask(idx, patches.shape[1])
    w = w / w.sum(dim=1, keepdim=True).clamp_min(_EPS)
    return torch.bmm(w.unsqueeze(1).to(patches.dtype), patches)
