"""Region pooling and unpooling over the patch grid (Dynamic Grained Encoder, or any method working on cells).

Vocabulary. The ``H x W`` patch grid is tiled by square **regions** of ``region x region`` patches (row-major,
``G = H/region * W/region`` of them). A region is represented at one of ``K`` **levels**: level ``k`` cuts it into
**cells** of ``2^k x 2^k`` patches, so level 0 is one cell per patch (the finest, *split* = ``region``) and level
``K-1`` one cell per region (the coarsest, split 1). A cell's token is the mean of its patches.

**Sources.** Every token a query can be made of has a *source index*: ``0..N-1`` are the tokens of ``x`` itself
(the ``num_prefix`` prefix tokens, then the patches = level-0 cells), ``N..N+T-1`` the cells of the coarser levels
in the **coarse bank** (level 1 cells row-major, then level 2, ...). A per-image, per-region choice of level
(``decision``, ``B x G``, 0 = finest) makes some sources *active*: every prefix token, and for each region the cells
of its chosen level. An image's **queries** are its active sources in source order (prefix tokens first).

Every op keeps prefix tokens (class, distillation, registers) apart: they are never pooled or unpooled, are
always queries of their own, stay first and receive their own update. No op loops over samples or tokens in Python,
and none reads device values on the host (the one number that needs the host, the batch's widest query set, is
passed in by the caller).
"""
from __future__ import annotations

from functools import lru_cache, wraps
from typing import Callable, TypeVar

import torch
from torch import Tensor

from ..errors import MethodOptionError
from .tokens import take_rows

_F = TypeVar("_F", bound=Callable)


def _memo(fn: _F) -> _F:
    """``lru_cache`` for small constant tensors built from shapes, bypassed while torch.compile traces (it builds
    them into the graph as constants; dynamo warns about cache wrappers it has to look through)."""
    cached = lru_cache(maxsize=64)(fn)

    @wraps(fn)
    def call(*args):
        return fn(*args) if torch.compiler.is_compiling() else cached(*args)

    return call  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ geometry


def level_cells(region: int) -> list[int]:
    """Cell sides of a region's levels: ``[1, 2, 4, ..., region]`` (level 0 = one cell per patch). The matching
    splits (cells per region side) are ``region // cell``: ``[region, ..., 2, 1]``."""
    if region < 1 or region & (region - 1):
        raise MethodOptionError(f"region size must be a power of two, got {region}.")
    return [1 << k for k in range(region.bit_length())]


def coarse_offsets(grid: tuple[int, int], region: int) -> list[int]:
    """Start of each coarse level (1..K-1) in the coarse bank, then its length."""
    out, n = [0], 0
    for c in level_cells(region)[1:]:
        n += (grid[0] // c) * (grid[1] // c)
        out.append(n)
    return out


# ------------------------------------------------------------------------------------------ pooling


def pool_cells(x: Tensor, grid: tuple[int, int], cell: int, num_prefix: int = 0) -> Tensor:
    """Mean of the patch tokens over each ``cell x cell`` block of the grid: ``B x (H/cell * W/cell) x C``.
    ``x`` is ``B x (num_prefix + H*W) x C``; prefix tokens are left out. ``cell == 1`` returns the patches.
    A power-of-two cell is pooled 2x2 at a time (:func:`pool2x2`), as :func:`coarse_bank` does."""
    h, w = grid
    patches = x[:, num_prefix:]
    if cell == 1:
        return patches
    if cell & (cell - 1) == 0:
        for _ in range(cell.bit_length() - 1):
            patches = pool2x2(patches, (h, w))
            h, w = h // 2, w // 2
        return patches
    b, _, c = patches.shape
    return patches.reshape(b, h // cell, cell, w // cell, cell, c).mean(dim=(2, 4)).reshape(b, -1, c)


def pool2x2(patches: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean over every 2x2 block of a ``B x H*W x C`` grid of tokens (no prefix): ``B x (H/2 * W/2) x C``.

    Three element-wise adds on strided views and one scale, accumulated in float32 for half types. A reduction
    over the two size-2 dimensions of a 6-d view (``mean(dim=(2, 4))``) gives the same values up to float rounding
    but is some 30x slower on CPU, where it was the largest cost of a DGE block after the matrix products."""
    h, w = grid
    b, _, c = patches.shape
    v = patches.reshape(b, h // 2, 2, w // 2, 2, c)
    if v.dtype in (torch.float16, torch.bfloat16):
        v = v.float()
    out = (v[:, :, 0, :, 0] + v[:, :, 0, :, 1]) + (v[:, :, 1, :, 0] + v[:, :, 1, :, 1])
    return out.mul_(0.25).reshape(b, -1, c).to(patches.dtype)


def unpool_cells(cells: Tensor, grid: tuple[int, int], cell: int) -> Tensor:
    """Inverse layout of :func:`pool_cells`: every patch receives its cell's value. ``cells`` is
    ``B x (H/cell * W/cell) x ...``; returns ``B x H*W x ...`` (trailing dimensions kept)."""
    h, w = grid
    if cell == 1:
        return cells
    b, _, *rest = cells.shape
    t = cells.reshape(b, h // cell, 1, w // cell, 1, *rest).expand(b, h // cell, cell, w // cell, cell, *rest)
    return t.reshape(b, h * w, *rest)


def coarse_bank(x: Tensor, grid: tuple[int, int], region: int, num_prefix: int = 0) -> Tensor:
    """Cell tokens of levels 1..K-1 (``B x T x C``), each level pooled 2x2 from the one below (the mean of equal
    cells' means is the cells' mean). The last ``G`` rows are the region means."""
    levels, cur, g = [], x[:, num_prefix:], grid
    for _ in level_cells(region)[1:]:
        cur = pool2x2(cur, g)
        g = (g[0] // 2, g[1] // 2)
        levels.append(cur)
    return torch.cat(levels, dim=1)


def region_means(bank: Tensor, grid: tuple[int, int], region: int) -> Tensor:
    """The coarsest level of a coarse bank: the mean token of every region (``B x G x C``)."""
    return bank[:, coarse_offsets(grid, region)[-2]:]


def region_to_patches(t: Tensor, grid: tuple[int, int], region: int) -> Tensor:
    """A per-region tensor (``B x G`` or ``B x G x K``) spread to the patches (``B x H*W`` / ``B x H*W x K``)."""
    return unpool_cells(t, grid, region)


# ------------------------------------------------------------------------------------------ queries


def query_counts(decision: Tensor, region: int, num_prefix: int = 0) -> Tensor:
    """Queries per image (``B``, long): prefix tokens plus ``(region / 2^k)^2`` per region at level ``k``."""
    return _per_level(region, decision.device, torch.long)[decision].sum(dim=1) + num_prefix


def soft_query_counts(gates: Tensor, region: int, num_prefix: int = 0) -> Tensor:
    """Differentiable queries per image from one-hot (straight-through) gates ``B x G x K``: float ``B``."""
    return (gates * _per_level(region, gates.device, gates.dtype)).sum(dim=(1, 2)) + num_prefix


@_memo
def _per_level(region: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor([(region // c) ** 2 for c in level_cells(region)], dtype=dtype).to(device)


@_memo
def _source_ids(grid: tuple[int, int], region: int, num_prefix: int, device: torch.device) -> Tensor:
    """``K x H*W``: source index of the level-``k`` cell holding each patch."""
    h, w = grid
    n = num_prefix + h * w
    offs = coarse_offsets(grid, region)
    r, c = torch.arange(h).view(h, 1), torch.arange(w).view(1, w)
    ids = [num_prefix + (r * w + c).reshape(-1)]
    for k, s in enumerate(level_cells(region)[1:]):
        ids.append(n + offs[k] + ((r // s) * (w // s) + (c // s)).reshape(-1))
    return torch.stack(ids).to(device)


def source_ids(grid: tuple[int, int], region: int, num_prefix: int, device: torch.device) -> Tensor:
    """``K x H*W`` long: for level ``k`` and patch ``p``, the source index of the level-``k`` cell holding ``p``
    (built once per grid and device: no host-to-device copy per call)."""
    return _source_ids(tuple(grid), region, num_prefix, torch.device(device))


def active_sources(decision: Tensor, grid: tuple[int, int], region: int, num_prefix: int = 0) -> Tensor:
    """``B x (N + T)`` bool: prefix tokens always, and each region's cells at its chosen level."""
    h, w = grid
    parts = [decision.new_ones(decision.shape[0], num_prefix, dtype=torch.bool),
             region_to_patches(decision, grid, region) == 0]
    for k, s in enumerate(level_cells(region)[1:], start=1):
        parts.append(unpool_cells(decision, (h // s, w // s), region // s) == k)
    return torch.cat(parts, dim=1)


def plan_queries(decision: Tensor, grid: tuple[int, int], region: int, num_prefix: int = 0) -> tuple[Tensor, Tensor]:
    """Where every image's queries come from and where their updates go, for any width.

    Returns ``(order, src)``: ``order`` (``B x (N + T)``) lists each image's active sources first, in source order
    (so its first ``num_prefix`` entries are the prefix tokens), then the inactive ones; ``src`` (``B x N``) gives
    for every token of ``x`` the query position that stands for it (prefix token ``i`` -> ``i``). Slice ``order``
    to the batch's widest query count and use :func:`gather_queries` / :func:`unpool_delta`.
    """
    active = active_sources(decision, grid, region, num_prefix)
    order = torch.argsort((~active).to(torch.int32), dim=1, stable=True)
    pos = torch.cumsum(active.to(torch.int32), dim=1) - 1  # query position of every active source
    ids = source_ids(grid, region, num_prefix, decision.device)  # K x P
    level = region_to_patches(decision, grid, region)  # B x P
    cell = torch.gather(ids.unsqueeze(0).expand(decision.shape[0], -1, -1), 1, level.unsqueeze(1)).squeeze(1)
    src = torch.gather(pos, 1, cell).to(torch.long)
    if num_prefix:
        src = torch.cat([_arange(num_prefix, src.device).expand(src.shape[0], -1), src], dim=1)
    return order, src


@_memo
def _arange(n: int, device: torch.device) -> Tensor:
    return torch.arange(n, device=device)


def gather_queries(x: Tensor, bank: Tensor, order: Tensor) -> Tensor:
    """Compress: the queries ``order`` names (``B x M``, source indices) from ``x`` (``B x N x C``) and the coarse
    bank (``B x T x C``): ``B x M x C``. Two row gathers of ``M`` rows each (no copy of ``x``)."""
    n = x.shape[1]
    from_x = take_rows(x, order.clamp(max=n - 1))
    from_bank = take_rows(bank, (order - n).clamp(min=0))
    return torch.where((order < n).unsqueeze(-1), from_x, from_bank.to(from_x.dtype))


def unpool_delta(x: Tensor, delta: Tensor, src: Tensor) -> Tensor:
    """Decompress with the residual: ``x + unpool(delta)``; every token (prefix included) receives the update of the
    query ``src`` names (``B x N``). One row gather, one add."""
    return x + take_rows(delta, src).to(x.dtype)


def uniform_queries(x: Tensor, grid: tuple[int, int], region: int, level: int, num_prefix: int = 0) -> Tensor:
    """Compress when every region of every image takes the same ``level``: the prefix tokens, then the level's cells
    in source order (``B x (num_prefix + H*W / 4^level) x C``): what :func:`gather_queries` returns for such a
    decision, with no index and no padding. Level 0 is ``x`` itself."""
    if level == 0:
        return x
    cells = pool_cells(x, grid, level_cells(region)[level], num_prefix)
    return torch.cat([x[:, :num_prefix], cells.to(x.dtype)], dim=1)


def uniform_unpool_delta(x: Tensor, delta: Tensor, grid: tuple[int, int], region: int, level: int,
                         num_prefix: int = 0) -> Tensor:
    """Decompress for :func:`uniform_queries`: ``x + unpool(delta)`` with every patch receiving its cell's update by
    broadcasting (no index); the prefix tokens receive their own."""
    delta = delta.to(x.dtype)
    if level == 0:
        return x + delta
    h, w = grid
    cell = level_cells(region)[level]
    b, _, c = x.shape
    patches = x[:, num_prefix:].reshape(b, h // cell, cell, w // cell, cell, c)
    upd = patches + delta[:, num_prefix:].reshape(b, h // cell, 1, w // cell, 1, c)
    return torch.cat([x[:, :num_prefix] + delta[:, :num_prefix], upd.reshape(b, h * w, c)], dim=1)


def uniform_assignment(batch: int, grid: tuple[int, int], region: int, level: int, device: torch.device) -> Tensor:
    """``B x H*W`` long: for every patch, the index of its level-``level`` cell among the cells (row-major), i.e.
    the query (after the prefix tokens) that stands for it when every region takes ``level``."""
    ids = source_ids(grid, region, 0, device)[level]
    if level:
        ids = ids - (grid[0] * grid[1] + coarse_offsets(grid, region)[level - 1])
    return ids.expand(batch, -1)


# ------------------------------------------------------------------------------------------ training


def all_sources(x: Tensor, bank: Tensor) -> Tensor:
    """Training: every source as a query (``B x (N + T) x C``, static): all granularities computed densely."""
    return torch.cat([x, bank.to(x.dtype)], dim=1)


def mix_level_deltas(delta: Tensor, gates: Tensor, grid: tuple[int, int], region: int, num_prefix: int = 0) -> Tensor:
    """Training: the update of every token from the updates of all sources (``delta``, ``B x (N + T) x C``) mixed by
    the per-region gates (``B x G x K``, one-hot forward, straight-through gradients): prefix tokens take their own,
    patch ``p`` takes ``sum_k gate_k(region(p)) * delta(level-k cell of p)``. ``B x N x C``."""
    n = num_prefix + grid[0] * grid[1]
    offs = coarse_offsets(grid, region)
    g = region_to_patches(gates.to(delta.dtype), grid, region)  # B x P x K
    out = g[..., :1] * delta[:, num_prefix:n]
    for k, c in enumerate(level_cells(region)[1:]):
        cells = delta[:, n + offs[k]:n + offs[k + 1]]
        out = out + g[..., k + 1:k + 2] * unpool_cells(cells, grid, c)
    return torch.cat([delta[:, :num_prefix], out], dim=1)
