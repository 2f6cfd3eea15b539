"""SaiT against the paper's statements and vitprune's documented reconstruction (the module docstring, SaiT.notes)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import vitprune
from vitprune import ops
from vitprune.errors import MethodOptionError, UnsupportedModelError
from vitprune.measure import count_macs
from vitprune.methods import StepContext, TeacherOutput, tracking
from vitprune.ops.analytic import token_macs
from vitprune.methods.sait import SaiT, calibrate_threshold
from vitprune.ops import adaptive as aops

from .conftest import digits_batch, make_vit


def patched(model, **opts):
    return vitprune.apply_method(copy.deepcopy(model), "sait", **opts)


@pytest.fixture(scope="module")
def demo():
    """The bundled demo teacher (trained: its class attention is image dependent, so adaptive counts vary)."""
    return vitprune.load_model("demo").eval()


@pytest.fixture(scope="module")
def digits32():
    return digits_batch(32)


def run_tracked(model, x):
    with tracking(model), torch.no_grad():
        y = model(x)
    return y, model.vitprune_state


# ------------------------------------------------------------------------------------------ identity


def test_dense_mode_and_no_op_levels_are_bit_identical_to_the_base_model(tiny_vit, digits):
    with torch.no_grad():
        ref = tiny_vit(digits)
        for opts in (dict(mode="dense"), dict(mode="fixed", keep_rate=1.0), dict(mode="adaptive", threshold=1.0),
                     dict(mode="dense", fuse=True, prune_at=[2, 5])):
            assert torch.equal(patched(tiny_vit, **opts)(digits), ref), opts


def test_nothing_pruned_through_the_real_compute_path_matches_dense(tiny_vit, digits):
    """k_min = 1 forces every token to be kept while the adaptive path still scores, sorts and gathers."""
    m = patched(tiny_vit, mode="adaptive", threshold=0.3, k_min=1.0)
    y, state = run_tracked(m, digits)
    assert state.counts == [65] * 12 and state.aux["sait_kept"][0].tolist() == [64] * 8
    assert not torch.equal(state.origin, torch.arange(64).expand(8, -1))  # the tokens really were reordered
    torch.testing.assert_close(y, tiny_vit(digits), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ token counts


def test_token_schedule_deit_s_follows_the_fixed_and_adaptive_rules(deit_small):
    m = patched(deit_small, mode="dense")
    method = m.vitprune_method

    def sched(**runtime):
        with method.overrides(**runtime):
            return method.token_schedule(m)

    assert sched() == [197] * 12
    assert sched(mode="fixed", keep_rate=0.5) == [197] * 3 + [99] * 9  # 3 dense blocks + 9 at 1 + 98
    assert sched(mode="fixed", keep_rate=0.4) == [197] * 3 + [80] * 9  # ceil(78.4) = 79
    assert sched(mode="fixed", keep_rate=0.7) == [197] * 3 + [139] * 9  # ceil(137.2) = 138
    assert sched(mode="fixed", keep_rate=0.05) == [197] * 3 + [21] * 9  # k_min = ceil(0.1 * 196) = 20
    # adaptive: the worst case, an image whose importance is uniform: ceil(0.9 * 196) = 177
    assert sched(mode="adaptive", threshold=0.9) == [197] * 3 + [178] * 9
    with method.overrides(mode="fixed", keep_rate=0.5):
        assert method.token_schedule(m, (384, 384)) == [577] * 3 + [289] * 9
    method.options.fuse = True  # (not a run-time option: set on the options only to read the schedule)
    assert sched(mode="fixed", keep_rate=0.5) == [197] * 3 + [100] * 9


def test_demo_shape_measured_counts_equal_schedule(digits):
    base = make_vit(depth=6, embed_dim=96)  # the demo teacher's shape: 8x8 patches, prune_at scales to block 1
    m = patched(base, mode="fixed", keep_rate=0.5)
    _, state = run_tracked(m, digits)
    assert state.counts == m.vitprune_method.token_schedule(m) == [65, 33, 33, 33, 33, 33]
    m = patched(base, mode="fixed", keep_rate=0.7, prune_at=[1, 3], fuse=True)
    _, state = run_tracked(m, digits)
    assert state.counts == m.vitprune_method.token_schedule(m) == [65, 47, 47, 35, 35, 35]  # 45+1, ceil(32.2)+1
    m = patched(base, mode="adaptive", threshold=0.6, k_min=1.0)
    _, state = run_tracked(m, digits)
    assert state.counts == m.vitprune_method.token_schedule(m) == [65] * 6


def test_adaptive_schedule_is_an_upper_bound_of_the_padded_widths(demo, digits32):
    m = patched(demo, mode="adaptive", threshold=0.8, prune_at=[1, 3])
    _, state = run_tracked(m, digits32)
    bound = m.vitprune_method.token_schedule(m)
    assert bound == [65, 53, 53, 43, 43, 43]  # ceil(0.8 * 64) = 52, ceil(0.8 * 52) = 42
    assert all(c <= b for c, b in zip(state.counts, bound)) and state.counts[1] < bound[1]
    kept = state.aux["sait_kept"]
    assert state.counts[1] == 1 + int(kept[0].max()) and state.counts[3] == 1 + int(kept[1].max())
    assert int(kept[0].min()) < int(kept[0].max())  # per-image counts really differ


def test_any_image_size_the_base_model_accepts(digits):
    base = make_vit(dynamic_img_size=True)
    x = torch.nn.functional.interpolate(digits, size=(48, 48), mode="bilinear", align_corners=False)
    for opts in (dict(mode="fixed", keep_rate=0.5), dict(mode="adaptive", threshold=0.7, k_min=0.9)):
        m = patched(base, **opts)
        y, state = run_tracked(m, x)
        assert y.shape == (8, 10) and state.counts[0] == 1 + 144
        assert state.counts == m.vitprune_method.token_schedule(m, (48, 48))


# ------------------------------------------------------------------------------------------ GMACs


def deit_s_macs(kept: int) -> float:
    """3 dense blocks + 9 blocks at 1 + kept tokens, fvcore conventions, class row at block 2."""
    C = 384

    def block(n):
        return 12 * n * C * C + 2 * n * n * C + 10 * n * C

    return 196 * C * 768 + 3 * block(197) + 197 * C + 9 * block(1 + kept) + 5 * (1 + kept) * C + C * 1000


@pytest.mark.slow
def test_gmacs_deit_s_fixed_keep_half_and_forty_percent(deit_small):
    for rate, kept, spec in ((0.5, 98, 2.9), (0.4, 79, 2.6)):
        mc = count_macs(patched(deit_small, mode="fixed", keep_rate=rate))
        assert mc.source == "fvcore" and not mc.uncounted
        assert mc.macs == pytest.approx(deit_s_macs(kept), rel=1e-6)
        # the design estimates ≈2.9 / ≈2.6 are rounded: measured 2.845 (-38 %) and 2.517 (-45 %) of 4.608
        assert mc.gmacs == pytest.approx(spec, rel=0.035)
    assert count_macs(patched(deit_small, mode="dense")).gmacs == pytest.approx(4.608, rel=1e-3)


@pytest.mark.parametrize("arch,kwargs,opts", [
    ("vit_tiny_patch16_224", {}, dict(mode="fixed", keep_rate=0.5)),
    ("vit_tiny_patch16_224", {}, dict(mode="fixed", keep_rate=0.5, fuse=True, prune_at=[3, 6, 9])),
    ("deit_small_distilled_patch16_224", {}, dict(mode="fixed", keep_rate=0.7)),
    ("vit_small_patch16_224", dict(reg_tokens=2), dict(mode="fixed", keep_rate=0.7)),
    ("vit_tiny_patch16_224", dict(qk_norm=True, init_values=1e-5), dict(mode="fixed", keep_rate=0.7)),
])
def test_analytic_macs_equal_fvcore(arch, kwargs, opts, digits):
    """macs() (adaptive mode) counts with fvcore's conventions: on static schedules both agree exactly."""
    m = patched(make_vit(arch=arch, **kwargs), **opts)
    tokens = torch.tensor(m.vitprune_method.token_schedule(m))[None]
    ours = token_macs(m, tokens, m.vitprune_method._selection_blocks(m))
    assert float(ours[0]) == count_macs(m, images=digits[:1]).macs


def test_adaptive_macs_are_the_mean_of_per_image_decisions(demo, digits32):
    m = patched(demo, mode="adaptive", threshold=0.8)
    mc = count_macs(m, images=digits32)
    assert mc.source == "method"
    per_image, kept = m.vitprune_method.image_macs(m, digits32)
    assert mc.macs == pytest.approx(float(per_image.mean()))
    # each image's figure is the fvcore count of a fixed-shape model keeping exactly that image's count
    k = kept[0]
    for b in (int(k.argmin()), int(k.argmax())):
        rate = int(k[b]) / 64
        fixed = count_macs(patched(demo, mode="fixed", keep_rate=rate), images=digits32[:1]).macs
        assert float(per_image[b]) == fixed
    assert per_image.min() < mc.macs < per_image.max()


@pytest.mark.slow
def test_one_saved_model_three_modes_three_gmacs_without_reloading(tmp_path, digits):
    """Oracle 5: dense > fixed 0.7 > adaptive 0.5 (near-uniform attention keeps about half)."""
    vitprune.save(patched(make_vit(), mode="dense"), tmp_path / "sait")
    m = vitprune.load(tmp_path / "sait")
    method = m.vitprune_method
    dense = count_macs(m, images=digits).gmacs
    method.set_runtime(mode="fixed", keep_rate=0.7)
    fixed = count_macs(m, images=digits).gmacs
    with method.overrides(mode="adaptive", threshold=0.5):
        adaptive = count_macs(m, images=digits).gmacs
    assert method.options.mode == "fixed"  # overrides restore
    assert dense > fixed > adaptive
    assert dense == pytest.approx(count_macs(make_vit(), images=digits).gmacs)


# ------------------------------------------------------------------------------------------ adaptive rule


def test_adaptive_count_is_the_minimal_prefix_reaching_the_threshold():
    scores = torch.tensor([[0.125, 0.5, 0.0625, 0.25, 0.0625],
                           [0.2, 0.2, 0.2, 0.2, 0.2]])
    sorted_s, order = aops.order_by_score(scores)
    assert order[0].tolist() == [1, 3, 0, 2, 4]
    n = torch.tensor([5, 5])
    counts = lambda tau, kmin=0.01: aops.mass_keep_counts(sorted_s, tau, kmin, n).tolist()  # noqa: E731
    assert counts(0.5) == [1, 3]  # 0.5 reached by the first token; uniform needs ceil(0.5 * 5)
    assert counts(0.75) == [2, 4]  # 0.5 + 0.25 reaches 0.75 exactly
    assert counts(0.76) == [3, 4]
    assert counts(0.875) == [3, 5]
    assert counts(1.0) == [5, 5]
    assert counts(0.5, kmin=0.5) == [3, 3]  # k_min clamp: ceil(0.5 * 5)
    keep = aops.rank_keep_mask(order, torch.tensor([2, 4]))
    assert keep[0].tolist() == [False, True, False, True, False] and int(keep[1].sum()) == 4


def test_adaptive_count_matches_brute_force_on_random_importances():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(64, 37, generator=g) ** 3
    valid = torch.rand(64, 37, generator=g) > 0.3
    sorted_s, order = aops.order_by_score(scores, valid)
    n = valid.sum(1)
    for tau in (0.3, 0.61, 0.9):
        counts = aops.mass_keep_counts(sorted_s, tau, 0.1, n)
        for b in range(64):
            s = sorted((float(v) for v, ok in zip(scores[b].double(), valid[b]) if ok), reverse=True)
            total, acc, k = sum(s), 0.0, 0
            while acc / total < tau - 1e-6:
                acc += s[k]
                k += 1
            assert int(counts[b]) == min(len(s), max(k, math.ceil(0.1 * len(s)))), (tau, b)
            # dead slots sort last and are never kept
            assert bool(valid[b, order[b, : int(counts[b])]].all())


def test_prefix_tokens_are_kept_first_and_never_counted():
    x = torch.arange(2 * 7 * 1, dtype=torch.float32).reshape(2, 7, 1)  # 2 prefix + 5 patches
    order = torch.tensor([[4, 0, 1, 2, 3], [2, 3, 4, 0, 1]])
    out, valid = aops.gather_padded(x, order, torch.tensor([1, 3]), 3, num_prefix=2)
    assert out[:, :2].equal(x[:, :2])
    assert out[0, 2:, 0].tolist() == [6.0, 2.0, 3.0] and valid.tolist() == [[True, False, False], [True] * 3]


def test_prefix_tokens_distilled_and_register_models_match_a_hand_built_reference(digits):
    """Prune before block 3 by block 2's class row over patches only; every prefix token stays first."""
    for base in (make_vit(arch="deit_small_distilled_patch16_224"),
                 make_vit(arch="vit_small_patch16_224", reg_tokens=2)):
        npre = base.num_prefix_tokens
        m = patched(base, mode="fixed", keep_rate=0.5)
        y, state = run_tracked(m, digits)
        assert state.counts == [npre + 64] * 3 + [npre + 32] * 9 == m.vitprune_method.token_schedule(m)
        assert bool((state.origin >= 0).all()) and state.origin.max() < 64
        with torch.no_grad():
            x = base.norm_pre(base.patch_drop(base._pos_embed(base.patch_embed(digits))))
            x = base.blocks[1](base.blocks[0](x))
            blk = base.blocks[2]
            out, rows, _ = ops.attention(blk.attn, blk.norm1(x), cls_rows=1)
            x = ops.mlp_residual(blk, ops.attn_residual(blk, x, out))
            idx = ops.topk_patches(rows[:, :, 0, npre:].mean(1), 32)
            x = ops.keep_tokens(x, idx, npre)
            for blk in base.blocks[3:]:
                x = blk(x)
            ref = base.forward_head(base.norm(x))
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
        m = patched(base, mode="adaptive", threshold=0.7)
        y, state = run_tracked(m, digits)
        assert y.shape == (8, 10) and state.counts[:3] == [npre + 64] * 3 and state.counts[3] <= npre + 45


# ------------------------------------------------------------------------------------------ adaptive inference


def test_padded_batch_equals_each_image_alone_and_buckets_equal_padding(demo, digits32):
    m = patched(demo, mode="adaptive", threshold=0.85)
    with torch.no_grad():
        padded = m(digits32)
        alone = torch.cat([m(digits32[i:i + 1]) for i in range(8)])  # batch 1: no padding, no mask
        torch.testing.assert_close(padded[:8], alone, atol=1e-5, rtol=1e-5)
        m.vitprune_method.set_runtime(buckets=3)
        torch.testing.assert_close(m(digits32), padded, atol=1e-5, rtol=1e-5)
    with pytest.raises(MethodOptionError, match="`fuse` cannot be changed at run time"):
        m.vitprune_method.set_runtime(fuse=True)


def test_fused_token_is_the_weighted_sum_of_each_images_pruned_tokens(demo, digits32):
    m = patched(demo, mode="adaptive", threshold=0.8, fuse=True)
    with torch.no_grad():
        y, state = run_tracked(m, digits32)
        kept = state.aux["sait_kept"][0]
        assert state.counts[1] == 1 + int(kept.max()) + 1  # padded kept tokens + one fused slot
        assert bool((state.origin[:, -1] == -1).all())
        # reference for image 0 alone: its pruned tokens weighted by raw head-averaged class attention
        x = demo.norm_pre(demo._pos_embed(demo.patch_embed(digits32[:1])))
        blk = demo.blocks[0]
        out, rows, _ = ops.attention(blk.attn, blk.norm1(x), cls_rows=1)
        x = ops.mlp_residual(blk, ops.attn_residual(blk, x, out))
        scores = rows[:, :, 0, 1:].mean(1)
        order = ops.rank_patches(scores)
        k = int(kept[0])
        fused = ops.fuse_tokens(x[:, 1:], scores, order[:, k:])
        x = torch.cat([ops.keep_tokens(x, order[:, :k], 1), fused], 1)
        for blk in demo.blocks[1:]:
            x = blk(x)
        torch.testing.assert_close(y[:1], demo.forward_head(demo.norm(x)), atol=1e-5, rtol=1e-5)
    # an image that prunes nothing gets a hidden (masked) fused slot: the same output as without fusion
    a = patched(demo, mode="adaptive", threshold=0.5, k_min=1.0, fuse=True)
    with torch.no_grad():
        torch.testing.assert_close(a(digits32[:4]), demo(digits32[:4]), atol=1e-5, rtol=1e-5)


def test_tracking_records_per_image_kept_patches(demo, digits32):
    m = patched(demo, mode="adaptive", threshold=0.8, prune_at=[1, 3])
    _, state = run_tracked(m, digits32)
    assert [b for b, _ in state.stages] == [0, 2]
    for (_, assign), kept in zip(state.stages, state.aux["sait_kept"]):
        assert assign.shape == (32, 64)
        assert (assign >= 0).sum(1).tolist() == kept.tolist()


# ------------------------------------------------------------------------------------------ masked training


@pytest.mark.parametrize("opts", [dict(mode="fixed", keep_rate=0.5), dict(mode="fixed", keep_rate=0.6, fuse=True),
                                  dict(mode="adaptive", threshold=0.8, prune_at=[1, 3])])
def test_masked_training_forward_equals_gather_inference(opts, demo, digits32):
    m = patched(demo, **opts)
    npre = 1
    with torch.no_grad():
        with tracking(m):
            ev_tokens = m.forward_features(digits32)
        origin = m.vitprune_state.origin
        m.train()
        tr_tokens = m.forward_features(digits32)
        state = m.vitprune_state
    assert tr_tokens.shape[1] >= 65 and all(c == state.counts[0] for c in state.counts[:2])  # static shapes
    torch.testing.assert_close(tr_tokens[:, :npre], ev_tokens[:, :npre], atol=1e-5, rtol=1e-5)
    real = origin >= 0
    pos = origin.clamp_min(0) + npre
    tr_kept = torch.gather(tr_tokens, 1, pos[..., None].expand(-1, -1, tr_tokens.shape[-1]))
    torch.testing.assert_close(tr_kept[real], ev_tokens[:, npre:][real], atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.stack(state.aux["sait_kept"]), torch.stack(_eval_kept(m, digits32)))


def _eval_kept(m, x):
    m.eval()
    return run_tracked(m, x)[1].aux["sait_kept"]


# ------------------------------------------------------------------------------------------ training


def test_training_pass_backward_and_selection_distillation(digits):
    base = make_vit(depth=4)
    teacher = make_vit(depth=4, seed=1)
    m = patched(base, mode="adaptive", threshold=0.7, prune_at=[2]).train()
    method = m.vitprune_method
    t_out = method.teacher_forward(teacher, digits)
    with torch.no_grad():
        torch.testing.assert_close(t_out.logits, teacher(digits), atol=1e-5, rtol=1e-5)
    assert t_out.extras["sait_cls_attn"].shape == (8, 64)
    with tracking(m):
        logits = m(digits)
    state = m.vitprune_state
    assert state.counts == [65] * 4 and logits.shape == (8, 10)  # masks, not gathers
    aux = method.aux_losses(m, state, t_out)
    assert set(aux) == {"sait_sel"} and torch.isfinite(aux["sait_sel"]) and aux["sait_sel"] > 0
    (logits.logsumexp(1).mean() + aux["sait_sel"]).backward()
    assert m.blocks[3].mlp.fc2.weight.grad is not None and m.blocks[1].attn.qkv.weight.grad.abs().sum() > 0
    # the selection loss alone reaches blocks 0..p-1 (the selection), never the blocks after it
    m.zero_grad()
    m(digits)
    method.aux_losses(m, m.vitprune_state, t_out)["sait_sel"].backward()
    assert m.blocks[1].attn.qkv.weight.grad.abs().sum() > 0 and m.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert m.blocks[2].attn.qkv.weight.grad is None or m.blocks[2].attn.qkv.weight.grad.abs().sum() == 0
    # zero at target: the teacher's map equal to the student's own selection distribution
    with torch.no_grad():
        m(digits)
        own = m.vitprune_state.aux["sait_sel"][0][0]
        zero = method.aux_losses(m, m.vitprune_state, TeacherOutput(logits=t_out.logits, extras={"sait_cls_attn": own}))
    assert float(zero["sait_sel"]) == pytest.approx(0.0, abs=1e-6)
    m.vitprune_method.set_runtime(mode="dense")
    m(digits)
    assert method.aux_losses(m, m.vitprune_state, t_out) == {}  # dense passes select nothing


def test_selection_target_falls_back_to_the_students_own_dense_pass(digits):
    """The dense pass leaves its class attention in the step context for the sparse pass of the same images;
    nothing stays on the method, so the next step (a new context) cannot use a stale map of other images."""
    m = patched(make_vit(depth=4), prune_at=[2]).train()
    method = m.vitprune_method
    no_map = TeacherOutput(logits=torch.zeros(8, 10))
    step = StepContext(epoch=0.0, total_epochs=1.0)
    passes = method.training_passes(step)
    with method.overrides(**passes[0]):
        m(digits)
    assert method.aux_losses(m, m.vitprune_state, no_map, step=step) == {}
    carried = step.carry["sait_self_target"]
    assert carried.shape == (8, 64) and not carried.requires_grad
    assert not any(isinstance(v, torch.Tensor) for v in vars(method).values())
    with method.overrides(**passes[1]):
        m(digits)
    sparse_state = m.vitprune_state
    loss = method.aux_losses(m, sparse_state, no_map, step=step)["sait_sel"]
    assert torch.isfinite(loss) and loss > 0
    # a sparse pass of another step has no dense map of its images: no selection loss rather than a stale one
    assert method.aux_losses(m, sparse_state, no_map, step=StepContext()) == {}


def test_training_passes_dense_and_sparse_levels_from_the_range():
    m = patched(make_vit(depth=4))
    method = m.vitprune_method
    torch.manual_seed(3)
    first = method.training_passes()
    torch.manual_seed(3)
    assert method.training_passes() == first  # the trainer's seed makes the levels reproducible
    assert first[0] == {"mode": "dense"} and first[1]["mode"] == "adaptive"
    levels = [method.training_passes()[1]["threshold"] for _ in range(50)]
    assert 0.8 <= min(levels) < max(levels) <= 0.98
    fixed = patched(make_vit(depth=4), sparse_train_mode="fixed", keep_rate_range=[0.4, 0.9]).vitprune_method
    rates = [fixed.training_passes()[1]["keep_rate"] for _ in range(50)]
    assert 0.4 <= min(rates) < max(rates) <= 0.9
    alt = patched(make_vit(depth=4), sait_schedule="alternate").vitprune_method
    assert alt.training_passes(StepContext(epoch=0.5, total_epochs=4)) == [{"mode": "dense"}]
    (only,) = alt.training_passes(StepContext(epoch=1.2, total_epochs=4))
    assert only["mode"] == "adaptive"
    recipe = method.default_recipe()
    assert recipe["kd_weight"] == recipe["cls_weight"] == 0.5 and recipe["kd_temperature"] == 1.0
    assert method.new_module_prefixes == () and "mode" in method.runtime_options


# ------------------------------------------------------------------------------------------ calibration


def test_calibrated_threshold_gives_forty_percent_fewer_gmacs(demo, digits32):
    m = patched(demo, mode="adaptive")
    cal = calibrate_threshold(m, [(digits32[:16], None), (digits32[16:], None)], iterations=10)
    assert cal.num_images == 32 and 0 < cal.threshold < 1
    assert cal.reduction == pytest.approx(0.40, abs=0.02)
    assert m.vitprune_method.options.threshold == cal.threshold  # applied as the new default
    assert count_macs(m, images=digits32).gmacs == pytest.approx(cal.gmacs, rel=1e-6)
    assert cal.min_kept[0] <= cal.mean_kept[0] <= cal.max_kept[0] <= cal.num_patches[0] == 64
    assert cal.dense_gmacs == pytest.approx(count_macs(demo).gmacs)
    again = m.vitprune_method.calibrate(m, digits32)  # the generic hook gives the same answer, as a dict
    assert again["threshold"] == pytest.approx(cal.threshold, abs=2e-3) and again["num_images"] == 32


def test_calibration_search_shortcut_equals_the_full_forward(demo, digits32):
    """One location: the search reads the counts from block p-1's importances alone; same MACs as a forward."""
    for fuse in (False, True):
        m = patched(demo, mode="adaptive", fuse=fuse)
        method = m.vitprune_method
        curves = method._sorted_importance(m, digits32, 1)
        for tau in (0.6, 0.85):
            with method.overrides(threshold=tau):
                full = count_macs(m, images=digits32).macs
            assert method._macs_from_curves(m, curves, 1, tau) == pytest.approx(full, rel=1e-9)
    two = patched(demo, mode="adaptive", prune_at=[1, 3])  # several locations: full forwards in the search
    cal = calibrate_threshold(two, digits32[:8], 0.5, iterations=6)
    assert 0 < cal.threshold < 1 and len(cal.mean_kept) == 2 == len(cal.num_patches)
    assert count_macs(two, images=digits32[:8]).gmacs == pytest.approx(cal.gmacs, rel=1e-6)


# ------------------------------------------------------------------------------------------ save/load, bad input


def test_save_load_round_trip_keeps_the_runtime_default(tmp_path, demo, digits32):
    m = patched(demo, mode="fixed", keep_rate=0.6, prune_at=[1, 3], fuse=True)
    m.vitprune_method.set_runtime(mode="adaptive", threshold=0.75)
    vitprune.save(m, tmp_path / "sait")
    back = vitprune.load(tmp_path / "sait")
    assert back.vitprune_method.options == m.vitprune_method.options
    assert back.vitprune_method.options.mode == "adaptive" and back.vitprune_method.options.threshold == 0.75
    with torch.no_grad():
        assert torch.equal(back(digits32), m(digits32))


@pytest.mark.slow
def test_bad_options_and_models():
    for opts, msg in ((dict(keep_rate=0.0), r"`keep_rate` must be in \(0, 1\]"),
                      (dict(keep_rate=1.5), r"`keep_rate` must be in \(0, 1\]"),
                      (dict(threshold=0.0), r"`threshold` must be in \(0, 1\]"),
                      (dict(threshold=1.01), r"`threshold` must be in \(0, 1\]"),
                      (dict(mode="sparse"), "`mode` must be one of dense, fixed, adaptive"),
                      (dict(prune_at=[0]), "`prune_at` must be a non-empty list of 0-based block indices >= 1"),
                      (dict(prune_at=[3, 3]), "`prune_at` must not repeat a block"),
                      (dict(prune_at=[12]), "`prune_at` 12 is outside the model's blocks"),
                      (dict(threshold_range=[0.9, 0.8]), "`threshold_range` must be two numbers"),
                      (dict(sait_schedule="epochs"), "`sait_schedule` must be one of both, alternate"),
                      (dict(r=8), "`r` is not an option of sait")):
        with pytest.raises(MethodOptionError, match=msg):
            patched(make_vit(depth=12), **opts)
    assert patched(make_vit(depth=12), prune_at=3).vitprune_method.options.prune_at == [3]
    with pytest.raises(UnsupportedModelError, match="no class token"):
        patched(make_vit(class_token=False, global_pool="avg"), mode="fixed", fuse=True)
    with pytest.raises(UnsupportedModelError, match="would enter this ViT's 'avg' pool"):
        patched(make_vit(global_pool="avg"), fuse=True)
    with pytest.raises(UnsupportedModelError, match="pools with 'max'"):
        patched(make_vit(global_pool="max"))


@pytest.mark.parametrize("args,message", [
    (["--threshold", "1.5"], "threshold must be in (0, 1]"),
    (["--keep-rate", "0"], "keep-rate must be in (0, 1]"),
    (["--opt", "prune_at=6"], "--prune-at 6 is outside the model's blocks"),
])
def test_cli_bad_option_exits_1_with_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    vitprune.save(make_vit(depth=6, embed_dim=96), tmp_path / "tiny")
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "tiny"), "--no-weights", "--method", "sait", *args,
                                   "--no-speed"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], res.output


def test_methods_listing_shows_notes_and_options():
    from vitprune.methods import describe_methods

    (info,) = [d for d in describe_methods() if d["name"] == "sait"]
    assert info["runtime_options"] == ["mode", "keep_rate", "threshold", "buckets"]
    assert len(info["notes"]) >= 10 and all(o["help"] for o in info["options"])
    assert {o["name"] for o in info["options"]} >= {"mode", "keep_rate", "threshold", "prune_at", "k_min", "fuse",
                                                    "sel_weight", "sait_schedule"}
    assert SaiT.needs_training
