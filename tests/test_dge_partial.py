"""DGE on patch grids its region size does not divide (DINOv2 at 518 px: 37x37; FlexiViT at 240 px: 15x15): the
grid is padded to whole regions, border cells average their real patches, padding is never a key."""
from __future__ import annotations

import copy

import pytest
import torch

import vitprune
from vitprune.measure import count_macs
from vitprune.ops.gridpad import GridPad

from .conftest import make_vit, photo_batch


def fvcore_macs(model, images):
    method = model.vitprune_method
    method.macs = lambda *a: None  # the instance attribute hides DGE's analytic count: fvcore counts the trace
    try:
        return count_macs(model, images=images).macs
    finally:
        del method.macs


def test_border_cells_are_the_mean_of_their_real_patches():
    torch.manual_seed(0)
    x = torch.randn(2, 1 + 3 * 5, 4)  # one prefix token, a 3x5 grid, region 2 -> padded 4x6
    pad = GridPad.of((3, 5), 2, 1, x.device)
    assert pad.padded == (4, 6) and torch.equal(pad.crop(pad.pad(x)), x)
    cells = pad.bank(pad.pad(x))  # level 1 of region 2: one cell per region, 2 x 3 of them
    grid = x[:, 1:].reshape(2, 3, 5, 4)
    for r in range(2):
        for c in range(3):
            want = grid[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(2, -1, 4).mean(1)
            torch.testing.assert_close(cells[:, r * 3 + c], want)
    assert GridPad.of((4, 6), 2, 1, x.device) is None  # divisible: nothing padded


@pytest.mark.parametrize("img, patch, grid", [(36, 4, 9), (60, 4, 15)])  # odd grids, as 37x37 and 15x15
def test_odd_grid_runs_identity_at_finest_and_paths_agree(img, patch, grid):
    base = make_vit(depth=3, img_size=img, patch_size=patch, reg_tokens=2)
    x = photo_batch(img)
    m = vitprune.apply_method(copy.deepcopy(base), "dge", router_init="budget", budget=0.5).eval()
    meth = m.vitprune_method
    assert meth.region_size == 2 and f"{grid}x{grid}" in meth.region_note
    meth.set_levels(m, [0] * 3)
    with torch.no_grad():
        dense = base(x)
        assert torch.equal(m(x), dense)  # finest everywhere: timm's blocks on the real tokens
        meth.identity_shortcut = False  # the pooled-query path at the finest level, padding hidden as keys
        torch.testing.assert_close(m(x), dense, atol=1e-5, rtol=1e-5)
        meth.identity_shortcut = True
        meth.set_levels(m, [0, 1, 1])
        uniform = m(x)
        meth.use_static_routers = False  # the same decisions through the router, gather and scatter
        torch.testing.assert_close(m(x), uniform, atol=1e-5, rtol=1e-5)
    # analytic MACs == fvcore's count of what runs, on the routed path with every block pooled (a block whose
    # regions are all finest reads its router only on the host, which fvcore's trace does not see)
    meth.set_levels(m, [1, 1, 1])
    assert meth.macs(m, x[:1]) == pytest.approx(fvcore_macs(m, x[:1]), rel=1e-9)
    assert meth.macs(m, x[:1]) < count_macs(base, images=x[:1]).macs
    m.train()
    m(x).sum().backward()  # training: every granularity on the padded grid, gradients reach the routers
    assert m.dge_routers[1].weight.grad.abs().sum() > 0
