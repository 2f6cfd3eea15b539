"""DynamicViT against the paper and the reference code, on real timm ViTs and real images."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import vitprune
from vitprune import ops
from vitprune.errors import MethodOptionError, UnsupportedModelError
from vitprune.measure import count_macs, count_params
from vitprune.methods import TeacherOutput, TokenState, dense_copy, tracking
from vitprune.methods.dynamicvit import ScorePredictor, kept_token_mse

from .conftest import assert_keep_one_is_dense, digits_batch, make_vit

DEIT_S_SCHEDULE = [197] * 3 + [138] * 3 + [97] * 3 + [68] * 3


def patched(model, **opts):
    return vitprune.apply_method(copy.deepcopy(model), "dynamicvit", **opts)


def block_inputs(model, blocks):
    """Forward pre-hooks that record the tensor entering each of ``blocks``."""
    seen, handles = {}, []
    for b in blocks:
        handles.append(model.blocks[b].register_forward_pre_hook(
            lambda mod, args, b=b: seen.__setitem__(b, args[0].detach().clone())))
    return seen, handles


# ------------------------------------------------------------------------------------------ identity


def test_keep_rate_one_skips_predictors_and_is_bit_identical(deit_small, photos, tiny_vit, digits):
    assert_keep_one_is_dense(patched, deit_small, photos, tiny_vit, digits)


def test_keep_rate_one_compute_path_matches_dense_within_fp32(deit_small, photos):
    """Forcing predictors + top-k gather of all 196 patches only permutes tokens: logits equal up to fp32 noise."""
    m = patched(deit_small, keep_rate=1.0)
    meth = m.vitprune_method
    with torch.no_grad():
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(photos))))
        state = TokenState(num_prefix=1, grid=(14, 14), training=False, track=True)
        state.start_tracking(x.shape[0], x.device)
        x = meth._eval_blocks(m, x, state, [196, 196, 196], skip_full=False)
        forced = m.forward_head(m.norm(x))
        dense = deit_small(photos)
    assert [b for b, _ in state.stages] == [3, 6, 9]  # the three gathers really ran
    assert not torch.equal(state.origin, torch.arange(196).expand(3, -1))  # tokens were re-ordered by score
    assert sorted(state.origin[0].tolist()) == list(range(196))
    torch.testing.assert_close(forced, dense, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ token counts (1, 2)


@pytest.mark.parametrize("rho, ks, tokens", [
    (0.5, [98, 49, 24], [197, 99, 50, 25]),
    (0.6, [117, 70, 42], [197, 118, 71, 43]),
    (0.7, [137, 96, 67], [197, 138, 97, 68]),
    (0.8, [156, 125, 100], [197, 157, 126, 101]),
    (0.9, [176, 158, 142], [197, 177, 159, 143]),
])
def test_token_schedule_deit_s_is_int_p_rho_s(deit_small, rho, ks, tokens):
    m = patched(deit_small, keep_rate=rho)
    assert m.vitprune_method.keep_counts(196, stages=3) == ks == [int(196 * rho ** s) for s in (1, 2, 3)]
    assert m.vitprune_method.token_schedule(m) == [t for t in tokens for _ in range(3)]


def test_inference_shapes_and_measured_counts_deit_s(deit_small, photos):
    m = patched(deit_small, keep_rate=0.7)
    seen, handles = block_inputs(m, (2, 3, 6, 9))
    with tracking(m), torch.no_grad():
        y = m(photos)
    for h in handles:
        h.remove()
    assert y.shape == (3, 1000)
    assert {b: tuple(t.shape) for b, t in seen.items()} == {2: (3, 197, 384), 3: (3, 138, 384), 6: (3, 97, 384),
                                                             9: (3, 68, 384)}
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m) == DEIT_S_SCHEDULE
    assert [b for b, _ in m.vitprune_state.stages] == [3, 6, 9]
    # each recorded map assigns exactly k_s original patches to current tokens, the rest -1
    for (_, assign), k in zip(m.vitprune_state.stages, (137, 96, 67)):
        assert assign.shape == (3, 196) and ((assign >= 0).sum(1) == k).all()


def test_demo_teacher_shape_counts(digits):
    base = make_vit(depth=6, embed_dim=96)  # 32 px, patch 4: 64 patches; locations 1, 3, 4
    m = patched(base, keep_rate=0.7)
    meth = m.vitprune_method
    assert meth.locations(6) == [1, 3, 4]
    assert meth.keep_counts(64, stages=3) == [int(64 * 0.7), int(64 * 0.7 ** 2), int(64 * 0.7 ** 3)] == [44, 31, 21]
    assert meth.token_schedule(m) == [65, 45, 45, 32, 22, 22]
    with tracking(m), torch.no_grad():
        assert m(digits).shape == (8, 10)
    assert m.vitprune_state.counts == meth.token_schedule(m)


def test_counts_follow_the_actual_image_size():
    base = make_vit(dynamic_img_size=True)  # trained at 32 px (8x8), run at 48 px (12x12 = 144 patches)
    m = patched(base, keep_rate=0.7)
    x = digits_batch(4, size=48)
    with tracking(m), torch.no_grad():
        assert m(x).shape == (4, 10)
    expected = [1 + 144] * 3 + [1 + int(144 * 0.7)] * 3 + [1 + int(144 * 0.49)] * 3 + [1 + int(144 * 0.7 ** 3)] * 3
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m, img_size=(48, 48)) == expected


def test_kept_tokens_are_the_top_scores_in_descending_order(digits):
    m = patched(make_vit(), keep_rate=0.5)  # locations 3, 6, 9; 64 -> 32 -> 16 -> 8 patches
    seen, handles = block_inputs(m, (3,))
    outs = {}
    handles.append(m.blocks[2].register_forward_hook(lambda mod, a, o: outs.__setitem__(2, o.detach().clone())))
    with tracking(m), torch.no_grad():
        m(digits)
        scores = m.score_predictor[0](outs[2][:, 1:])[..., 0]
    for h in handles:
        h.remove()
    _, assign = m.vitprune_state.stages[0]
    kept = torch.stack([torch.nonzero(a >= 0).flatten()[a[a >= 0].argsort()] for a in assign])  # origin per slot
    ks = torch.gather(scores, 1, kept)
    assert (ks[:, :-1] >= ks[:, 1:]).all()  # descending score order
    dropped_max = scores.masked_fill(assign >= 0, float("-inf")).amax(1)
    assert (ks[:, -1] >= dropped_max).all()  # the top 32
    # the tokens entering block 3 are exactly [cls, kept patches in that order]
    assert torch.equal(seen[3][:, :1], outs[2][:, :1])
    assert torch.equal(seen[3][:, 1:], ops.take_rows(outs[2][:, 1:], kept))


def test_runtime_keep_rate_override(deit_small):
    m = patched(deit_small, keep_rate=0.7)
    with m.vitprune_method.overrides(keep_rate=0.5):
        assert m.vitprune_method.token_schedule(m)[9] == 25
    assert m.vitprune_method.token_schedule(m) == DEIT_S_SCHEDULE


# ------------------------------------------------------------------------------------------ MACs, params (6, 7)


def test_macs_deit_s_match_the_analytic_count(deit_small):
    got = count_macs(patched(deit_small, keep_rate=0.7)).gmacs
    assert got == pytest.approx(2.9876, rel=0.01)
    # minus the predictors' own cost (241,728 MACs per scored token at 196, 137, 96 tokens) = 2.8839 by hand
    assert got - (196 + 137 + 96) * 241_728 / 1e9 == pytest.approx(2.8839, rel=1e-3)
    assert count_macs(deit_small).gmacs == pytest.approx(4.6083, rel=1e-3)


def test_parameter_counts_deit_s_and_deit_b(deit_small):
    m = patched(deit_small, keep_rate=0.7)
    assert count_params(m) == 22_774_414
    assert count_params(m.score_predictor) == 723_750
    with torch.device("meta"):
        base = timm.create_model("deit_base_patch16_224", pretrained=False)
    b = vitprune.apply_method(base, "dynamicvit", keep_rate=0.7)
    assert count_params(b) == 89_452_846 and count_params(b.score_predictor) == 2_885_190


def test_predictor_structure_and_init():
    p = ScorePredictor(384)
    names = {k: tuple(v.shape) for k, v in p.state_dict().items()}
    assert names == {
        "in_conv.0.weight": (384,), "in_conv.0.bias": (384,), "in_conv.1.weight": (384, 384),
        "in_conv.1.bias": (384,), "out_conv.0.weight": (192, 384), "out_conv.0.bias": (192,),
        "out_conv.2.weight": (96, 192), "out_conv.2.bias": (96,), "out_conv.4.weight": (2, 96),
        "out_conv.4.bias": (2,)}
    assert p.in_conv[0].eps == 1e-5 and p.in_conv[2].approximate == "none"
    for lin in (p.in_conv[1], p.out_conv[0], p.out_conv[2], p.out_conv[4]):
        assert torch.count_nonzero(lin.bias) == 0 and lin.weight.abs().max() <= 2.0
    assert p.in_conv[1].weight.std().item() == pytest.approx(0.02, rel=0.05)
    out = p(torch.randn(2, 5, 384))
    assert out.shape == (2, 5, 2)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 5))  # log-probabilities


# ------------------------------------------------------------------------------------------ prefix tokens


@pytest.mark.parametrize("kwargs, npre", [
    ({"arch": "deit_small_distilled_patch16_224"}, 2),
    ({"arch": "vit_small_patch16_224", "reg_tokens": 2}, 3),
])
def test_prefix_tokens_are_kept_first_and_never_scored(kwargs, npre, digits):
    base = make_vit(**kwargs)
    m = patched(base, keep_rate=0.7)
    sched = m.vitprune_method.token_schedule(m)
    assert sched == [npre + c for c in (64, 64, 64, 44, 44, 44, 31, 31, 31, 21, 21, 21)]
    seen, handles = block_inputs(m, (3, 6, 9))
    outs = {}
    for b in (2, 5, 8):
        handles.append(m.blocks[b].register_forward_hook(lambda mod, a, o, b=b: outs.__setitem__(b + 1, o.detach())))
    with tracking(m), torch.no_grad():
        assert m(digits).shape == (8, 10)
    for h in handles:
        h.remove()
    assert m.vitprune_state.counts == sched
    for b in (3, 6, 9):  # prefix tokens pass every pruning step unchanged and first
        assert torch.equal(seen[b][:, :npre], outs[b][:, :npre])
    for _, assign in m.vitprune_state.stages:
        assert assign.shape == (8, 64)  # maps only patches
    # training: decisions cover patches only, the policy never masks a prefix token
    m.train()
    with tracking(m):
        m(digits).sum().backward()
    assert m.vitprune_state.counts == [npre + 64] * 12
    assert all(d.shape == (8, 64) for d in m.vitprune_state.aux["decisions"])


# ------------------------------------------------------------------------------------------ training (3)


def test_training_shapes_deit_s_static_binary_monotone(deit_small, photos):
    m = patched(deit_small, keep_rate=0.7).train()
    torch.manual_seed(0)
    with tracking(m), torch.no_grad():
        y = m(photos[:2])
    st = m.vitprune_state
    assert y.shape == (2, 1000) and st.counts == [197] * 12
    d1, d2, d3 = st.aux["decisions"]
    for d in (d1, d2, d3):
        assert d.shape == (2, 196) and ((d == 0) | (d == 1)).all()
    assert (d3 <= d2).all() and (d2 <= d1).all()
    assert st.aux["final_tokens"].shape == (2, 197, 384)


def test_training_backward_reaches_predictors_and_losses_are_finite(digits):
    base = make_vit()
    m = patched(base, keep_rate=0.7).train()
    meth = m.vitprune_method
    teacher = dense_copy(m).eval()
    with torch.no_grad():
        t_out = meth.teacher_forward(teacher, digits)
    torch.manual_seed(1)
    logits = m(digits)
    losses = meth.aux_losses(m, m.vitprune_state, t_out)
    assert set(losses) == {"ratio", "token_distill"}
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    (F.cross_entropy(logits, torch.arange(8) % 10) + sum(losses.values())).backward()
    for k in range(3):
        for name, p in m.score_predictor[k].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (k, name)
    assert m.blocks[11].mlp.fc1.weight.grad.abs().sum() > 0


def test_training_tokens_dropped_earlier_cannot_reach_the_class_token(digits):
    """From the first location on every block uses the policy: a token dropped at stage 1 influences the class
    logits only through the 1e-6 attention epsilon (its later decisions are 0 by monotonicity, the next
    predictor's pooling masks it)."""
    m = patched(make_vit(), keep_rate=0.5).train()  # locations 3, 6, 9
    leaf = {}

    def grab(mod, args, out):
        leaf["x"] = out.detach().requires_grad_()
        return leaf["x"]

    # block 5 ends with x + mlp(...): the gradient w.r.t. its MLP output is the gradient w.r.t. the tokens
    # entering block 6 (stage 2)
    h = m.blocks[5].mlp.register_forward_hook(grab)
    torch.manual_seed(0)
    m(digits)[:, 0].sum().backward()
    h.remove()
    d1 = m.vitprune_state.aux["decisions"][0]
    g = leaf["x"].grad[:, 1:].abs().amax(-1)  # B x P
    assert 0 < (d1 == 0).sum() < d1.numel()
    assert g[d1 == 0].max() < 1e-4 * g[d1 == 1].max()


def test_training_keep_rate_one_is_dense_without_losses(digits, tiny_vit):
    m = patched(tiny_vit, keep_rate=1.0).train()
    y = m(digits)
    assert torch.equal(y, tiny_vit.train()(digits))
    assert m.vitprune_method.aux_losses(m, m.vitprune_state, TeacherOutput(logits=y)) == {}


def test_topk_tail_trains_with_the_inference_selection(digits):
    """In the last ``topk_tail`` of a run the training masks are the inference top-k: exact counts per image, the
    same kept set as eval, and (dropped tokens being invisible) the class logits of eval's gathered forward."""
    m = patched(make_vit(), keep_rate=0.7, topk_tail=0.5)  # 64 patches: 44, 31, 21 at blocks 3, 6, 9
    meth = m.vitprune_method
    with torch.no_grad():
        meth.on_train_progress(m, 2.0, 10.0)  # before the tail: Gumbel samples, counts vary
        torch.manual_seed(0)
        m.train()(digits)
        gumbel = [d.sum(1) for d in m.vitprune_state.aux["decisions"]]
        assert any(len(set(c.tolist())) > 1 for c in gumbel)

        meth.on_train_progress(m, 5.0, 10.0)  # the tail
        train_logits = m.train()(digits)
        decisions = m.vitprune_state.aux["decisions"]
        with tracking(m):
            eval_logits = m.eval()(digits)
        kept_eval = m.vitprune_state.origin  # original patch index of each kept token (B x 21)
    assert [d.sum(1).tolist() for d in decisions] == [[k] * 8 for k in meth.keep_counts(64)]
    assert (decisions[2] <= decisions[1]).all() and (decisions[1] <= decisions[0]).all()
    kept_train = [set(torch.nonzero(d).flatten().tolist()) for d in decisions[2]]
    assert kept_train == [set(row.tolist()) for row in kept_eval]
    torch.testing.assert_close(train_logits, eval_logits, atol=1e-4, rtol=0)


def test_topk_keep_decision_straight_through_gradient():
    torch.manual_seed(0)
    log_probs = F.log_softmax(torch.randn(2, 10, 2), -1).requires_grad_()
    prev = torch.ones(2, 10)
    prev[:, :3] = 0  # dropped earlier: never kept again, however high their score
    d = ops.topk_keep_decision(log_probs, 4, prev)
    assert d.sum(1).tolist() == [4.0, 4.0] and (d[:, :3] == 0).all()
    best = log_probs[:, 3:, 0].topk(4, dim=1).indices + 3
    assert all(set(torch.nonzero(row).flatten().tolist()) == set(b.tolist()) for row, b in zip(d, best))
    (d * torch.arange(10.0)).sum().backward()  # gradient reaches the keep log-probabilities of live tokens
    assert log_probs.grad[:, 3:, 0].abs().sum() > 0 and (log_probs.grad[:, :3] == 0).all()


def test_topk_tail_zero_is_the_paper_gumbel_throughout(digits):
    m = patched(make_vit(), keep_rate=0.7, topk_tail=0.0).train()
    m.vitprune_method.on_train_progress(m, 9.9, 10.0)
    torch.manual_seed(0)
    with torch.no_grad():
        m(digits)
    counts = [d.sum(1) for d in m.vitprune_state.aux["decisions"]]
    assert any(len(set(c.tolist())) > 1 for c in counts)


def _state_with(decisions, final=None, npre=1):
    st = TokenState(num_prefix=npre, grid=(8, 8), training=True)
    st.aux["decisions"] = decisions
    st.aux["final_tokens"] = final
    return st


@pytest.mark.slow
def test_ratio_loss_is_zero_at_target_and_matches_formula():
    m = patched(make_vit(), keep_rate=0.5, ratio_weight=2.0)
    meth = m.vitprune_method
    exact = [ops.keep_mask(torch.arange(n).expand(4, -1), 64) for n in (32, 16, 8)]  # 0.5, 0.25, 0.125 of 64
    assert meth.aux_losses(m, _state_with(exact), None)["ratio"].item() == 0.0
    off = [ops.keep_mask(torch.arange(n).expand(4, -1), 64) for n in (64, 16, 0)]  # fractions 1, .25, 0
    want = 2.0 * ((1 - 0.5) ** 2 + 0 + 0.125 ** 2) / 3
    assert meth.aux_losses(m, _state_with(off), None)["ratio"].item() == pytest.approx(want)


def test_token_distillation_counts_only_tokens_kept_after_the_last_stage():
    m = patched(make_vit(), keep_rate=0.7, distill_weight=0.5)
    meth = m.vitprune_method
    torch.manual_seed(0)
    final = torch.randn(2, 65, 48)
    keep = (torch.rand(2, 64) > 0.6).float()
    decisions = [torch.ones(2, 64), torch.ones(2, 64), keep]
    with torch.no_grad():
        normed = m.norm(final)
    loss = lambda tokens: meth.aux_losses(m, _state_with(decisions, final), TeacherOutput(None, tokens))
    assert loss(normed)["token_distill"].item() == 0.0
    moved_dropped = normed.clone()
    moved_dropped[:, 1:][keep == 0] += 5.0  # teacher differs only where the student dropped tokens
    moved_dropped[:, 0] += 5.0  # and on the class token (never distilled)
    assert loss(moved_dropped)["token_distill"].item() == 0.0
    moved_kept = normed.clone()
    moved_kept[:, 1:][keep == 1] += 0.3
    assert loss(moved_kept)["token_distill"].item() == pytest.approx(0.5 * 0.3 ** 2, rel=1e-4)
    # nothing kept: 0, not NaN
    none = kept_token_mse(torch.randn(2, 64, 48), torch.randn(2, 64, 48), torch.zeros(2, 64))
    assert none.item() == 0.0


def test_predictor_masked_mean_ignores_dropped_tokens_and_survives_an_all_zero_mask():
    torch.manual_seed(0)
    p = ScorePredictor(48)
    x = torch.randn(2, 10, 48)
    mask = torch.ones(2, 10)
    mask[:, 6:] = 0
    y = p(x, mask)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 4, 48) * 10  # dropped tokens change: kept tokens' log-probs do not
    torch.testing.assert_close(p(x2, mask)[:, :6], y[:, :6])
    torch.testing.assert_close(p(x[:, :6]), y[:, :6], atol=1e-6, rtol=1e-5)  # = plain mean over the survivors
    assert torch.isfinite(p(x, torch.zeros(2, 10))).all()


def test_predictor_inference_path_gives_the_training_path_numbers_bit_for_bit():
    """Without gradients the global feature is written over the global half in place; with them it is
    concatenated: the same log-probabilities, bit for bit."""
    torch.manual_seed(0)
    p = ScorePredictor(48)
    x = torch.randn(2, 10, 48)
    with torch.no_grad():
        fast = p(x)
    slow = p(x.requires_grad_())
    assert torch.equal(fast, slow.detach())


def test_one_image_gathers_equal_the_batched_gathers_bit_for_bit():
    """``take_rows``, ``keep_tokens`` and ``kept_patches`` at batch 1 (index_select on the token dimension, no
    batch offsets) copy the same rows as the batched path (image 0 of a batch of 3)."""
    torch.manual_seed(0)
    x = torch.randn(3, 17, 8)  # 1 prefix token + 16 patches
    idx = torch.stack([torch.randperm(16)[:5] for _ in range(3)])
    assert torch.equal(ops.take_rows(x[:1], idx[:1]), ops.take_rows(x, idx)[:1])
    assert torch.equal(ops.keep_tokens(x[:1], idx[:1], 1), ops.keep_tokens(x, idx, 1)[:1])
    assert torch.equal(ops.kept_patches(x[:1], idx[:1], 1), ops.kept_patches(x, idx, 1)[:1])
    assert torch.equal(ops.keep_tokens(x[:1], idx[:1], 0), x[:1, idx[0]])


# ------------------------------------------------------------------------------------------ masked softmax (4)


def _masked_block(blk, x, policy):
    return ops.mlp_residual(blk, ops.attn_residual(blk, x, ops.masked_softmax_attention(blk.attn, blk.norm1(x), policy)))


def test_masked_softmax_rows_sum_to_one():
    blk = make_vit(depth=1).blocks[0]
    attn = blk.attn
    with torch.no_grad():  # v_j = b for every token and proj = identity: the output is b x (row sum)
        attn.qkv.weight[96:] = 0
        attn.qkv.bias[96:] = torch.linspace(-1, 1, 48)
        attn.proj.weight.copy_(torch.eye(48))
        attn.proj.bias.zero_()
        x = torch.randn(2, 65, 48)
        policy = torch.cat([torch.ones(2, 1), (torch.rand(2, 64) > 0.5).float()], 1)
        out = ops.masked_softmax_attention(attn, x, policy)
    torch.testing.assert_close(out, attn.qkv.bias[96:].expand(2, 65, -1), atol=1e-6, rtol=0)


def test_masked_attention_hides_dropped_tokens_and_equals_the_gathered_forward(digits):
    base = make_vit(depth=4)
    blk = base.blocks[2]
    with torch.no_grad():
        x = base.norm_pre(base._pos_embed(base.patch_embed(digits)))
        for b in base.blocks[:2]:
            x = b(x)
        torch.manual_seed(0)
        keep = torch.rand(8, 64) > 0.5
        policy = ops.with_prefix_mask(keep.float(), 1)
        out = _masked_block(blk, x, policy)
        # a dropped token's value does not reach the class token (or any kept token)
        x2 = x.clone()
        x2[:, 1:][~keep] += torch.randn_like(x2[:, 1:][~keep]) * 3
        out2 = _masked_block(blk, x2, policy)
        torch.testing.assert_close(out2[:, 0], out[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out2[:, 1:][keep], out[:, 1:][keep], atol=1e-5, rtol=0)
        # = running the block on [cls, kept tokens] only (per image: different kept counts)
        for b in range(8):
            idx = torch.nonzero(keep[b]).flatten()[None]
            ref = blk(ops.keep_tokens(x[b:b + 1], idx, 1))
            got = torch.cat([out[b:b + 1, :1], ops.take_rows(out[b:b + 1, 1:], idx)], 1)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ save/load, checkpoints


def _official_layout(dim: int = 384, arch: str = "deit_small_patch16_224", seed: int = 3):
    """A state dict built to the official release's layout: timm DeiT keys + score_predictor.{k}."""
    torch.manual_seed(seed)
    sd = dict(timm.create_model(arch, pretrained=False).state_dict())
    shapes = {"in_conv.0.weight": (dim,), "in_conv.0.bias": (dim,), "in_conv.1.weight": (dim, dim),
              "in_conv.1.bias": (dim,), "out_conv.0.weight": (dim // 2, dim), "out_conv.0.bias": (dim // 2,),
              "out_conv.2.weight": (dim // 4, dim // 2), "out_conv.2.bias": (dim // 4,),
              "out_conv.4.weight": (2, dim // 4), "out_conv.4.bias": (2,)}
    for k in range(3):
        for name, shape in shapes.items():
            sd[f"score_predictor.{k}.{name}"] = torch.randn(shape)
    return sd


def test_official_checkpoint_layout_imports_exactly(deit_small):
    sd = _official_layout()
    assert sum(not k.startswith("score_predictor.") for k in sd) == 152
    assert sum(k.startswith("score_predictor.") for k in sd) == 30
    m = patched(deit_small, keep_rate=0.7)
    mapped = m.vitprune_method.convert_official_state_dict(sd, m)
    assert set(mapped) == set(m.state_dict())  # everything consumed, nothing missing
    m.load_state_dict(mapped, strict=True)
    back = m.vitprune_method.official_state_dict(m)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    bad = dict(sd, **{"blocks.0.attn.relative_bias": torch.zeros(3)})
    with pytest.raises(MethodOptionError, match="blocks.0.attn.relative_bias"):
        m.vitprune_method.convert_official_state_dict(bad, m)
    extra = dict(sd, **{"score_predictor.3.in_conv.0.weight": torch.zeros(384)})
    with pytest.raises(MethodOptionError, match="3 pruning locations"):
        m.vitprune_method.convert_official_state_dict(extra, m)


@pytest.mark.slow
def test_import_checkpoint_cli_end_to_end(tmp_path, digits):
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    sd = _official_layout(192, "deit_tiny_patch16_224")
    torch.save({"model": sd, "epoch": 29}, tmp_path / "dyvit.pth")
    res = CliRunner().invoke(app, ["import-checkpoint", str(tmp_path / "dyvit.pth"), "--method", "dynamicvit",
                                   "--base", "deit_tiny_patch16_224", "--keep-rate", "0.7", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    model = vitprune.load(tmp_path / "o")
    assert model.vitprune_method.options.keep_rate == 0.7
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    sd["score_predictor.0.in_conv.2.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    res = CliRunner().invoke(app, ["import-checkpoint", str(tmp_path / "bad.pth"), "--method", "dynamicvit",
                                   "--base", "deit_tiny_patch16_224", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "score_predictor.0.in_conv.2.weight" in res.output


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("opts, message", [
    ({"keep_rate": 0.0}, r"`keep_rate` must be in \(0, 1\]"),
    ({"keep_rate": 1.5}, r"`keep_rate` must be in \(0, 1\]"),
    ({"ratio_weight": -1.0}, "`ratio_weight` must be a number >= 0"),
    ({"distill_weight": float("nan")}, "`distill_weight` must be a number >= 0"),
    ({"pruning_loc": [3, 3]}, "`pruning_loc` must not repeat"),
    ({"topk_tail": 1.5}, r"`topk_tail` must be a fraction of the run in \[0, 1\]"),
    ({"pruning_loc": []}, "`pruning_loc` must be a non-empty list"),
    ({"pruning_loc": [3, 12]}, r"outside the model's blocks 0..11"),
    ({"r": 8}, "`r` is not an option of dynamicvit"),
])
def test_bad_options(opts, message):
    with pytest.raises(MethodOptionError, match=message):
        vitprune.apply_method(make_vit(), "dynamicvit", **opts)


def test_unsupported_models():
    with pytest.raises(UnsupportedModelError, match="pools with 'max'"):
        vitprune.apply_method(make_vit(global_pool="max"), "dynamicvit")
    with pytest.raises(UnsupportedModelError, match="not a Vision Transformer"):
        vitprune.apply_method(torch.nn.Linear(2, 2), "dynamicvit")


def test_cli_reports_a_bad_option_in_one_line():
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    res = CliRunner().invoke(app, ["profile", "demo", "--no-weights", "--method", "dynamicvit", "--keep-rate", "1.5",
                                   "--no-speed"])
    assert res.exit_code == 1 and "keep-rate must be in (0, 1]" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["profile", "demo", "--no-weights", "--method", "dynamicvit",
                                   "--opt", "pruning_loc=1,9", "--no-speed"])
    assert res.exit_code == 1 and "--pruning-loc 9 is outside the model's blocks 0..5" in res.output
