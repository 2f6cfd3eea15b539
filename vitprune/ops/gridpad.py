"""A patch grid that a region size does not divide, padded to one it does, with partial regions at the border.

The ``H x W`` grid becomes ``ceil(H/R)*R x ceil(W/R)*R``; the extra patch slots are zero tokens, hidden as keys (an
additive attention bias), set back to zero before every block, and dropped at the end. A cell's mean over the
padded grid counts the zeros, so pooled cells are divided by the fraction of real patches they hold: a border
cell is the mean of its real patches only (a partial region), and a cell with no real patch is zero. Prefix tokens
stay first and are never padded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .regions import coarse_bank, coarse_offsets, level_cells


@dataclass
class GridPad:
    grid: tuple[int, int]  # the real patch grid
    padded: tuple[int, int]  # the grid the regions tile
    region: int
    num_prefix: int
    index: Tensor  # sequence positions of the real tokens (prefix included) in the padded sequence
    real: Tensor  # 1 x N' x 1: 1 at real tokens, 0 at padding slots
    bank_scale: Tensor  # T x 1: 1 / fraction of real patches of each coarse-bank cell (0 where none)

    @classmethod
    def of(cls, grid: tuple[int, int], region: int, num_prefix: int, device: torch.device) -> Optional["GridPad"]:
        """The padding of ``grid`` for ``region``, or None when the region size divides it (nothing to do)."""
        h, w = grid
        if h % region == 0 and w % region == 0:
            return None
        hp, wp = math.ceil(h / region) * region, math.ceil(w / region) * region
        rows = torch.arange(h, device=device)[:, None] * wp + torch.arange(w, device=device)[None, :]
        index = torch.cat([torch.arange(num_prefix, device=device), num_prefix + rows.reshape(-1)])
        real = torch.zeros(1, num_prefix + hp * wp, 1, device=device)
        real[:, index] = 1.0
        frac = coarse_bank(real, (hp, wp), region, num_prefix)[0]
        scale = torch.where(frac > 0, 1.0 / frac.clamp_min(1e-12), torch.zeros_like(frac))
        return cls(grid, (hp, wp), region, num_prefix, index, real, scale)

    @property
    def num_real(self) -> int:
        return int(self.index.numel())

    @property
    def num_padded(self) -> int:
        return self.num_prefix + self.padded[0] * self.padded[1]

    def pad(self, x: Tensor) -> Tensor:
        """``B x N x C`` real tokens -> ``B x N' x C`` with zero padding slots."""
        out = x.new_zeros(x.shape[0], self.num_padded, x.shape[2])
        return out.index_copy(1, self.index, x)

    def crop(self, x: Tensor) -> Tensor:
        """The real tokens of a padded sequence (the inverse of :meth:`pad`)."""
        return x.index_select(1, self.index)

    def crop_patches(self, t: Tensor) -> Tensor:
        """A per-patch ``B x H'W'`` tensor of the padded grid -> its real patches ``B x HW``."""
        return t.index_select(1, self.index[self.num_prefix:] - self.num_prefix)

    def zero(self, x: Tensor) -> Tensor:
        """Padding slots back to zero (they are queries in some blocks and receive updates)."""
        return x * self.real.to(x.dtype)

    def key_bias(self, dtype: torch.dtype) -> Tensor:
        """Additive SDPA bias (``1 x 1 x 1 x N'``) hiding the padding slots as keys."""
        bias = torch.zeros(self.num_padded, dtype=dtype, device=self.real.device)
        return bias.masked_fill(self.real[0, :, 0] == 0, torch.finfo(dtype).min)[None, None, None, :]

    def bank(self, x: Tensor) -> Tensor:
        """:func:`regions.coarse_bank` of the padded sequence, each cell the mean of its real patches."""
        bank = coarse_bank(x, self.padded, self.region, self.num_prefix)
        return bank * self.bank_scale.to(bank.dtype)

    def level_scale(self, level: int) -> Tensor:
        """The real-patch correction of the cells of one coarse ``level`` (``1..K-1``), ``P_level x 1``."""
        offsets = coarse_offsets(self.padded, self.region)
        assert 1 <= level < len(level_cells(self.region))
        return self.bank_scale[offsets[level - 1]:offsets[level]]
