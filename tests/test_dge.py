"""Dynamic Grained Encoder against the paper and the reference code: identity, counts, ops, MACs, training, bad input."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import timm
import torch
from typer.testing import CliRunner

import vitprune
from vitprune.cli.main import app
from vitprune.errors import MethodOptionError, UnsupportedModelError
from vitprune.measure import count_macs
from vitprune.methods import tracking, vit_info
from vitprune.ops.analytic import block_cost
from vitprune.methods.dge import init_bias
from vitprune.ops import regions

from .conftest import make_vit, photo_batch


def patched(model, **opts):
    return vitprune.apply_method(copy.deepcopy(model), "dge", **opts)


def fvcore_macs(model, images):
    """fvcore's count of the traced forward, with DGE's own analytic count switched off for this call."""
    method = model.vitprune_method
    method.macs = lambda *a: None  # instance attribute shadows the method: count_macs falls through to fvcore
    try:
        return count_macs(model, images=images)
    finally:
        del method.macs


def sharpen(model, factor=100.0):
    """Scale router logits so that Gumbel noise cannot change the argmax (training == inference decisions)."""
    with torch.no_grad():
        for lin in model.dge_routers:
            lin.weight.mul_(factor)
            lin.bias.mul_(factor)


# ------------------------------------------------------------------------------------------ identity


def test_all_finest_is_the_dense_model_bit_exact_and_through_the_compute_path(digits):
    base = make_vit(depth=6, embed_dim=96)
    m = patched(base)  # paper init: untrained routers pick the finest split everywhere
    meth = m.vitprune_method
    with torch.no_grad():
        dense = base(digits)
        assert torch.equal(m(digits), dense)  # skip path: timm's block as is
        meth.set_levels(m, [0] * 6)
        assert torch.equal(m(digits), dense)
        meth.identity_shortcut = False  # force compress -> block on queries -> decompress
        torch.testing.assert_close(m(digits), dense, atol=1e-5, rtol=0)
    with tracking(m), torch.no_grad():
        m(digits)
    assert all(bool((q == 65).all()) for q in m.vitprune_state.aux["queries"])


# ------------------------------------------------------------------------------------------ counts


@pytest.mark.slow
def test_token_and_query_counts_deit_s_224_region_falls_back_to_2(deit_small):
    m = patched(deit_small)
    meth = m.vitprune_method
    info = vit_info(m)
    assert meth.region_size == 2 and meth.splits == [2, 1] and m.vitprune_method.options.region_size == 2
    assert "14x14" in meth.region_note and "not divisible by 4" in meth.region_note
    assert meth.token_schedule(m) == [197] * 12  # DGE never shortens the sequence: every token is a key
    assert [meth.query_count(info, k) for k in range(2)] == [197, 1 + 49]
    assert len(m.dge_routers) == 12 and m.dge_routers[0].weight.shape == (2, 384)
    meth.set_levels(m, [0] * 6 + [1] * 6)
    x = photo_batch(224, names=("astronaut",))
    with tracking(m), torch.no_grad():
        m(x)
    st = m.vitprune_state
    assert st.counts == meth.token_schedule(m)
    assert [int(q[0]) for q in st.aux["queries"]] == [197] * 6 + [50] * 6


def test_counts_on_the_demo_teacher_shape_and_all_coarsest_queries(digits):
    """Oracle 2: split 1 everywhere on an 8x8 grid with R = 4 -> 4 patch queries + the class token per block."""
    m = patched(make_vit(depth=6, embed_dim=96))
    meth = m.vitprune_method
    assert meth.region_size == 4 and meth.splits == [4, 2, 1]
    assert sum(p.numel() for p in m.dge_routers.parameters()) == 6 * (3 * 96 + 3)
    meth.set_levels(m, [2, 2, 1, 1, 0, 2])
    with tracking(m), torch.no_grad():
        y = m(digits)
    st = m.vitprune_state
    assert y.shape == (8, 10)
    assert st.counts == meth.token_schedule(m) == [65] * 6
    assert [int(q[0]) for q in st.aux["queries"]] == [5, 5, 17, 17, 65, 5]
    assert all(bool((q == q[0]).all()) for q in st.aux["queries"])
    for block, assign in st.stages:  # token maps for `visualize`: each patch -> the query that stands for it
        assert assign.shape == (8, 64)
    assert st.stages[0][1][0].view(8, 8)[:4, :4].unique().tolist() == [0]  # one query for the first region
    assert st.stages[0][1][0].unique().numel() == 4


def test_router_shape_and_init_softmax():
    """Oracle 3: softmax of the initial bias = [0.95, 0.025, 0.025] (and [0.95, 0.05] with two splits)."""
    torch.testing.assert_close(init_bias(3).softmax(0), torch.tensor([0.95, 0.025, 0.025]))
    torch.testing.assert_close(init_bias(2).softmax(0), torch.tensor([0.95, 0.05]))
    assert init_bias(3)[0].item() == pytest.approx(1.819, abs=1e-3)
    m = patched(make_vit(depth=2))
    lin = m.dge_routers[1]
    assert lin.weight.shape == (3, 48) and lin.bias.shape == (3,)
    torch.testing.assert_close(lin.bias.softmax(0), torch.tensor([0.95, 0.025, 0.025]))
    assert 0.001 < lin.weight.std().item() < 0.02


# ------------------------------------------------------------------------------------------ ops


def test_compress_decompress_zero_delta_exact_and_constant_delta_reaches_its_cell():
    torch.manual_seed(0)
    grid, region, npre = (8, 8), 4, 2
    x = torch.randn(3, npre + 64, 5)
    decision = torch.tensor([[0, 1, 2, 1], [2, 2, 2, 2], [0, 0, 0, 0]])
    counts = regions.query_counts(decision, region, npre)
    assert counts.tolist() == [npre + 16 + 4 + 1 + 4, npre + 4, npre + 64]
    bank = regions.coarse_bank(x, grid, region, npre)
    order, src = regions.plan_queries(decision, grid, region, npre)
    width = int(counts.max())
    q0 = regions.gather_queries(x, bank, order[:, :width])
    assert torch.equal(q0[:, :npre], x[:, :npre])  # prefix tokens are queries as they are, first
    # image 1 is all coarsest: its queries are the four region means
    means = x[1, npre:].view(2, 4, 2, 4, 5).mean(dim=(1, 3)).reshape(4, 5)
    torch.testing.assert_close(q0[1, npre:npre + 4], means)
    assert torch.equal(regions.unpool_delta(x, torch.zeros_like(q0), src), x)
    # image 0: region 1 (top right) at split 2 -> its first cell is patches (0..1, 4..5)
    delta = torch.zeros_like(q0)
    cell_query = int(src[0, npre + 4])
    delta[0, cell_query] = 3.0
    out = regions.unpool_delta(x, delta, src)
    changed = (out != x).any(-1)[0, npre:].view(8, 8)
    expect = torch.zeros(8, 8, dtype=torch.bool)
    expect[0:2, 4:6] = True
    assert torch.equal(changed, expect)
    torch.testing.assert_close(out[0, npre:].view(8, 8, 5)[0:2, 4:6], x[0, npre:].view(8, 8, 5)[0:2, 4:6] + 3.0)
    assert not (out[1:] != x[1:]).any() and torch.equal(out[0, :npre], x[0, :npre])
    # the prefix tokens receive their own delta
    delta = torch.zeros_like(q0)
    delta[:, 1] = 1.0
    out = regions.unpool_delta(x, delta, src)
    assert torch.equal(out[:, 1], x[:, 1] + 1.0) and torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(out[:, npre:], x[:, npre:])


def test_training_mix_equals_inference_choice(digits):
    """The reference's dense mixing of all granularities with one-hot gates == computing the chosen split only."""
    m = patched(make_vit(depth=4))
    with torch.no_grad():  # content-dependent, per-region decisions, sharp enough that Gumbel noise is irrelevant
        for lin in m.dge_routers:
            lin.weight.normal_(0, 1.0)
            lin.bias.zero_()
    sharpen(m, 1000.0)
    with tracking(m), torch.no_grad():
        eval_out = m(digits)
    choices = torch.stack(m.vitprune_state.aux["decisions"])
    assert len(choices.unique()) == 3  # a real mix of granularities
    m.train()
    with torch.no_grad():
        train_out = m(digits)
    torch.testing.assert_close(train_out, eval_out, atol=1e-5, rtol=1e-5)
    gates = torch.stack(m.vitprune_state.aux["dge_gates"]).argmax(-1)
    assert torch.equal(gates, choices)


# ------------------------------------------------------------------------------------------ MACs


def test_block_formula_at_nq_equal_n_is_fvcore_dense_block():
    """Oracle 5. Counted as fvcore does: linear layers, SDPA QK^T + AV, 5 per LayerNorm element; GELU, softmax,
    adds, pooling not counted. The packed formula counts norm1 once more (on the queries): exactly 5*N*C."""
    base = make_vit(depth=1, embed_dim=96)
    blk, n, c = base.blocks[0], 65, 96
    fv = count_macs(blk, images=torch.randn(1, n, c)).macs
    cost = block_cost(blk, num_choices=3)
    assert cost.dense(n, regions_=4) - 4 * cost.router == fv
    assert cost.packed(n, n, regions_=4) - 4 * cost.router - fv == 5 * n * c


@pytest.mark.slow
def test_macs_match_fvcore_on_uniform_configurations(digits):
    for base in (make_vit(depth=3, embed_dim=96), make_vit(arch="deit_small_distilled_patch16_224", depth=2)):
        m = patched(base)
        meth, d = m.vitprune_method, len(base.blocks)
        x = digits[:1]
        routers = d * 4 * base.embed_dim * 3
        meth.set_levels(m, [2] * d)  # all coarsest: the traced forward is the compress/decompress path
        meth.use_static_routers = False  # routed: fvcore sees the routers run
        assert meth.macs(m, x) == fvcore_macs(m, x).macs
        meth.use_static_routers = True  # static schedule: the routers decide from their biases, nothing runs
        assert meth.macs(m, x) == fvcore_macs(m, x).macs + routers
        meth.set_levels(m, [0] * d)  # all finest: timm's blocks; fvcore drops the routers (only steered Python)
        assert meth.macs(m, x) == fvcore_macs(m, x).macs + routers
        assert fvcore_macs(m, x).macs == count_macs(base, images=x).macs


def test_macs_are_the_mean_of_per_image_decisions(digits):
    digits = digits[:4]
    m = patched(make_vit(depth=4))
    meth = m.vitprune_method
    meth.calibrate_budget(m, digits, 0.5)
    per_image = [meth.macs(m, digits[i:i + 1]) for i in range(len(digits))]
    assert len(set(per_image)) > 1  # images really differ
    assert meth.macs(m, digits) == pytest.approx(sum(per_image) / len(per_image), rel=1e-12)
    assert count_macs(m, images=digits).source == "method"


@pytest.mark.slow
def test_gmacs_deit_s_paper_setting():
    """256 px (16x16 grid, R = 4): dense 6.1 G (fvcore count); DGE at budget 0.5 (static schedule meeting it)."""
    torch.manual_seed(0)
    base = timm.create_model("deit_small_patch16_224", pretrained=False, img_size=256).eval()
    x = torch.randn(1, 3, 256, 256)
    m = patched(base, router_init="budget", budget=0.5)
    meth = m.vitprune_method
    assert meth.region_size == 4 and meth.budget_levels(m) == [0] * 4 + [1] * 2 + [2] * 6
    assert meth.mac_ratio(m, x) == pytest.approx(0.5, abs=0.01)
    assert count_macs(m, (3, 256, 256)).gmacs == pytest.approx(3.10, abs=0.01)  # paper (trained routers): 3.5
    meth.set_levels(m, [0] * 12)
    routers = 12 * 16 * 384 * 3 / 1e9
    assert count_macs(m, (3, 256, 256)).gmacs - routers == pytest.approx(6.1, rel=0.01)  # the paper's dense DeiT-S


@pytest.mark.slow
def test_gmacs_deit_s_224_profile_setting(deit_small):
    m = patched(deit_small, router_init="budget", budget=0.5)
    meth = m.vitprune_method
    assert meth.budget_levels(m) == [0] * 2 + [1] * 10
    assert count_macs(m).gmacs == pytest.approx(2.217, abs=0.002)
    meth.set_levels(m, [0] * 12)
    routers = 12 * 49 * 384 * 2 / 1e9
    assert count_macs(m).gmacs - routers == pytest.approx(4.608, rel=1e-3)  # dense DeiT-S at 224 px, fvcore count (README table)
    meth.set_levels(m, [1] * 12)  # all coarsest on DeiT-S: analytic == fvcore on the routed path
    meth.use_static_routers = False
    x = torch.randn(1, 3, 224, 224)
    assert meth.macs(m, x) == fvcore_macs(m, x).macs


# ------------------------------------------------------------------------------------------ prefix tokens


@pytest.mark.parametrize("arch, kwargs, npre", [
    ("deit_small_distilled_patch16_224", {}, 2),
    ("vit_small_patch16_224", {"reg_tokens": 2}, 3),
])
def test_prefix_tokens_are_queries_of_their_own(arch, kwargs, npre, digits):
    base = make_vit(arch=arch, depth=4, **kwargs)
    m = patched(base)
    meth = m.vitprune_method
    meth.set_levels(m, [2, 2, 1, 0])
    with tracking(m), torch.no_grad():
        y = m(digits)
    st = m.vitprune_state
    assert y.shape == (8, 10)
    assert st.counts == meth.token_schedule(m) == [npre + 64] * 4
    assert [int(q[0]) for q in st.aux["queries"]] == [npre + 4, npre + 4, npre + 16, npre + 64]
    # the prefix tokens' outputs are those of full-resolution queries: same as pooling nothing into them
    meth.set_levels(m, [0] * 4)
    with torch.no_grad():
        assert torch.equal(m(digits), base(digits))


# ------------------------------------------------------------------------------------------ training


def test_training_forward_backward_static_shapes_and_budget_loss(digits):
    m = patched(make_vit(depth=4)).train()
    meth = m.vitprune_method
    with tracking(m):
        y = m(digits)
    st = m.vitprune_state
    assert y.shape == (8, 10) and st.counts == [65] * 4
    assert len(st.aux["dge_gates"]) == 4 and st.aux["dge_gates"][0].shape == (8, 4, 3)
    losses = meth.aux_losses(m, st, None)
    assert set(losses) == {"budget"} and torch.isfinite(losses["budget"])
    (y.logsumexp(-1).mean() + losses["budget"]).backward()
    for lin in m.dge_routers:
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert m.blocks[3].mlp.fc2.weight.grad is not None


def test_budget_loss_zero_at_target_and_its_gradient_reaches_the_routers(digits):
    m = patched(make_vit(depth=4)).train()
    meth = m.vitprune_method
    m(digits)
    st = m.vitprune_state
    ratio = (st.aux["dge_macs"].mean() / st.aux["dge_static_macs"]).item()
    assert 0.0 < ratio <= 1.0
    meth.options = dataclasses.replace(meth.options, budget=ratio)
    assert meth.aux_losses(m, st, None)["budget"].item() == pytest.approx(0.0, abs=1e-12)
    meth.options = dataclasses.replace(meth.options, budget=0.3, budget_weight=2.0)
    loss = meth.aux_losses(m, st, None)["budget"]
    assert loss.item() == pytest.approx(2.0 * (ratio - 0.3) ** 2, rel=1e-4)
    m.zero_grad()
    loss.backward()
    grads = [p.grad for p in m.dge_routers.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert m.head.weight.grad is None  # the budget depends on the routers (and the features they read), not the head


def test_default_recipe_routers_at_ten_times_the_backbone_lr():
    from vitprune.methods import get_method_class

    cls = get_method_class("dge")
    recipe = cls(cls.Options()).default_recipe()
    assert recipe["backbone_lr_scale"] == 0.1 and recipe["kd_weight"] > 0 and recipe["lr"] > 0
    assert cls.new_module_prefixes == ("dge_routers",)
    m = patched(make_vit(depth=2))
    names = [n for n, _ in m.named_parameters() if n.startswith(cls.new_module_prefixes)]
    assert names == ["dge_routers.0.weight", "dge_routers.0.bias", "dge_routers.1.weight", "dge_routers.1.bias"]


# ------------------------------------------------------------------------------------------ inference details


def test_padding_to_the_widest_image_changes_no_result_and_batch_one_works(digits):
    m = patched(make_vit(depth=6, embed_dim=96))
    meth = m.vitprune_method
    meth.calibrate_budget(m, digits, 0.4)
    with tracking(m), torch.no_grad():
        batch = m(digits)
    q = torch.stack(m.vitprune_state.aux["queries"])
    assert (q.max(1).values > q.min(1).values).any()  # images of one batch use different query counts
    with torch.no_grad():
        alone = torch.cat([m(digits[i:i + 1]) for i in range(len(digits))])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_other_image_sizes_and_grids_that_do_not_divide(digits):
    base = make_vit(depth=2, dynamic_img_size=True)
    m = patched(base)
    x48 = torch.nn.functional.interpolate(digits[:2], size=(48, 48), mode="bilinear")
    with tracking(m), torch.no_grad():
        m(x48)
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m, (48, 48)) == [1 + 144] * 2
    x40 = torch.nn.functional.interpolate(digits[:2], size=(40, 40), mode="bilinear")
    with tracking(m), torch.no_grad():  # a 10x10 grid: region 4 leaves partial regions at the border
        out = m(x40)
    assert m.vitprune_state.counts == [1 + 100] * 2 and torch.isfinite(out).all()


def test_budget_init_and_calibration_without_training(digits):
    base = make_vit(depth=6, embed_dim=96)
    m = patched(base, router_init="budget", budget=0.6)
    meth = m.vitprune_method
    levels = meth.budget_levels(m)
    assert levels == sorted(levels) and levels[0] == 0 and levels[-1] > 0  # finest first, coarser last
    assert meth.mac_ratio(m, digits) == pytest.approx(0.6, abs=0.06)
    with pytest.raises(MethodOptionError, match="below what DGE reaches"):
        patched(base, router_init="budget", budget=0.05)
    m = patched(base)
    assert m.vitprune_method.mac_ratio(m, digits) == pytest.approx(1.0)  # the paper's init is ~dense
    info = m.vitprune_method.calibrate_budget(m, digits, 0.5)
    assert info["ratio"] == pytest.approx(0.5, abs=0.02) and info["images"] == 8
    assert m.vitprune_method.options.router_init == "calibrated"
    assert m.vitprune_method.mac_ratio(m, digits) == pytest.approx(info["ratio"])
    assert m.vitprune_method.calibrate(m, digits) is None  # the trainer's hook leaves trained routers alone


# ------------------------------------------------------------------------------------------ fast inference paths


def reference_logits(m, images):
    """DGE inference written out plainly, one image and one region at a time (the paper's section 3): the router reads each
    region's mean, each chosen cell becomes one query (the mean of its patches), the block runs on the queries with
    keys/values from every token, and each patch receives its cell's update. Softmax attention is explicit."""
    meth = m.vitprune_method
    region, npre = meth.region_size, m.num_prefix_tokens
    h, w = vit_info(m, tuple(images.shape[-2:])).grid
    cells = [region // s for s in meth.splits]  # cell side of each choice, finest first
    with torch.no_grad():
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
        for blk, router in zip(m.blocks, m.dge_routers):
            attn, out = blk.attn, []
            for t in x:  # one image: N x C
                grid = t[npre:].view(h, w, -1)
                queries, members = [t[i] for i in range(npre)], [[i] for i in range(npre)]
                for r0 in range(0, h, region):
                    for c0 in range(0, w, region):
                        choice = int(router(grid[r0:r0 + region, c0:c0 + region].mean(dim=(0, 1))).argmax())
                        side = cells[choice]
                        for a in range(r0, r0 + region, side):
                            for b in range(c0, c0 + region, side):
                                queries.append(grid[a:a + side, b:b + side].mean(dim=(0, 1)))
                                members.append([npre + i * w + j for i in range(a, a + side) for j in range(b, b + side)])
                q0 = torch.stack(queries)  # M x C
                d, heads = attn.head_dim, attn.num_heads
                wq, wk, wv = attn.qkv.weight.split(heads * d)
                bq, bk, bv = attn.qkv.bias.split(heads * d)
                kn, qn = blk.norm1(t), blk.norm1(q0)
                q = (qn @ wq.T + bq).view(-1, heads, d).transpose(0, 1)
                k = (kn @ wk.T + bk).view(-1, heads, d).transpose(0, 1)
                v = (kn @ wv.T + bv).view(-1, heads, d).transpose(0, 1)
                a_out = ((q @ k.transpose(1, 2)) * d ** -0.5).softmax(-1) @ v  # heads x M x d
                q1 = q0 + blk.ls1(attn.proj(a_out.transpose(0, 1).reshape(len(queries), -1)))
                q2 = q1 + blk.ls2(blk.mlp(blk.norm2(q1)))
                new = t.clone()
                for delta, tokens in zip(q2 - q0, members):
                    new[tokens] = t[tokens] + delta
                out.append(new)
            x = torch.stack(out)
        return m.forward_head(m.norm(x))


def random_routers(m, seed, scale, coarse_bias):
    """Content-dependent routers (as trained ones are): random weights; biases from 0 (finest) to coarse_bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in m.dge_routers:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * scale)
            lin.bias.copy_(torch.linspace(0, coarse_bias, lin.bias.numel()))


# images, model and router settings of the fast-path tests: digits on an 8x8 grid (region 4 or 2), photos on a
# 14x14 grid (224 px, patch 16: region 2, as DeiT-S at 224 px); scales picked so that decisions mix within a batch
FAST_CASES = {
    "digits-r4": (dict(img_size=32, patch_size=4), 4, 0.3, 0.5),
    "digits-r2": (dict(img_size=32, patch_size=4), 2, 0.3, 0.5),
    "photos-r2": (dict(img_size=224, patch_size=16), 2, 0.05, 0.3),
}


def fast_case(name, photos, digits):
    arch, region, scale, bias = FAST_CASES[name]
    base = make_vit(depth=4, embed_dim=48, **arch)
    return base, region, scale, bias, (photos if arch["img_size"] == 224 else digits)


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_static_schedule_path_equals_the_plain_computation(case, photos, digits):
    """router_init=budget: every router decides from its bias alone, so every block takes the pooled, index-free
    path (no routing, no host read). Same logits as the region-by-region computation, batch and batch 1."""
    base, region, _, _, x = fast_case(case, photos, digits)
    for budget in (0.5, 0.7):
        m = patched(base, router_init="budget", budget=budget, region_size=region)
        meth = m.vitprune_method
        levels = meth.static_levels(m)
        assert None not in levels and len(set(levels)) > 1  # every block static, more than one granularity
        ref = reference_logits(m, x)
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(m(x[:1]), ref[:1], atol=2e-5, rtol=1e-5)
            meth.use_static_routers = False  # the general routed path gives the same
            torch.testing.assert_close(m(x), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_routed_path_auto_and_static_width_equal_the_plain_computation(case, photos, digits):
    """Content-dependent routers: queries gathered to the batch's widest image (auto) or to every token (static
    width, no host read). Both give the region-by-region logits, for the batch and for each image alone."""
    base, region, scale, bias, x = fast_case(case, photos, digits)
    m = patched(base, region_size=region)
    random_routers(m, 0, scale, bias)
    meth = m.vitprune_method
    assert meth.static_levels(m) == (None,) * 4
    q = meth.decisions(m, x)["queries"]
    n = 1 + vit_info(m, tuple(x.shape[-2:])).num_patches
    assert (q.max(1).values > q.min(1).values).any()  # images of one batch take different query counts
    assert (q.min(1).values < n).all()  # in every block some image pools: the query path runs everywhere
    ref = reference_logits(m, x)
    for width in ("auto", "static"):
        meth.query_width = width
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref, atol=2e-5, rtol=1e-5)
            alone = torch.cat([m(x[i:i + 1]) for i in range(len(x))])
        torch.testing.assert_close(alone, ref, atol=2e-5, rtol=1e-5)


def test_all_finest_static_width_is_the_dense_model(digits):
    base = make_vit(depth=4, embed_dim=96)
    m = patched(base)  # paper init: content-dependent routers that pick the finest split everywhere
    meth = m.vitprune_method
    meth.query_width = "static"  # no host read, so no all-finest shortcut: the query path over every token
    with torch.no_grad():
        torch.testing.assert_close(m(digits), base(digits), atol=1e-5, rtol=0)
    meth.set_levels(m, [0] * 4)  # static finest: timm's block, bit-exact whatever the width
    with torch.no_grad():
        assert torch.equal(m(digits), base(digits))


def test_the_plan_follows_router_changes(digits):
    """The static-level plan is kept between forwards and read again when a router parameter changes in place
    (optimizer step, load_state_dict, editing by hand) or is replaced."""
    m = patched(make_vit(depth=4), router_init="budget", budget=0.5)
    meth = m.vitprune_method
    assert None not in meth.static_levels(m)
    random_routers(m, 1, 0.3, 0.5)
    assert meth.static_levels(m) == (None,) * 4
    with torch.no_grad():
        torch.testing.assert_close(m(digits), reference_logits(m, digits), atol=2e-5, rtol=1e-5)
    meth.set_levels(m, [0, 1, 2, 2])
    assert meth.static_levels(m) == (0, 1, 2, 2)
    m.dge_routers[2].weight = torch.nn.Parameter(torch.ones_like(m.dge_routers[2].weight))
    assert meth.static_levels(m) == (0, 1, None, 2)
    fresh = patched(make_vit(depth=4))
    random_routers(fresh, 2, 0.3, 0.5)
    m.load_state_dict(fresh.state_dict())
    assert meth.static_levels(m) == (None,) * 4
    with torch.no_grad():
        assert torch.equal(m(digits), fresh(digits))


def test_tracking_records_the_same_maps_on_both_paths(digits):
    m = patched(make_vit(depth=4), router_init="budget", budget=0.5)
    meth = m.vitprune_method
    runs = []
    for static in (True, False):
        meth.use_static_routers = static
        with tracking(m), torch.no_grad():
            m(digits)
        st = m.vitprune_state
        runs.append((st.counts, st.stages, st.aux["queries"], st.aux["decisions"]))
    (c1, s1, q1, d1), (c2, s2, q2, d2) = runs
    assert c1 == c2 and len(s1) == len(s2) > 0
    assert all(b1 == b2 and torch.equal(a1, a2) for (b1, a1), (b2, a2) in zip(s1, s2))
    assert all(torch.equal(a, b) for a, b in zip(q1, q2)) and all(torch.equal(a, b) for a, b in zip(d1, d2))


# ------------------------------------------------------------------------------------------ save / load


@pytest.mark.slow
def test_save_load_round_trip_with_routers(tmp_path, digits):
    m = patched(make_vit(depth=4))
    m.vitprune_method.calibrate_budget(m, digits, 0.5)
    vitprune.save(m, tmp_path / "dge")
    back = vitprune.load(tmp_path / "dge")
    assert back.vitprune_method.options == m.vitprune_method.options
    assert back.vitprune_method.options.router_init == "calibrated"
    for a, b in zip(back.dge_routers.parameters(), m.dge_routers.parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(back(digits), m(digits))


# ------------------------------------------------------------------------------------------ bad input


def test_bad_options_and_unsupported_models():
    with pytest.raises(MethodOptionError, match=r"`budget` must be in \(0, 1\]"):
        vitprune.apply_method(make_vit(depth=1), "dge", budget=0.0)
    with pytest.raises(MethodOptionError, match="`region_size` must be 4 or 2"):
        vitprune.apply_method(make_vit(depth=1), "dge", region_size=3)
    with pytest.raises(MethodOptionError, match="`router_init` must be one of"):
        vitprune.apply_method(make_vit(depth=1), "dge", router_init="random")
    with pytest.raises(MethodOptionError, match="`budget_weight` must be a number >= 0"):
        vitprune.apply_method(make_vit(depth=1), "dge", budget_weight=-1)
    with pytest.raises(MethodOptionError, match="not an option of dge"):
        vitprune.apply_method(make_vit(depth=1), "dge", keep_rate=0.7)
    odd = vitprune.apply_method(make_vit(depth=1, img_size=28), "dge").vitprune_method  # 7x7: partial regions
    assert odd.region_size == 2 and "the 7x7 patch grid" in odd.region_note and "partial" in odd.region_note
    with pytest.raises(UnsupportedModelError, match="patch_drop_rate"):
        vitprune.apply_method(make_vit(depth=1, patch_drop_rate=0.5), "dge")
    with pytest.raises(UnsupportedModelError, match="not a Vision Transformer"):
        vitprune.apply_method(torch.nn.Sequential(torch.nn.Linear(2, 2)), "dge")


def test_cli_region_size_that_does_not_divide_the_grid_and_the_fallback(tmp_path):
    """A 14x14 grid with --region-size 4 runs with partial border regions; without it R = 2 is chosen."""
    folder = vitprune.save(make_vit(depth=2, img_size=56), tmp_path / "grid14")  # 56 px / patch 4 = 14x14
    runner = CliRunner()
    res = runner.invoke(app, ["profile", str(folder), "--no-weights", "--method", "dge", "--region-size", "4",
                              "--no-speed", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["compressed"]["options"]["region_size"] == 4
    res = runner.invoke(app, ["profile", str(folder), "--no-weights", "--method", "dge", "--no-speed", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["compressed"]["options"]["region_size"] == 2 and data["compressed"]["tokens"] == [197] * 2
    m = vitprune.apply_method(make_vit(depth=1, img_size=56), "dge")
    assert m.vitprune_method.region_size == 2 and "not divisible by 4" in m.vitprune_method.region_note


def test_listed_by_vitprune_methods():
    from vitprune.methods import describe_methods

    info = {m["name"]: m for m in describe_methods()}["dge"]
    assert {o["name"] for o in info["options"]} == {"budget", "region_size", "budget_weight", "router_init"}
    assert any("router_init=budget" in n for n in info["notes"])
