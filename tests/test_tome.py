"""ToMe against the paper and the reference code, on tiny real timm ViTs and real images."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import vitprune
from vitprune import ops
from vitprune.errors import MethodOptionError, UnsupportedModelError
from vitprune.measure import count_macs
from vitprune.methods import tracking
from vitprune.ops import merge as tm

from .conftest import digits_batch, make_vit, photo_batch


def patched(model, **opts):
    return vitprune.apply_method(copy.deepcopy(model), "tome", **opts)


def embed(model, images):
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))


# ------------------------------------------------------------------------------------------ an independent reference


def reference_merge(x, metric, size, r, npre):
    """The paper's bipartite soft matching for one image, with Python loops: split by position over the *whole* sequence (A even, B odd), prefix
    tokens masked with -inf (never sources, never destinations), top-r A tokens by best score merge into their
    partner by a size-weighted mean; output [unmerged A, B] with the prefix tokens moved first."""
    n = x.shape[0]
    met = metric / metric.norm(dim=-1, keepdim=True)
    A, B = list(range(0, n, 2)), list(range(1, n, 2))
    scores = (met @ met.T)[A][:, B]
    scores[torch.tensor(A) < npre, :] = float("-inf")
    scores[:, torch.tensor(B) < npre] = float("-inf")
    top, arg = scores.max(dim=-1)
    best = {a: (float(top[i]), B[int(arg[i])]) for i, a in enumerate(A)}
    order = sorted(A, key=lambda a: -best[a][0])
    src = set(order[:r])
    acc = {b: (x[b] * size[b], size[b].clone()) for b in B}
    for a in src:
        b = best[a][1]
        acc[b] = (acc[b][0] + x[a] * size[a], acc[b][1] + size[a])
    out = [(t, x[t], size[t]) for t in A if t not in src] + [(b, acc[b][0] / acc[b][1], acc[b][1]) for b in B]
    out = [o for o in out if o[0] < npre] + [o for o in out if o[0] >= npre]
    out = sorted(out[:npre], key=lambda o: o[0]) + out[npre:]
    return torch.stack([o[1] for o in out]), torch.stack([o[2] for o in out])


def reference_forward_features(model, images, rs, prop_attn=True):
    """The whole ToMe forward, written from the paper: explicit softmax attention with a log-size bias, keys after
    k_norm averaged over heads as the metric, the reference merge per image."""
    x = embed(model, images)
    npre = model.num_prefix_tokens
    size = torch.ones(x.shape[0], x.shape[1], 1)
    for blk, r in zip(model.blocks, rs):
        at = blk.attn
        Bn, N, C = x.shape
        xn = blk.norm1(x)
        qkv = at.qkv(xn).reshape(Bn, N, 3, at.num_heads, at.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = at.q_norm(qkv[0]), at.k_norm(qkv[1]), qkv[2]
        logits = (q @ k.transpose(-1, -2)) * at.head_dim ** -0.5
        if prop_attn:
            logits = logits + size[..., 0].log()[:, None, None, :]
        o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(Bn, N, C)
        x = x + blk.ls1(at.proj(o))
        r = min(r, (N - npre) // 2)
        if r:
            metric = k.mean(1)
            pairs = [reference_merge(x[b], metric[b], size[b], r, npre) for b in range(Bn)]
            x, size = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return model.norm(x), size


# ------------------------------------------------------------------------------------------ identity


@pytest.mark.parametrize("r", [0, [0, 0, 0], [0] * 12])
def test_r0_is_bit_identical_to_dense(tiny_vit, digits, r):
    m = patched(tiny_vit, r=r)
    with torch.no_grad():
        assert torch.equal(m(digits), tiny_vit(digits))


def test_r0_identical_with_layerscale_qknorm_registers_and_avg_pool(digits):
    for kw in (dict(init_values=1e-5, qk_norm=True), dict(arch="vit_small_patch16_224", reg_tokens=2),
               dict(class_token=False, global_pool="avg")):
        base = make_vit(depth=4, **kw)
        with torch.no_grad():
            assert torch.equal(patched(base, r=0)(digits), base(digits)), kw


def test_real_compute_path_matches_timm_block_within_fp32(digits):
    """The decomposed block (ops attention, no merge) equals timm's block; with sizes all 1 the proportional bias is
    zero and the fused attention with that bias equals plain attention (through the model's path)."""
    base = make_vit(depth=2, init_values=1e-5, qk_norm=True)
    m = patched(base, r=0)
    tome = m.vitprune_method
    with torch.no_grad():
        x = embed(base, digits)
        blk = base.blocks[0]
        want = blk(x)
        got, size, match = tome.merge_block(blk, x, None, 0, 1)
        assert size is None and match is None
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        got, size, _ = tome.merge_block(blk, x, torch.ones(x.shape[0], x.shape[1], 1), 0, 1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(size, torch.ones_like(size))


# ------------------------------------------------------------------------------------------ counts


SPEC_TABLE = {
    0: [197] * 12,
    8: [197, 189, 181, 173, 165, 157, 149, 141, 133, 125, 117, 109],
    13: [197, 184, 171, 158, 145, 132, 119, 106, 93, 80, 67, 54],
    16: [197, 181, 165, 149, 133, 117, 101, 85, 69, 53, 37, 21],
}
SPEC_AFTER = {0: 197, 8: 101, 13: 41, 16: 11}


@pytest.mark.parametrize("r", [0, 8, 13, 16])
def test_token_schedule_deit_s_is_r_fewer_per_block(deit_small, r):
    m = patched(deit_small, r=r)
    sched = m.vitprune_method.token_schedule(m)
    assert sched == SPEC_TABLE[r]
    assert sched[-1] - m.vitprune_method.effective_r(m)[-1] == SPEC_AFTER[r]


def test_measured_counts_deit_s_r13_and_sizes_sum_to_patches(deit_small):
    m = patched(deit_small, r=13)
    images = photo_batch(224, names=("astronaut", "coffee"))
    with tracking(m), torch.no_grad():
        m(images)
    st = m.vitprune_state
    assert st.counts == SPEC_TABLE[13]
    size = st.aux["size"]
    assert size.shape == (2, 41, 1)
    assert torch.equal(size[:, :1], torch.ones(2, 1, 1))
    assert torch.equal(size[:, 1:].sum(dim=1), torch.full((2, 1), 196.0))


def test_demo_shape_counts_clip_per_block_and_measured_equal_schedule(digits):
    base = make_vit(depth=6, embed_dim=96)  # the demo teacher's shape: 64 patches + class token
    for r, want, eff in ((8, [65, 57, 49, 41, 33, 25], [8] * 6),
                         (13, [65, 52, 39, 26, 14, 8], [13, 13, 13, 12, 6, 3]),
                         (32, [65, 33, 17, 9, 5, 3], [32, 16, 8, 4, 2, 1])):
        m = patched(base, r=r)
        assert m.vitprune_method.token_schedule(m) == want
        assert m.vitprune_method.effective_r(m) == eff
        with tracking(m), torch.no_grad():
            m(digits)
        assert m.vitprune_state.counts == want
        size = m.vitprune_state.aux["size"]
        assert size.shape[1] == want[-1] - eff[-1]
        assert torch.equal(size.sum(dim=1), torch.full((8, 1), 65.0))


def test_inflection_schedules():
    base = make_vit()
    m = patched(base, r=13, inflection=-1.0)
    # floor(26 - 26 i / 11): the paper's decreasing schedule from 2r to 0
    assert m.vitprune_method.options.per_block(12) == [26, 23, 21, 18, 16, 14, 11, 9, 7, 4, 2, 0]
    assert patched(base, r=(13, -1.0)).vitprune_method.options.per_block(12) == \
        m.vitprune_method.options.per_block(12)
    assert patched(base, r=8, inflection=0.0).vitprune_method.options.per_block(12) == [8] * 12
    assert patched(base, r=8, inflection=1.0).vitprune_method.options.per_block(5) == [0, 4, 8, 12, 16]
    # a per-block list is padded with zeros; the schedule reports what really happens
    m = patched(make_vit(depth=6, embed_dim=96), r=[20, 20, 20])
    assert m.vitprune_method.effective_r(m) == [20, 20, 12, 0, 0, 0]
    assert m.vitprune_method.token_schedule(m) == [65, 45, 25, 13, 13, 13]


def test_counts_follow_the_actual_image_size(digits):
    base = make_vit(depth=4, dynamic_img_size=True)
    m = patched(base, r=10)
    big = F.interpolate(digits, size=(48, 48), mode="bilinear", align_corners=False)  # 12 x 12 = 144 patches
    with tracking(m), torch.no_grad():
        y = m(big)
    assert y.shape == (8, 10)
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m, (48, 48)) == [145, 135, 125, 115]
    assert torch.equal(m.vitprune_state.aux["size"][:, 1:].sum(1), torch.full((8, 1), 144.0))


def test_batch_results_do_not_depend_on_the_other_images(digits):
    m = patched(make_vit(depth=6, embed_dim=96), r=10)
    with torch.no_grad():
        full = m(digits)
        one = torch.cat([m(digits[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(full[:3], one, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ GMACs


@pytest.mark.slow
@pytest.mark.parametrize("r, gmacs", [(8, 3.428), (13, 2.712), (16, 2.298)])
def test_gmacs_deit_s_match_the_analytic_count(deit_small, r, gmacs):
    mc = count_macs(patched(deit_small, r=r))
    assert mc.gmacs == pytest.approx(gmacs, rel=0.01)
    assert mc.uncounted == {}


# ------------------------------------------------------------------------------------------ the merge ops


def test_size_weighted_merge_hand_built_example():
    """Two patches, one class token: patch 0 is in B, patch 1 in A; with r=1 patch 1 merges into patch 0."""
    x = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [5.0, 10.0]]])
    size = torch.tensor([[[1.0], [1.0], [3.0]]])
    m = tm.bipartite_matching(x, 1, num_prefix=1)
    assert m.src_idx.tolist() == [[0]] and m.dst_idx.tolist() == [[0]] and m.unm_idx.shape == (1, 0)
    out, s = tm.merge_wavg(x, m, 1, size)
    # (1 * [1, 2] + 3 * [5, 10]) / 4 = [4, 8], size 4; the class token is untouched
    assert torch.equal(out, torch.tensor([[[9.0, 9.0], [4.0, 8.0]]]))
    assert torch.equal(s, torch.tensor([[[1.0], [4.0]]]))


def test_merging_identical_tokens_leaves_them_unchanged():
    torch.manual_seed(0)
    tok = torch.randn(4, 1, 16)
    x = torch.cat([torch.randn(4, 1, 16), tok.expand(-1, 10, -1)], dim=1)
    size = torch.randint(1, 5, (4, 11, 1)).float()
    size[:, 0] = 1
    m = tm.bipartite_matching(x, 5, 1)
    out, s = tm.merge_wavg(x, m, 1, size)
    assert out.shape == (4, 6, 16)
    torch.testing.assert_close(out[:, 1:], tok.expand(-1, 5, -1), atol=1e-6, rtol=1e-6)
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(s.sum(1), size.sum(1))


@pytest.mark.parametrize("npre", [0, 1, 2, 3, 5])
def test_matching_equals_the_papers_formulation_with_inf_masking(npre):
    """Taking prefix tokens out of the split == the reference's -inf masking over the whole sequence, for any
    number of prefix tokens, odd and even token counts."""
    torch.manual_seed(npre)
    for n_patch in (16, 17):
        x = torch.randn(3, npre + n_patch, 8)
        metric = torch.randn(3, npre + n_patch, 6)
        size = torch.randint(1, 4, (3, npre + n_patch, 1)).float()
        size[:, :npre] = 1
        r = n_patch // 2
        for rr in (1, r // 2, r):
            got, gs = tm.merge_wavg(x, tm.bipartite_matching(metric, rr, npre), npre, size)
            for b in range(3):
                want, ws = reference_merge(x[b], metric[b], size[b], rr, npre)
                torch.testing.assert_close(got[b], want, atol=1e-6, rtol=1e-6)
                assert torch.equal(gs[b], ws)


def test_prefix_tokens_are_never_sources_or_destinations():
    """Oracle 4 on the op: prefix tokens that are exact copies of patch tokens (the most similar pairs there are)
    are still neither merged away nor merged into, and keep their values and size 1."""
    torch.manual_seed(1)
    npre, P = 3, 20
    patches = torch.randn(2, P, 8)
    x = torch.cat([patches[:, :npre].clone(), patches], dim=1)
    m = tm.bipartite_matching(x, P // 2, npre)
    out, size = tm.merge_wavg(x, m, npre)
    assert out.shape == (2, npre + P // 2, 8)
    assert torch.equal(out[:, :npre], x[:, :npre])
    assert torch.equal(size[:, :npre], torch.ones(2, npre, 1))
    assert torch.equal(size.sum(1), torch.full((2, 1), float(npre + P)))
    na = len(range(tm.split_start(npre), P, 2))
    assert m.src_idx.max() < na and m.unm_idx.shape[1] + m.r == na


def test_model_equals_the_loop_reference_with_registers_qknorm_layerscale(digits):
    """Oracle 4 through the model: a register ViT with qk-norm and LayerScale equals the loop reference written from
    the paper (prefix tokens protected with -inf, explicit softmax with log-size bias); prefix tokens included."""
    base = make_vit(depth=4, arch="vit_small_patch16_224", reg_tokens=2, qk_norm=True, init_values=0.5)
    rs = [12, 10, 8, 6]
    m = patched(base, r=rs)
    with torch.no_grad(), tracking(m):
        got = m.forward_features(digits)
        want, want_size = reference_forward_features(base, digits, rs)
    assert got.shape == want.shape == (8, 3 + 64 - 36, 48)
    torch.testing.assert_close(got[:, :3], want[:, :3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(m.vitprune_state.aux["size"], want_size)


def test_distilled_model_keeps_both_prefix_tokens(digits):
    base = make_vit(arch="deit_small_distilled_patch16_224", depth=6)
    m = patched(base, r=10)
    assert m.vitprune_method.token_schedule(m) == [66, 56, 46, 36, 26, 16]
    with torch.no_grad(), tracking(m):
        feats = m.forward_features(digits)
        want, _ = reference_forward_features(base, digits, [10] * 6)
        y = m.forward_head(feats)
    assert y.shape == (8, 10)
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m)
    size = m.vitprune_state.aux["size"]
    assert torch.equal(size[:, :2], torch.ones(8, 2, 1)) and torch.equal(size.sum(1), torch.full((8, 1), 66.0))
    torch.testing.assert_close(feats, want, atol=1e-4, rtol=1e-4)


def test_register_model_runs_and_counts(digits):
    base = make_vit(arch="vit_small_patch16_224", reg_tokens=2, depth=12)
    m = patched(base, r=6)
    with tracking(m), torch.no_grad():
        assert m(digits).shape == (8, 10)
    counts = m.vitprune_state.counts
    assert counts == m.vitprune_method.token_schedule(m)
    assert counts[:3] == [67, 61, 55] and min(counts) >= 3
    for _, assign in m.vitprune_state.stages:
        assert assign.shape == (8, 64)


# ------------------------------------------------------------------------------------------ proportional attention


def test_proportional_attention_with_sizes_one_equals_plain_attention():
    """Oracle 5 on the op: a log(1) = 0 bias through fused SDPA equals SDPA without a mask."""
    base = make_vit(depth=1)
    attn = base.blocks[0].attn
    x = torch.randn(4, 17, 48)
    q, k, v = ops.project_qkv(attn, x)
    plain = ops.attend(attn, q, k, v, x)
    bias = tm.size_bias(torch.ones(4, 17, 1), q.dtype)
    assert bias.shape == (4, 1, 1, 17) and torch.equal(bias, torch.zeros_like(bias))
    torch.testing.assert_close(ops.attend(attn, q, k, v, x, bias), plain, atol=1e-6, rtol=1e-6)


def test_proportional_attention_counts_a_token_of_size_s_as_s_copies():
    """A key of size 2 gets the same attention output as two copies of that token."""
    torch.manual_seed(0)
    attn = make_vit(depth=1).blocks[0].attn
    x = torch.randn(2, 9, 48)
    q, k, v = ops.project_qkv(attn, x)
    size = torch.ones(2, 9, 1)
    size[:, 4] = 2.0
    got = ops.attend(attn, q, k, v, x, tm.size_bias(size, q.dtype))
    dup = torch.cat([x, x[:, 4:5]], dim=1)
    qd, kd, vd = ops.project_qkv(attn, dup)
    want = ops.attend(attn, qd, kd, vd, dup)[:, :9]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_prop_attn_off_equals_reference_without_size_bias(digits):
    base = make_vit(depth=4)
    on, off = patched(base, r=8), patched(base, r=8, prop_attn=False)
    with torch.no_grad():
        a, b = on(digits), off(digits)
        want, _ = reference_forward_features(base, digits, [8] * 4, prop_attn=False)
        torch.testing.assert_close(off.forward_features(digits), want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, b)


def test_layerscale_qknorm_model_runs_with_merging(digits):
    base = make_vit(depth=6, init_values=1e-5, qk_norm=True)
    m = patched(base, r=8)
    with torch.no_grad(), tracking(m):
        y = m(digits)
    assert y.shape == (8, 10) and torch.isfinite(y).all()
    assert m.vitprune_state.counts == [65, 57, 49, 41, 33, 25]


# ------------------------------------------------------------------------------------------ avg pooling


def test_avg_pool_model_weights_the_average_by_token_sizes(digits):
    base = make_vit(depth=4, class_token=False, global_pool="avg")
    m = patched(base, r=8)
    assert m.vitprune_method.token_schedule(m) == [64, 56, 48, 40]
    with torch.no_grad():
        y = m(digits)
        feats, size = reference_forward_features(base, digits, [8] * 4)
        pooled = (feats * size).sum(1) / size.sum(1)
        want = base.head(base.fc_norm(pooled))
        assert "_vitprune_pool_state" not in m.__dict__  # the per-forward sizes were consumed by pool
        plain_mean = base.head(base.fc_norm(feats.mean(1)))
    torch.testing.assert_close(y, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(y, plain_mean, atol=1e-4)
    from vitprune.methods import dense_copy

    dense = dense_copy(m)
    with torch.no_grad():
        torch.testing.assert_close(dense(digits), base(digits))  # the dense copy pools as timm does
    with torch.no_grad():
        assert torch.equal(dense(digits), base(digits))


# ------------------------------------------------------------------------------------------ source tracking


def test_source_tracking_maps_patches_to_tokens_consistently_with_sizes(digits):
    base = make_vit(depth=6, embed_dim=96)
    m = patched(base, r=13)
    with tracking(m), torch.no_grad():
        m(digits)
    st = m.vitprune_state
    assert [b for b, _ in st.stages] == [0, 1, 2, 3, 4, 5]
    block, assign = st.stages[-1]
    size = st.aux["size"]
    n_patch_tokens = size.shape[1] - 1
    assert assign.shape == (8, 64) and assign.min() >= 0 and assign.max() < n_patch_tokens
    covered = torch.zeros(8, n_patch_tokens).scatter_add(1, assign, torch.ones(8, 64))
    assert torch.equal(covered, size[:, 1:, 0])  # every token's size = number of patches mapped to it
    # origin: tokens standing for one patch keep its index, the others are synthetic (-1)
    single = size[:, 1:, 0] == 1
    assert torch.equal(st.origin >= 0, single)
    assert torch.equal(torch.gather(assign, 1, st.origin.clamp(min=0))[single], torch.arange(n_patch_tokens)
                       .expand(8, -1)[single])


# ------------------------------------------------------------------------------------------ training


def test_training_forward_backward_static_shapes_and_gradients(digits):
    m = patched(make_vit(depth=6, embed_dim=96), r=13).train()
    with tracking(m):
        y = m(digits)
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m)
    y.sum().backward()
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.5.mlp.fc2.weight", "pos_embed",
                 "cls_token", "patch_embed.proj.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    tome = m.vitprune_method
    assert tome.aux_losses(m, m.vitprune_state, None) == {}
    assert tome.needs_training is False and tome.new_module_prefixes == ()
    rec = tome.default_recipe()
    assert rec["kd_weight"] > 0 and rec["cls_weight"] > 0


def test_merge_is_differentiable_and_matching_is_not():
    x = torch.randn(2, 11, 4, requires_grad=True)
    metric = torch.randn(2, 11, 3, requires_grad=True)
    m = tm.bipartite_matching(metric, 4, 1)
    assert not m.src_idx.requires_grad
    size = torch.randint(1, 4, (2, 11, 1)).float()
    out, s = tm.merge_wavg(x, m, 1, size)
    out.sum().backward()
    # d sum(out) / d x_i = s_i / (size of the token x_i ends up in)
    dest = torch.cat([torch.zeros(2, 1, dtype=torch.long),
                      1 + tm.merge_assignment(torch.arange(10).expand(2, -1), m, 10)], dim=1)
    want = size[..., 0] / torch.gather(s[..., 0], 1, dest)
    torch.testing.assert_close(x.grad, want[..., None].expand(-1, -1, 4))
    assert metric.grad is None


def test_training_with_drop_path_and_zero_r(digits):
    base = make_vit(depth=4, drop_path_rate=0.1)
    m = patched(base, r=0).train()
    torch.manual_seed(3)
    a = m(digits)
    torch.manual_seed(3)
    b = copy.deepcopy(base).train()(digits)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ save / load, checkpoints


def test_save_load_round_trip(tmp_path, digits):
    for opts in ({"r": [9, 8, 7, 6]}, {"r": 5, "inflection": -0.5, "prop_attn": False}):
        m = patched(make_vit(depth=4, class_token=False, global_pool="avg"), **opts)
        vitprune.save(m, tmp_path / "tome")
        back = vitprune.load(tmp_path / "tome")
        assert back.vitprune_method.options == m.vitprune_method.options
        with torch.no_grad():
            assert torch.equal(back(digits), m(digits))


def test_runtime_r_change_and_refusal(digits):
    m = patched(make_vit(depth=6, embed_dim=96), r=8)
    tome = m.vitprune_method
    with tome.overrides(r=4):
        assert tome.token_schedule(m) == [65, 61, 57, 53, 49, 45]
    assert tome.token_schedule(m)[1] == 57
    with pytest.raises(MethodOptionError, match="at most 32"):
        tome.set_runtime(r=40)
    assert tome.options.r == 8


def test_official_checkpoint_is_plain_timm_and_unknown_keys_are_refused(tmp_path):
    """ToMe's released DeiT checkpoints are plain timm state dicts under 'model'."""
    import timm

    from vitprune.hub.convert import import_checkpoint

    src = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    torch.save({"model": src.state_dict(), "epoch": 299}, tmp_path / "tome.pth")
    model = import_checkpoint(tmp_path / "tome.pth", "deit_tiny_patch16_224", "tome", r=13)
    assert model.vitprune_method.options.r == 13
    own = model.state_dict()
    assert own.keys() == src.state_dict().keys()
    assert all(torch.equal(own[k], v) for k, v in src.state_dict().items())
    sd = dict(src.state_dict(), **{"blocks.0.attn.size_bias": torch.zeros(3)})
    with pytest.raises(MethodOptionError, match="checkpoint key 'blocks.0.attn.size_bias' is not part of"):
        model.vitprune_method.convert_official_state_dict(sd, model)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("opts, message", [
    ({"r": 33}, r"`r` 33 is too large: this model has 64 patch tokens .* at most 32 \(use r <= 32\)"),
    ({"r": [4, 40]}, r"`r` schedule entry 40 \(block 1\) is too large"),
    ({"r": 17, "inflection": -1.0}, r"`r` schedule entry 34 \(block 0\) is too large"),
    ({"r": -1}, "`r` must be a non-negative int or a comma list of them, got -1"),
    ({"r": 2.5}, "`r` must be an integer or a comma list of integers, got 2.5"),  # the options' type check
    ({"r": True}, "`r` must be an integer or a comma list of integers, got True"),
    ({"r": [3, -1]}, "`r` must be a non-negative int or a comma list"),
    ({"r": [1] * 7}, "`r` lists 7 blocks but the model has 6"),
    ({"r": 4, "inflection": 1.5}, r"`inflection` must be a number in \[-1, 1\], got 1.5"),
    ({"r": [4, 4], "inflection": 0.5}, "`inflection` shapes a single int `r`"),
    ({"r": (4, 0.5), "inflection": 0.5}, "give the inflection once"),
    ({"prop_attn": "yes"}, "`prop_attn` must be true or false"),
    ({"keep_rate": 0.7}, r"`keep_rate` is not an option of tome \(its options: `inflection`, `prop_attn`, `r`\)"),
])
def test_bad_options_raise_one_clear_line(opts, message):
    with pytest.raises(MethodOptionError, match=message) as info:
        vitprune.apply_method(make_vit(depth=6, embed_dim=96), "tome", **opts)
    assert "\n" not in str(info.value)


def test_unsupported_model_is_refused():
    import timm

    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4,
                             window_size=4, embed_dim=24, depths=(1, 1), num_heads=(1, 2), num_classes=10)
    with pytest.raises(UnsupportedModelError, match="is a SwinTransformer, not a Vision Transformer"):
        vitprune.apply_method(swin, "tome", r=2)
    with pytest.raises(MethodOptionError, match="already patched with tome"):
        vitprune.apply_method(patched(make_vit(depth=2), r=2), "tome", r=2)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--r", "40"], "--r 40 is too large"),
    (["--r", "4,4,40"], "--r schedule entry 40 (block 2) is too large"),
    (["--r", "4", "--opt", "inflection=3"], "--inflection must be a number in [-1, 1], got 3"),
])
def test_cli_bad_option_exits_1_with_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    vitprune.save(make_vit(depth=6, embed_dim=96), tmp_path / "tiny")
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "tiny"), "--no-weights", "--method", "tome", *args,
                                   "--no-speed"])
    assert res.exit_code == 1, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


def test_cli_profile_reports_tome(tmp_path):
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    vitprune.save(make_vit(depth=6, embed_dim=96), tmp_path / "tiny")
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "tiny"), "--no-weights", "--method", "tome", "--r",
                                   "8,8,8", "--opt", "prop_attn=false", "--no-speed", "--json"])
    assert res.exit_code == 0, res.output
    assert '"tome"' in res.output


def test_methods_listing_shows_tome():
    from vitprune.methods import describe_methods

    (info,) = [d for d in describe_methods() if d["name"] == "tome"]
    assert info["needs_training"] is False and info["runtime_options"] == ["r", "inflection", "prop_attn"]
    assert len(info["notes"]) >= 5 and all(o["help"] for o in info["options"])
    assert {o["name"] for o in info["options"]} == {"r", "inflection", "prop_attn"}


def test_digits_are_real_images():
    x = digits_batch(4)
    assert x.shape == (4, 3, 32, 32) and x.std() > 0.5


# ------------------------------------------------------------------------------------------ fused merge (fast path)


def _fused_vs_plain(m, x, backend):
    tome = m.vitprune_method
    with tracking(m), torch.no_grad():
        plain = m(x)
    plain_maps = [a for _, a in m.vitprune_state.stages]
    tome.fused_merge, tome.fused_backend = True, backend
    try:
        with tracking(m), torch.no_grad():
            fused = m(x)
    finally:
        tome.fused_merge = False
    fused_maps = [a for _, a in m.vitprune_state.stages]
    return plain, fused, plain_maps, fused_maps


@pytest.mark.slow
def test_fused_merge_is_one_graph_per_step_with_the_plain_result(digits):
    """backend='eager' replays what dynamo captured: fullgraph=True proves the matching and merge of a block are one
    graph (no break, no host read), for every block's token count, and nothing changes in the result."""
    torch._dynamo.reset()
    m = patched(make_vit(depth=4), r=[8, 6, 6, 4])
    plain, fused, pm, fm = _fused_vs_plain(m, digits, "eager")
    assert torch.equal(plain, fused) and all(torch.equal(a, b) for a, b in zip(pm, fm)) and len(pm) == 4


@pytest.mark.slow
def test_fused_merge_compiled_by_inductor_matches_the_plain_path_on_photos(photos):
    """The inductor kernels reorder float sums: logits within float tolerance, and the same tokens merged."""
    torch._dynamo.reset()
    m = patched(make_vit(depth=6, img_size=224, patch_size=16), r=13)
    plain, fused, pm, fm = _fused_vs_plain(m, photos, "inductor")
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(pm, fm))
