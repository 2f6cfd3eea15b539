"""EViT: its token counts, fused token, reduction steps and MACs against the paper and the reference code."""
from __future__ import annotations

import copy

import pytest
import torch

import vitprune
from vitprune import ops
from vitprune.errors import MethodOptionError, UnsupportedModelError
from vitprune.measure import count_macs
from vitprune.methods import tracking

from .conftest import digits_batch, make_vit


def patched(model, **opts):
    return vitprune.apply_method(copy.deepcopy(model), "evit", **opts)


def test_token_schedule_deit_s_is_the_ceil_rule(deit_small):
    m = patched(deit_small, keep_rate=0.7)
    assert m.vitprune_method.token_schedule(m) == [197] * 4 + [140] * 3 + [100] * 3 + [72] * 2
    m = patched(deit_small, keep_rate=0.7, fuse=False)
    assert m.vitprune_method.token_schedule(m) == [197] * 4 + [139] * 3 + [98] * 3 + [69] * 2
    m = patched(deit_small, keep_rate=0.5)
    assert m.vitprune_method.token_schedule(m)[4::3] == [100, 52, 28]


def test_measured_counts_equal_schedule_on_demo_sized_model(digits):
    base = make_vit(depth=6, embed_dim=96)  # the demo teacher's shape: 64 patches, blocks 1, 3, 4 reduce
    m = patched(base, keep_rate=0.7)
    with tracking(m), torch.no_grad():
        m(digits)
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m)
    assert m.vitprune_method.token_schedule(m) == [65, 65, 47, 47, 35, 26]


def test_keep_counts_are_the_plain_ceil_of_the_reference_at_288px():
    """The EViT reference keeps ``math.ceil(keep_rate * (N - 1))`` patches (``N - 1`` = the patch tokens, fused
    token included) with no tolerance. At 288 px (18 x 18 = 324 patches), keep 0.55, fused: ceil(0.55*324) = 179,
    +cls +fused = 181; 0.55*180 = 99.00000000000001 in float -> 100, +2 = 102; 0.55*101 = 55.55 -> 56, +2 = 58."""
    base = make_vit(img_size=288, patch_size=16, embed_dim=24)
    m = patched(base, keep_rate=0.55)
    schedule = m.vitprune_method.token_schedule(m)  # drop locations 3, 6, 9: stages start at blocks 0, 4, 7, 10
    assert [schedule[i] for i in (0, 4, 7, 10)] == [325, 181, 102, 58]
    with tracking(m), torch.no_grad():
        m(torch.randn(1, 3, 288, 288))
    assert m.vitprune_state.counts == m.vitprune_method.token_schedule(m)


def test_gather_equivalence_without_fusion(digits):
    """Oracle 6: dense block-3 tensor after attention, gather [cls, top-k], rest of the model == EViT output."""
    base = make_vit(depth=4)
    m = patched(base, keep_rate=0.5, fuse=False, drop_loc=[2])
    with torch.no_grad():
        x = base.norm_pre(base.patch_drop(base._pos_embed(base.patch_embed(digits))))
        for blk in base.blocks[:2]:
            x = blk(x)
        blk = base.blocks[2]
        out, rows, _ = ops.attention(blk.attn, blk.norm1(x), cls_rows=1)
        x = ops.attn_residual(blk, x, out)
        idx = ops.topk_patches(ops.patch_scores_from_cls(rows, 1), 32)
        x = ops.mlp_residual(blk, ops.keep_tokens(x, idx, 1))
        x = base.blocks[3](x)
        ref = base.forward_head(base.norm(x))
        torch.testing.assert_close(m(digits), ref, atol=1e-5, rtol=1e-5)


def test_fused_token_is_attention_weighted_sum():
    x = torch.randn(2, 1 + 5, 4)
    scores = torch.tensor([[0.3, 0.1, 0.25, 0.05, 0.2], [0.01, 0.4, 0.09, 0.2, 0.2]])
    order = ops.rank_patches(scores)
    rest = order[:, 3:]
    fused = ops.fuse_tokens(x[:, 1:], scores, rest)
    for b in range(2):
        want = sum(scores[b, j] * x[b, 1 + j] for j in rest[b].tolist())
        torch.testing.assert_close(fused[b, 0], want)
    # kept and fused sets partition the patches
    assert sorted(order[0].tolist()) == list(range(5))


def test_distilled_model_runs_and_keeps_both_prefix_tokens(digits):
    base = make_vit(arch="deit_small_distilled_patch16_224")
    m = patched(base, keep_rate=0.7)
    assert m.vitprune_method.token_schedule(m)[0] == 66
    m.eval()
    with torch.no_grad():
        assert m(digits).shape == (8, 10)


def test_keep_rate_schedule_is_the_cosine_shrink():
    m = patched(make_vit(), keep_rate=0.7, shrink_start=10, shrink_epochs=100)
    ev = m.vitprune_method
    assert ev.scheduled_keep_rate(5) == 1.0
    assert ev.scheduled_keep_rate(60) == pytest.approx(0.85)
    assert ev.scheduled_keep_rate(110) == pytest.approx(0.7)
    m = patched(make_vit(), keep_rate=0.7)
    assert m.vitprune_method.scheduled_keep_rate(0) == 0.7


def test_training_forward_backward_reaches_parameters(digits):
    m = patched(make_vit(), keep_rate=0.7).train()
    m(digits).sum().backward()
    assert m.blocks[11].mlp.fc1.weight.grad is not None


@pytest.mark.slow
def test_macs_deit_s_within_one_percent(deit_small):
    assert count_macs(patched(deit_small, keep_rate=0.7)).gmacs == pytest.approx(3.0355, rel=0.01)
    assert count_macs(patched(deit_small, keep_rate=0.7, fuse=False)).gmacs == pytest.approx(3.0032, rel=0.01)


def test_bad_options():
    with pytest.raises(MethodOptionError, match="`keep_rate`"):
        vitprune.apply_method(make_vit(), "evit", keep_rate=0.0)
    with pytest.raises(MethodOptionError, match="not an option of evit"):
        vitprune.apply_method(make_vit(), "evit", r=8)
    with pytest.raises(UnsupportedModelError, match="'max'"):  # no class token: avg or map pooling only
        vitprune.apply_method(make_vit(class_token=False, global_pool="max"), "evit")
    with pytest.raises(MethodOptionError, match="`drop_loc` must not repeat a block"):
        vitprune.apply_method(make_vit(), "evit", drop_loc=[3, 3])
    assert vitprune.apply_method(make_vit(), "evit", drop_loc=[9, 3]).vitprune_method.options.drop_loc == [3, 9]


def test_cli_bad_drop_loc_is_one_line():
    """A block list that is not integers is a user error (one line, exit 1), not a TypeError traceback."""
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    res = CliRunner().invoke(app, ["profile", "demo", "--no-weights", "--method", "evit", "--opt", "drop_loc=x",
                                   "--no-speed"])
    assert res.exit_code == 1 and "--drop-loc must be a comma list of integers or none, got 'x'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_digits_batch_is_real_data():
    x = digits_batch(4)
    assert x.shape == (4, 3, 32, 32) and x.std() > 0.5


@pytest.mark.slow
def test_official_checkpoint_imports_and_unknown_keys_are_refused(tmp_path):
    """EViT releases are plain timm DeiT state dicts under 'model'; method settings come from options."""
    import argparse

    from typer.testing import CliRunner

    from vitprune.cli.main import app

    import timm

    src = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    ckpt = {"model": src.state_dict(), "epoch": 29, "args": argparse.Namespace(base_keep_rate=0.7)}
    torch.save(ckpt, tmp_path / "evit.pth")
    res = CliRunner().invoke(app, ["import-checkpoint", str(tmp_path / "evit.pth"), "--method", "evit",
                                   "--base", "deit_tiny_patch16_224", "--keep-rate", "0.7", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    model = vitprune.load(tmp_path / "o")
    assert model.vitprune_method.options.keep_rate == 0.7
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    ckpt["model"]["score_predictor.0.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pth")
    res = CliRunner().invoke(app, ["import-checkpoint", str(tmp_path / "bad.pth"), "--method", "evit",
                                   "--base", "deit_tiny_patch16_224", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "score_predictor.0.weight" in res.output


def test_patched_model_copies_after_a_training_step(digits):
    """The last pass's state (part of an autograd graph) is not copied with the model."""
    m = vitprune.apply_method(make_vit(), "dynamicvit", keep_rate=0.7).train()
    m(digits).sum().backward()
    assert hasattr(m, "vitprune_state")
    twin = copy.deepcopy(m)
    assert not hasattr(twin, "vitprune_state")
    dense = vitprune.methods.dense_copy(m)
    with torch.no_grad():
        assert dense.eval()(digits).shape == (8, 10)
