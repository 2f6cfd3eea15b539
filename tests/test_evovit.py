"""Evo-ViT against the paper and the released DeiT code, on real timm ViTs and real images."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import vitprune
from vitprune.errors import MethodOptionError, UnsupportedModelError
from vitprune.measure import count_macs, count_params
from vitprune.methods import TeacherOutput, TokenState, dense_copy, tracking
from vitprune.methods.evovit import EvoViT
from vitprune.ops import carry

from .conftest import make_vit

DEIT_S_SCHEDULE = [197] * 4 + [99] * 8


def patched(model, **opts):
    return vitprune.apply_method(copy.deepcopy(model), "evovit", **opts)


def embed(model, images):
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))


def official_layout(timm_state: dict, dim: int) -> dict:
    """A state dict in the official Evo-ViT DeiT layout, written from a timm avg-pool state dict."""
    out = {}
    for key, v in timm_state.items():
        parts = key.split(".")
        if parts[0] == "blocks" and parts[2] == "norm1":
            out[f"norms.{parts[1]}.{parts[3]}"] = v.clone()
        elif parts[0] == "blocks" and parts[2:4] == ["attn", "qkv"]:
            out[f"qks.{parts[1]}.qk.{parts[4]}"] = v[:2 * dim].clone()
            out[f"vs.{parts[1]}.v.{parts[4]}"] = v[2 * dim:].clone()
        elif parts[0] == "blocks" and parts[2:4] == ["attn", "proj"]:
            out[f"projs.{parts[1]}.{parts[4]}"] = v.clone()
        elif parts[0] == "fc_norm":
            out[f"norm.{parts[1]}"] = v.clone()
        else:
            out[key] = v.clone()
    return out


def selected_patches(assignment):
    """Patches of an ``assignment`` (B x P, position or -1) in the order of their positions."""
    k = int((assignment[0] >= 0).sum())
    sel = torch.empty(assignment.shape[0], k, dtype=torch.long)
    for b in range(assignment.shape[0]):
        for p, pos in enumerate(assignment[b].tolist()):
            if 0 <= pos < k:
                sel[b, pos] = p
    return sel


# ------------------------------------------------------------------------------------------ identity


def test_avg_head_keep_one_is_bit_identical_to_timm_avg_pool_model(tiny_vit, digits):
    m = patched(tiny_vit, keep_rate=1.0, head="avg")
    dense = make_vit(global_pool="avg")  # timm's own avg-pool + fc_norm layout
    state = {k: v for k, v in m.state_dict().items() if not k.startswith(("head_cls", "norm_cls"))}
    dense.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(m(digits), dense(digits))
    # the avg head starts from the model's own final norm and head
    assert torch.equal(m.fc_norm.weight, tiny_vit.norm.weight) and torch.equal(m.head_cls.weight, tiny_vit.head.weight)


@pytest.mark.slow
def test_keep_one_compute_path_equals_dense_avg_model_with_converted_weights(deit_small, photos):
    """Oracle 4: k = 196 through ranking, gathers and write-backs == dense timm avg-pool ViT (fp32, atol 1e-5)."""
    dense = timm.create_model("deit_small_patch16_224", pretrained=False, global_pool="avg").eval()
    weights = {k: v for k, v in deit_small.state_dict().items() if not k.startswith("norm.")}
    dense.load_state_dict(weights | {"fc_norm.weight": deit_small.norm.weight, "fc_norm.bias": deit_small.norm.bias})
    official = official_layout(dense.state_dict(), 384)
    official["head_cls.weight"], official["head_cls.bias"] = torch.randn(1000, 384), torch.randn(1000)
    official["norm_cls.weight"], official["norm_cls.bias"] = torch.randn(384), torch.randn(384)
    m = patched(deit_small, keep_rate=1.0, head="avg")
    m.load_state_dict(m.vitprune_method.convert_official_state_dict(official, m), strict=True)
    with torch.no_grad():
        state = TokenState(num_prefix=1, grid=(14, 14), training=False, track=True)
        state.start_tracking(3, photos.device)
        x = m.vitprune_method.evolve(m, embed(m, photos), state, k=196)
        forced = m.forward_head(m.norm(x))
        ref = dense(photos)
    assert [b for b, _ in state.stages] == [4, 8, 11]  # the selections really ran
    torch.testing.assert_close(forced, ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ token counts


def test_deit_s_schedule_counts_and_output_shapes(deit_small, photos):
    m = patched(deit_small)
    assert m.vitprune_method.token_schedule(m) == DEIT_S_SCHEDULE
    with tracking(m), torch.no_grad():
        tokens = m.forward_features(photos)
        y = m.forward_head(tokens)
    assert y.shape == (3, 1000) and tokens.shape == (3, 197, 384)  # the final sequence has every token
    assert m.vitprune_state.counts == DEIT_S_SCHEDULE
    assert m.vitprune_method.token_schedule(m, img_size=(384, 384)) == [577] * 4 + [289] * 8


@pytest.mark.parametrize("rho, tokens", [(0.3, 59), (0.4, 79), (0.6, 118), (0.7, 138), (0.8, 157), (1.0, 197)])
def test_deit_s_other_keep_rates(deit_small, rho, tokens):
    m = patched(deit_small, keep_rate=rho)
    assert m.vitprune_method.token_schedule(m) == [197] * 4 + [tokens] * 8


def test_demo_teacher_shape_counts(digits):
    m = patched(make_vit(depth=6, embed_dim=96))  # 32 px, patch 4: 64 patches; selections at 2, 4 of 6
    assert m.vitprune_method.locations(6) == [2, 4]
    with tracking(m), torch.no_grad():
        assert m(digits).shape == (8, 10)
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m) == [65, 65, 33, 33, 33, 33]


def test_counts_follow_the_actual_image_size(digits):
    m = patched(make_vit(dynamic_img_size=True))
    x = F.interpolate(digits, size=(48, 48), mode="bilinear", align_corners=False)  # 12 x 12 = 144 patches
    with tracking(m), torch.no_grad():
        assert m(x).shape == (8, 10)
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m, img_size=(48, 48)) == [145] * 4 + [73] * 8


def test_layer_wise_mode_keeps_the_counts_and_selects_before_every_block(digits):
    """Oracle 6, and the warm-up: layer-wise early in training, stage-wise later and at inference."""
    m = patched(make_vit(), layer_wise=True)
    with tracking(m), torch.no_grad():
        m(digits)
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m) == [65] * 4 + [33] * 8
    assert [b for b, _ in m.vitprune_state.stages] == list(range(4, 12)) + [11]

    m = patched(make_vit(), layer_wise_fraction=0.3)
    ev = m.vitprune_method
    ev.on_train_progress(m, 2.9, 10)
    assert ev.layer_wise_now(True) and not ev.layer_wise_now(False)  # inference stays stage-wise
    m.train()
    with tracking(m):
        m(digits)
    assert len(m.vitprune_state.stages) == 9 and m.vitprune_state.counts == [65] * 4 + [33] * 8
    ev.on_train_progress(m, 3.0, 10)
    with tracking(m):
        m(digits)
    assert [b for b, _ in m.vitprune_state.stages] == [4, 8, 11]
    ev.on_train_progress(m, 0.0, 10)
    assert ev.train_layer_wise is True
    assert patched(make_vit(), layer_wise_fraction=0.0).vitprune_method.layer_wise_now(True) is False


# ------------------------------------------------------------------------------------------ selection


def _block3_capture(model):
    """Hooks recording block 3's input and output (its output = input of norm2 + the MLP branch)."""
    seen = {}
    blk = model.blocks[3]
    hs = [blk.norm1.register_forward_pre_hook(lambda mod, a: seen.__setitem__("in", a[0].clone())),
          blk.norm2.register_forward_pre_hook(lambda mod, a: seen.__setitem__("mid", a[0].clone())),
          blk.drop_path2.register_forward_hook(lambda mod, a, out: seen.__setitem__("mlp", out.clone()))]
    return seen, hs


def test_selection_is_argsort_of_head_summed_block3_class_attention(deit_small, photos):
    """Oracle 2, with block 3's attention computed in full (all rows, plain softmax) from its real input."""
    m = patched(deit_small)
    seen, hooks = _block3_capture(m)
    with tracking(m), torch.no_grad():
        m(photos)
    for h in hooks:
        h.remove()
    attn = m.blocks[3].attn
    with torch.no_grad():
        qkv = attn.qkv(m.blocks[3].norm1(seen["in"])).reshape(3, 197, 3, 6, 64).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        full = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # B x H x N x N
        g = full[:, :, 0, 1:].sum(dim=1)  # summed over heads, not averaged
    want = torch.argsort(g, dim=1, descending=True)[:, :98]
    block, assignment = m.vitprune_state.stages[0]
    assert block == 4
    assert torch.equal(selected_patches(assignment), want)


def test_unselected_placeholder_is_carried_bit_identically(deit_small, photos):
    """Oracle 3: a patch not selected at block 4 nor at block 8 leaves block 11 equal to its block-3 output."""
    m = patched(deit_small, head="avg")  # norm is Identity: forward_features returns block 11's raw output
    seen, hooks = _block3_capture(m)
    with tracking(m), torch.no_grad():
        out = m.forward_features(photos)
    for h in hooks:
        h.remove()
    x3 = seen["mid"] + seen["mlp"]
    (_, a4), (_, a8), (_, final) = m.vitprune_state.stages
    assert torch.equal(final, torch.arange(196).expand(3, -1))  # every patch back, in its own place
    never = (a4 < 0) & (a8 < 0)
    assert never.sum(1).min() > 0
    assert torch.equal(out[:, 1:][never], x3[:, 1:][never])
    touched = ~never
    assert not torch.equal(out[:, 1:][touched], x3[:, 1:][touched])


def test_global_attention_evolves_only_for_processed_patches(digits):
    """g starts as block 1's head-summed class row (demo teacher: selections at 2 and 4 of 6); entries of patches
    processed in a stage evolve (0.5 / 0.5), placeholders keep their stale score; stage 2 re-ranks all patches."""
    base = vitprune.load_model("demo")  # a trained ViT
    m = patched(base)
    seen = {}
    h = m.blocks[1].norm1.register_forward_pre_hook(lambda mod, a: seen.__setitem__("in", a[0].clone()))
    with tracking(m), torch.no_grad():
        m(digits)
    h.remove()
    attn = m.blocks[1].attn
    with torch.no_grad():
        qkv = attn.qkv(m.blocks[1].norm1(seen["in"])).reshape(8, 65, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        g0 = ((qkv[0] * attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)[:, :, 0, 1:].sum(dim=1)
    (b1, a1), (b2, a2), _ = m.vitprune_state.stages
    assert (b1, b2) == (2, 4)
    g = m.vitprune_state.aux["global_attention"]
    never = (a1 < 0) & (a2 < 0)
    torch.testing.assert_close(g[never], g0[never], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(g[~never], g0[~never], atol=1e-4)
    assert not torch.equal(a1 >= 0, a2 >= 0)  # the informative set changed at the second selection


# ------------------------------------------------------------------------------------------ train == eval


def test_train_path_equals_eval_path_without_drop_path(digits):
    m = patched(make_vit(), head="avg")
    with torch.no_grad():
        ev = m.eval()(digits)
        tr = m.train()(digits)
    torch.testing.assert_close(tr, ev, atol=1e-6, rtol=0)
    assert m.vitprune_state.aux["cls_logits"].shape == (8, 10)  # the training-only class-token branch ran


def test_training_forward_backward_reaches_every_part_and_aux_loss(digits):
    m = patched(make_vit(drop_path_rate=0.1), head="avg").train()
    with tracking(m):
        y = m(digits)
    state = m.vitprune_state
    assert y.shape == (8, 10) and state.counts == [65] * 4 + [33] * 8  # static counts in training too
    labels = torch.arange(8) % 10
    teacher = TeacherOutput(logits=torch.randn(8, 10))
    losses = m.vitprune_method.aux_losses(m, state, teacher)
    assert set(losses) == {"aux_cls"} and torch.isfinite(losses["aux_cls"]) and losses["aux_cls"] > 0
    (F.cross_entropy(y, labels) * 0.5 + losses["aux_cls"]).backward()
    for name in ("head_cls.weight", "norm_cls.weight", "fc_norm.weight", "head.weight", "blocks.0.attn.qkv.weight",
                 "blocks.11.mlp.fc1.weight", "cls_token"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_aux_cls_loss_values(digits):
    m = patched(make_vit(), head="avg", aux_cls_weight=0.5).train()
    m(digits)
    state, ev = m.vitprune_state, m.vitprune_method
    cls_logits = state.aux["cls_logits"].detach()
    # without labels: KL to the dense teacher, zero at the target
    assert ev.aux_losses(m, state, TeacherOutput(logits=cls_logits.clone()))["aux_cls"].abs() < 1e-6
    # with labels (the trainer passes them): 0.5 x smoothed CE of the class-token head
    labels = torch.arange(8) % 10
    want = 0.5 * F.cross_entropy(cls_logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(ev.aux_losses(m, state, None, targets=labels)["aux_cls"], want)
    # head=model has no class-token branch; neither has aux_cls_weight=0
    for opts in ({}, {"head": "avg", "aux_cls_weight": 0.0}):
        mm = patched(make_vit(), **opts).train()
        mm(digits)
        assert mm.vitprune_method.aux_losses(mm, mm.vitprune_state, TeacherOutput(logits=cls_logits)) == {}
        assert not hasattr(mm, "head_cls")


def test_recipe_weights_follow_the_head():
    assert vitprune.apply_method(make_vit(), "evovit", head="avg").vitprune_method.default_recipe()["cls_weight"] == 0.5
    rec = vitprune.apply_method(make_vit(), "evovit").vitprune_method.default_recipe()
    assert rec["cls_weight"] == 1.0 and rec["epochs"] > 0 and rec["lr"] > 0


# ------------------------------------------------------------------------------------------ representative token


def test_representative_token_is_normalised_weighted_sum_of_placeholders():
    torch.manual_seed(0)
    patches, scores = torch.randn(2, 6, 4), torch.rand(2, 6)
    idx = torch.tensor([[0, 3], [5, 1]])
    r = carry.rest_weighted_token(patches, scores, idx)
    for b in range(2):
        rest = [j for j in range(6) if j not in idx[b].tolist()]
        w = scores[b, rest] / scores[b, rest].sum()
        torch.testing.assert_close(r[b, 0], (w[:, None] * patches[b, rest]).sum(0))


def test_representative_fast_update_moves_placeholders_by_one_shared_increment(deit_small, photos):
    m = patched(deit_small, head="avg", representative=True)
    seen, hooks = _block3_capture(m)
    with tracking(m), torch.no_grad():
        out = m.forward_features(photos)
    for h in hooks:
        h.remove()
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m) == [197] * 4 + [100] * 8
    (_, a4), (_, a8), _ = m.vitprune_state.stages
    assert (a4 == 98).sum(1).tolist() == [98] * 3  # placeholders are represented by the appended token
    x3 = seen["mid"] + seen["mlp"]
    never = (a4 == 98) & (a8 == 98)
    for b in range(3):
        delta = out[b, 1:][never[b]] - x3[b, 1:][never[b]]
        assert delta.abs().max() > 0
        torch.testing.assert_close(delta, delta[:1].expand_as(delta), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ prefix tokens


@pytest.mark.parametrize("kwargs, npre", [
    (dict(arch="deit_small_distilled_patch16_224"), 2),
    (dict(arch="vit_small_patch16_224", reg_tokens=2), 3),
])
def test_prefix_tokens_are_kept_first_and_never_scored(kwargs, npre, digits):
    base = make_vit(**kwargs)
    m = patched(base)
    with tracking(m), torch.no_grad():
        y = m(digits)
        tokens = m.forward_features(digits)
    assert y.shape == (8, 10) and tokens.shape == (8, npre + 64, 48)
    want = [npre + 64] * 4 + [npre + 32] * 8
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m) == want
    for _, assignment in m.vitprune_state.stages:
        assert assignment.shape == (8, 64)  # patches only: prefix tokens are not part of the selection
    with torch.no_grad():  # prefix tokens were processed by every block: compare with keep 1.0 on the prefix
        dense_tokens = base.forward_features(digits)
    assert not torch.equal(tokens[:, :npre], dense_tokens[:, :npre])
    assert torch.equal(patched(base, keep_rate=1.0).forward_features(digits), dense_tokens)


# ------------------------------------------------------------------------------------------ MACs and params (7, 8)


@pytest.mark.slow
def test_macs_deit_s_match_the_analytic_count(deit_small):
    assert count_macs(patched(deit_small, head="avg")).gmacs == pytest.approx(3.0395, rel=0.01)
    assert count_macs(patched(deit_small)).gmacs == pytest.approx(3.0395, rel=0.01)  # class-token head


@pytest.mark.slow
@pytest.mark.parametrize("arch, gmacs", [("deit_tiny_patch16_224", 0.8208), ("deit_base_patch16_224", 11.6705)])
def test_macs_deit_tiny_and_base_match_the_analytic_count(arch, gmacs):
    with torch.device("meta"):  # values do not matter for a MAC count: skip the random initialisation
        base = timm.create_model(arch, pretrained=False)
    m = vitprune.apply_method(base.to_empty(device="cpu").eval(), "evovit", head="avg")
    c = count_macs(m)
    assert c.gmacs == pytest.approx(gmacs, rel=0.01) and not c.uncounted


def test_parameter_counts_with_and_without_the_aux_head(deit_small):
    m = patched(deit_small, head="avg")
    assert count_params(m) == 22_436_432
    m.vitprune_method.remove_cls(m)
    assert count_params(m) == 22_050_664 == count_params(deit_small)
    assert m.vitprune_method.options.aux_cls_weight == 0.0


def test_official_conversion_round_trip_is_exact(deit_small):
    m = patched(deit_small, head="avg")
    official = EvoViT.official_state_dict(m)
    assert torch.equal(m.state_dict()["blocks.5.attn.qkv.weight"],
                       torch.cat([official["qks.5.qk.weight"], official["vs.5.v.weight"]]))
    assert official.keys() == official_layout(m.state_dict(), 384).keys()
    back = m.vitprune_method.convert_official_state_dict(official, m)
    own = m.state_dict()
    assert back.keys() == own.keys() and all(torch.equal(back[k], own[k]) for k in own)
    # a deployment model (no aux head) drops head_cls/norm_cls
    d = patched(deit_small, head="avg", aux_cls_weight=0.0)
    assert d.vitprune_method.convert_official_state_dict(official, d).keys() == d.state_dict().keys()


def test_official_conversion_refuses_unknown_keys_and_the_token_head(deit_small):
    m = patched(deit_small, head="avg")
    official = EvoViT.official_state_dict(m)
    with pytest.raises(MethodOptionError, match="score_predictor.0.weight"):
        m.vitprune_method.convert_official_state_dict({**official, "score_predictor.0.weight": torch.zeros(1)}, m)
    with pytest.raises(MethodOptionError, match="qks.12.qk.weight"):
        m.vitprune_method.convert_official_state_dict({**official, "qks.12.qk.weight": torch.zeros(1)}, m)
    partial = {k: v for k, v in official.items() if k != "vs.3.v.bias"}
    with pytest.raises(MethodOptionError, match="vs.3.v.bias"):
        m.vitprune_method.convert_official_state_dict(partial, m)
    with pytest.raises(MethodOptionError, match="`head` avg"):
        patched(deit_small).vitprune_method.convert_official_state_dict(official, deit_small)


# ------------------------------------------------------------------------------------------ save / load, options


def test_save_load_round_trip(tmp_path, digits):
    m = patched(make_vit(), keep_rate=0.6, head="avg", representative=True, select_loc=[3, 7])
    with torch.no_grad():
        for p in m.parameters():  # make every weight (aux head included) differ from a fresh model
            p.add_(torch.randn_like(p) * 0.01)
    vitprune.save(m, tmp_path / "evo")
    back = vitprune.load(tmp_path / "evo")
    assert back.vitprune_method.options == m.vitprune_method.options
    assert back.state_dict().keys() == m.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(back(digits), m(digits))


def test_dense_copy_of_an_avg_head_model_is_the_dense_avg_pool_vit(digits):
    m = patched(make_vit(), head="avg", keep_rate=1.0)
    d = dense_copy(m)
    assert not hasattr(d, "head_cls") and d.global_pool == "avg"
    with torch.no_grad():
        assert torch.equal(d(digits), m(digits))


def test_runtime_keep_rate_override(deit_small):
    m = patched(deit_small)
    with m.vitprune_method.overrides(keep_rate=0.7):
        assert m.vitprune_method.token_schedule(m) == [197] * 4 + [138] * 8
    assert m.vitprune_method.token_schedule(m) == DEIT_S_SCHEDULE


def test_bad_options_and_models():
    with pytest.raises(MethodOptionError, match=r"`keep_rate` must be in \(0, 1\]"):
        vitprune.apply_method(make_vit(), "evovit", keep_rate=1.5)
    with pytest.raises(MethodOptionError, match="`keep_rate`"):
        vitprune.apply_method(make_vit(), "evovit", keep_rate=0.0)
    with pytest.raises(MethodOptionError, match="`select_loc`"):
        vitprune.apply_method(make_vit(), "evovit", select_loc=[0, 4])
    with pytest.raises(MethodOptionError, match="outside the model's blocks"):
        vitprune.apply_method(make_vit(depth=6), "evovit", select_loc=[4, 8])
    with pytest.raises(MethodOptionError, match="`head` must be one of model, avg"):
        vitprune.apply_method(make_vit(), "evovit", head="max")
    with pytest.raises(MethodOptionError, match="`layer_wise_fraction`"):
        vitprune.apply_method(make_vit(), "evovit", layer_wise_fraction=2)
    with pytest.raises(MethodOptionError, match="not an option of evovit"):
        vitprune.apply_method(make_vit(), "evovit", r=8)
    with pytest.raises(MethodOptionError, match="cannot be changed at run time"):
        vitprune.apply_method(make_vit(), "evovit").vitprune_method.set_runtime(head="avg")
    with pytest.raises(UnsupportedModelError, match="'max'"):  # no class token: avg or map pooling only
        vitprune.apply_method(make_vit(class_token=False, global_pool="max"), "evovit")
    with pytest.raises(UnsupportedModelError, match="distilled"):
        vitprune.apply_method(make_vit(arch="deit_small_distilled_patch16_224"), "evovit", head="avg")


@pytest.mark.slow
def test_cli_bad_option_and_official_checkpoint_import(tmp_path):
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    res = CliRunner().invoke(app, ["profile", "demo", "--no-weights", "--method", "evovit", "--keep-rate", "1.5",
                                   "--no-speed"])
    assert res.exit_code == 1 and "keep-rate must be in (0, 1]" in res.output
    # an official-layout checkpoint through `vitprune import-checkpoint`
    src = vitprune.apply_method(timm.create_model("deit_tiny_patch16_224", pretrained=False), "evovit", head="avg")
    torch.save({"model": official_layout(src.state_dict(), 192), "epoch": 299}, tmp_path / "evo.pth")
    args = ["import-checkpoint", str(tmp_path / "evo.pth"), "--method", "evovit", "--base", "deit_tiny_patch16_224"]
    res = CliRunner().invoke(app, args + ["-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "import them with --head avg" in res.output  # the official head averages patches
    res = CliRunner().invoke(app, args + ["--head", "avg", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    model = vitprune.load(tmp_path / "o")
    assert model.vitprune_method.options.head == "avg"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())
