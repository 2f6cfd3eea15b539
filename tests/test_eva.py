"""timm Eva models (EVA, EVA02, rotary ViTs): every method drives them, the rotary rows travel with the tokens, the
no-op settings are the dense model, FLOPs are counted, and load/compress/profile/visualize/export take them."""
from __future__ import annotations

import copy
import json
import math

import pytest
import timm
import torch
from torch import nn
from typer.testing import CliRunner

import vitprune
from vitprune import ops
from vitprune.cli.main import app
from vitprune.errors import UnsupportedModelError
from vitprune.methods import registry
from vitprune.ops import rope as rope_ops

runner = CliRunner()

#: timm Eva variants at tiny sizes: EVA02 (fused qkv with q/v bias, SwiGLU, rope), every block option Eva takes
#: (unfused q/k/v, qk-norm, scale-norm inside attention, SwiGLU with its norm, LayerScale gammas), a plain EVA without
#: rope (absolute positions only), and a rotary ViT (timm's AttentionRope, LayerScale, no absolute positions)
VARIANTS = {
    "eva02": ("eva02_tiny_patch14_224", {}),
    "every-option": ("eva02_tiny_patch14_224", dict(qkv_fused=False, qk_norm=True, scale_attn_inner=True,
                                                    scale_mlp=True, init_values=0.1)),
    "no-rope": ("eva02_tiny_patch14_224", dict(use_rot_pos_emb=False)),
    "rope-vit": ("vit_small_patch16_rope_224", dict(init_values=0.5)),  # its 1e-5 LayerScale would hide the blocks
}
#: per registered method: (its declared setting that removes tokens, its declared no-op setting)
SETTINGS = {cls.name: (dict(cls.sparse_options), dict(cls.noop_options)) for cls in registry.method_classes()}


def make_eva(variant: str = "eva02", depth: int = 3, seed: int = 0, **kwargs) -> nn.Module:
    arch, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    args = dict(pretrained=False, depth=depth, embed_dim=48, num_heads=3, num_classes=10, img_size=32,
                patch_size=4, head_init_scale=1.0, **extra)
    if "global_pool" not in kwargs and variant != "rope-vit":
        args["global_pool"] = "token"  # hand-built pipelines below read the class token (EVA02's 'avg': the matrix)
    model = timm.create_model(arch, **{**args, **kwargs})
    return model.eval()


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def apply(model: nn.Module, method: str, **opts) -> nn.Module:
    return vitprune.apply_method(copy.deepcopy(model), method, **opts).eval()


def noop(model: nn.Module, method: str) -> nn.Module:
    patched = apply(model, method, **SETTINGS[method][1])
    return patched


# ------------------------------------------------------------------------------------------ identity at no-op


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_method_is_the_dense_eva_model_at_its_noop_setting_and_prunes_to_finite_logits(variant):
    base = make_eva(variant)
    x = images()
    with torch.no_grad():
        dense = base(x)
        for method, (sparse, _) in SETTINGS.items():
            assert torch.equal(noop(base, method)(x), dense), method
            out = apply(base, method, **sparse)(x)
            assert out.shape == dense.shape and torch.isfinite(out).all(), method
            assert not torch.equal(out, dense), method  # tokens were removed or pooled: not the dense computation


def test_training_forwards_run_and_backpropagate_on_eva():
    base = make_eva("every-option")
    x = images()
    for method, (sparse, _) in SETTINGS.items():
        model = apply(base, method, **sparse).train()
        model(x).sum().backward()
        assert base.blocks[0].attn.q_proj.weight.grad is None  # the copy trains, not the base
        assert model.blocks[0].attn.q_proj.weight.grad is not None, method


# ------------------------------------------------------------------------------------------ rope travels with tokens


def test_ops_attention_on_a_token_subset_is_timm_eva_attention_with_the_gathered_rope_rows():
    """vitprune's attention (fused projection, qk-norm, rope, SDPA, scale-norm) on kept tokens with their own rows
    (``take_rope``) equals timm's ``EvaAttention.forward`` on the same tokens with the rows gathered by timm's
    ``apply_keep_indices_nlc`` (its patch-dropout path)."""
    from timm.layers import apply_keep_indices_nlc

    model = make_eva("every-option")
    blk = model.blocks[1]
    x, rope = vitprune.methods.base.embed(model, images())
    npre = model.num_prefix_tokens
    idx = torch.stack([torch.randperm(x.shape[1] - npre, generator=torch.Generator().manual_seed(b))[:20]
                       for b in range(x.shape[0])])
    kept = ops.keep_tokens(x, idx, npre)
    timm_rope = apply_keep_indices_nlc(x, model.rope.get_embed(), idx).unsqueeze(1)  # B x 1 x 20 x D
    with torch.no_grad():
        want = blk.attn(blk.norm1(kept), rope=timm_rope)
        got, rows, _ = ops.attention(blk.attn, blk.norm1(kept), cls_rows=1, rope=ops.take_rope(rope, idx))
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
        # the class-token row vitprune ranks by is timm's own softmax row (timm's unfused path hands its
        # probabilities to attn_drop: read them there)
        seen = []
        blk.attn.fused_attn = False
        hook = blk.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
        blk.attn(blk.norm1(kept), rope=timm_rope)
        hook.remove()
    assert torch.allclose(rows[:, :, 0], seen[0][:, :, 0], atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(gated_attn=True, qkv_fused=False), dict(swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True),
    dict(attn_type="rope", qk_norm=True, init_values=0.5), dict(init_values=0.5, attn_only_layer_scale=True),
], ids=["plain", "gated-unfused", "swiglu-scale-norms", "attention-rope", "attn-only-layerscale"])
def test_vitprune_block_pieces_are_timm_eva_block_forward(kwargs):
    """timm's EvaBlock options that the Eva model class does not expose (the gated attention) too: vitprune's
    attention + residuals with the tokens' rope equal ``EvaBlock.forward`` with the same rope."""
    from timm.models.eva import EvaBlock

    torch.manual_seed(0)
    blk = EvaBlock(48, 3, num_prefix_tokens=1, **kwargs).eval()
    for p in blk.parameters():  # biases and gammas off their zero / constant init
        if p.dim() == 1:
            nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 1 + 16, 48)
    rope = torch.randn(2, 16, 2 * 16)  # any rows: the rotation is applied as given
    with torch.no_grad():
        want = blk(x, rope=rope.unsqueeze(1))
        out, _, _ = ops.attention(blk.attn, blk.norm1(x), rope=rope)
        got = ops.mlp_residual(blk, ops.attn_residual(blk, x, out))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_dynamicvit_on_eva_is_timm_blocks_on_the_kept_tokens_with_their_own_rope_rows():
    """Hand-built with timm alone: embed, timm's blocks, the predictor's top-k, tokens and rope rows gathered with
    timm's ``apply_keep_indices_nlc``, timm's blocks on the kept tokens, timm's norm and head."""
    from timm.layers import apply_keep_indices_nlc

    base = make_eva("eva02", depth=4)
    model = apply(base, "dynamicvit", keep_rate=0.5, pruning_loc=[2])
    for mod in model.score_predictor.modules():  # spread the scores (the reference init leaves near-ties)
        if isinstance(mod, nn.Linear):
            nn.Linear.reset_parameters(mod)
    x = images()
    npre = base.num_prefix_tokens
    with torch.no_grad():
        t, rope = base._pos_embed(base.patch_embed(x))
        t = base.norm_pre(t)
        for blk in base.blocks[:2]:
            t = blk(t, rope=rope)
        k = model.vitprune_method.keep_counts(t.shape[1] - npre, stages=1)[0]
        idx = model.score_predictor[0](t[:, npre:])[..., 0].topk(k, dim=1).indices
        kept_rope = apply_keep_indices_nlc(t, rope, idx).unsqueeze(1)  # B x 1 x k x D, as timm's patch dropout
        t = torch.cat([t[:, :npre], apply_keep_indices_nlc(t, t[:, npre:], idx, pos_embed_has_batch=True)], dim=1)
        for blk in base.blocks[2:]:
            t = blk(t, rope=kept_rope)
        want = base.forward_head(base.norm(t))
        assert torch.allclose(model(x), want, atol=1e-5, rtol=1e-5)


def test_no_rotation_rows_rotate_nothing_and_the_circular_mean_is_the_middle_rotation():
    model = make_eva("eva02")
    attn = model.blocks[0].attn
    t = torch.randn(2, 3, 5, attn.head_dim)
    rows = rope_ops.no_rotation(torch.zeros(2, 1, 2 * attn.head_dim), 5 - attn.num_prefix_tokens)
    assert torch.equal(rope_ops.rotate(attn, t, rows), t)
    # the mean of the rotations by angles a and b, scaled back to unit length, is the rotation by (a + b) / 2
    # (|a - b| < pi): (sin a + sin b, cos a + cos b) = 2 cos((a - b) / 2) (sin (a + b) / 2, cos (a + b) / 2)
    a, b = torch.rand(8) * 3, torch.rand(8) * 3
    mean = torch.cat([(a.sin() + b.sin()) / 2, (a.cos() + b.cos()) / 2])
    mid = (a + b) / 2
    assert torch.allclose(rope_ops.normalise(mean), torch.cat([mid.sin(), mid.cos()]), atol=1e-6)
    # opposite rotations cancel: no rotation
    assert torch.equal(rope_ops.normalise(torch.tensor([0.0, 0.0])), torch.tensor([0.0, 1.0]))


def test_fused_and_merged_tokens_get_the_documented_rope_rows():
    """EViT's fused token: no rotation; ToMe: every token keeps the row of a patch it stands for (its destination's);
    Evo-ViT / DynamicViT / SaiT kept tokens: their own patch's row (traced through ``state.rope``)."""
    base = make_eva("eva02")
    x = images()
    _, rope = vitprune.methods.base.embed(base, x)
    ident = rope_ops.no_rotation(rope, 1)
    with torch.no_grad():
        evit = apply(base, "evit", keep_rate=0.5, drop_loc=[1])
        with vitprune.methods.tracking(evit):
            evit(x)
        state = evit.vitprune_state
        assert torch.equal(state.rope[:, -1:], ident)  # the fused token
        kept = state.origin[:, :-1]  # the patches the other tokens are
        assert torch.equal(state.rope[:, :-1], ops.take_rope(rope, kept))
        tome = apply(base, "tome", r=6)
        with vitprune.methods.tracking(tome):
            tome(x)
        st = tome.vitprune_state
        last = st.stages[-1][1]  # for every original patch, the token that stands for it now
        for b in range(x.shape[0]):
            for token in range(st.rope.shape[1]):
                patches = (last[b] == token).nonzero().flatten()
                assert any(torch.equal(st.rope[b, token], rope[b, p]) for p in patches)


# ------------------------------------------------------------------------------------------ support checks


def test_grouped_query_attention_is_refused_in_one_line():
    gqa = timm.create_model("vit_small_patch16_rope_224", pretrained=False, depth=2, embed_dim=48, num_heads=4,
                            img_size=32, patch_size=4, num_kv_heads=2, qkv_fused=False)
    with pytest.raises(UnsupportedModelError, match="grouped-query attention"):
        vitprune.apply_method(gqa, "tome")


def test_methods_state_their_rope_choice_and_eva_reports_repeat_it():
    described = {d["name"]: d["notes"] for d in registry.describe_methods()}
    for name in SETTINGS:
        assert any(n.startswith("Rotary position embeddings (timm Eva models): ") for n in described[name]), name
    assert "no rotation" in registry.get_method_class("evit").rotary
    assert "destination" in registry.get_method_class("tome").rotary
    assert "circular mean" in registry.get_method_class("dge").rotary
    eva = apply(make_eva("eva02"), "evit", keep_rate=0.5)
    assert [n for n in eva.vitprune_method.report_notes(eva) if n.startswith("rotary embeddings: ")]
    vit = vitprune.apply_method(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32,
                                                  patch_size=4), "evit")
    assert not [n for n in vit.vitprune_method.report_notes(vit) if n.startswith("rotary")]  # no rope, no note
    no_rope = apply(make_eva("no-rope"), "evit")
    assert not [n for n in no_rope.vitprune_method.report_notes(no_rope) if n.startswith("rotary")]


# ------------------------------------------------------------------------------------------ FLOPs


def test_dense_eva_macs_agree_with_torch_flop_counter_and_sdpa_formula():
    """fvcore + vitprune's handles vs torch's own FlopCounterMode (2 flops per MAC) on the matrix ops both count
    (linear, conv); SDPA by its formula (torch's counter does not see the CPU math kernel); rope, SwiGLU's SiLU and
    product, and the other element-wise ops cost no MACs by fvcore's convention and are not left uncounted."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitprune.measure import count_macs

    model = make_eva("every-option")
    mc = count_macs(model)
    assert mc.uncounted == {}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images(1))
    torch_macs = counter.get_total_flops() / 2
    assert mc.by_operator["linear"] + mc.by_operator["conv"] == torch_macs
    attn = model.blocks[0].attn
    n = 1 + 8 * 8  # class token + an 8 x 8 grid (32 px, patch 4)
    # per block: heads x N x N x (head_dim for QK^T + head_dim for AV)
    assert mc.by_operator["scaled_dot_product_attention"] == len(model.blocks) * attn.num_heads * n * n * 2 * attn.head_dim


def test_analytic_block_cost_is_fvcore_on_an_eva_block():
    """DGE's and SaiT's analytic counts use ``block_cost``: on an Eva block (unfused q/k/v, qk-norm, scale-norm,
    SwiGLU with its norm, LayerScale) it is what fvcore counts for timm's own block."""
    from vitprune.measure import count_macs
    from vitprune.ops.analytic import block_cost

    blk = make_eva("every-option").blocks[0]
    n, c = 65, 48
    assert block_cost(blk).dense(n) == count_macs(blk, images=torch.randn(1, n, c)).macs


@pytest.mark.parametrize("method", list(SETTINGS))
def test_sparse_eva_counts_fewer_macs(method):
    from vitprune.measure import count_macs

    base = make_eva("eva02")
    x = images(1)
    sparse = apply(base, method, **SETTINGS[method][0])
    assert count_macs(sparse, images=x).macs < count_macs(base, images=x).macs


# ------------------------------------------------------------------------------------------ library and CLI


def save_tiny_eva(folder, **kw):
    vitprune.save(make_eva("eva02", **kw), folder, base_model="tests: tiny random EVA02")
    return folder


@pytest.mark.slow
def test_load_model_by_timm_name_and_a_saved_folder_round_trip(tmp_path):
    model = vitprune.load_model("eva02_tiny_patch14_224", pretrained=False)
    assert type(model).__name__ == "Eva"
    folder = save_tiny_eva(tmp_path / "dense")
    patched = vitprune.apply_method(vitprune.load(folder), "tome", r=4)
    vitprune.save(patched, tmp_path / "tome")
    again = vitprune.load(tmp_path / "tome")
    x = images()
    with torch.no_grad():
        assert torch.equal(again(x), patched(x))
    card = (tmp_path / "tome" / "README.md").read_text()
    assert "Deviation from the paper on this model: rotary embeddings: a merged token keeps its destination" in card


@pytest.mark.slow
def test_compress_profile_and_visualize_a_tiny_eva(tmp_path):
    folder = save_tiny_eva(tmp_path / "eva", img_size=32)
    out = tmp_path / "out"
    result = vitprune.compress(str(folder), "evit", data="demo", output=str(out), keep_rate=0.5, epochs=0.1,
                               batch_size=8, speed=False, device="cpu")
    assert result is not None
    report = json.loads((out / "report.json").read_text())
    assert report["compressed"]["gmacs"] < report["dense"]["gmacs"]
    assert "Deviation from the paper on this model: rotary embeddings: " in (out / "README.md").read_text()
    student = vitprune.load(out)
    assert type(student).__name__ == "VitpruneEva" and student.vitprune_method.name == "evit"
    res = runner.invoke(app, ["profile", str(out), "--no-speed", "--json"])
    assert res.exit_code == 0, res.output
    profile = json.loads(res.stdout)
    assert profile["compressed"]["tokens"] == [65, 65, 34]  # 1 + 8 x 8; at block 2: 1 + ceil(0.5 x 64) + 1 fused
    assert profile["compressed"]["notes"] == [f"rotary embeddings: {student.vitprune_method.rotary}"]
    png = tmp_path / "maps.png"
    res = runner.invoke(app, ["visualize", str(out), "demo:0", "--out", str(png), "--json"])
    assert res.exit_code == 0, res.output
    stages = json.loads(res.stdout)["stages"]
    assert stages and stages[0]["patch_tokens"] == [math.ceil(0.5 * 64)]  # ceil(keep rate x 8 x 8 patches)


@pytest.mark.slow
@pytest.mark.parametrize("method,depth,steps", [("evit", 4, 2), ("tome", 3, 2), ("sait", 3, 1)],
                         ids=["evit", "tome", "sait"])
def test_export_of_a_static_method_on_eva_matches_pytorch(method, depth, steps, tmp_path):
    """Each method's rotary positions through ``steps`` pruning steps (EViT 65 65 34 19, ToMe 65 57 49, SaiT 65 33
    33): the fewest blocks that hold them, since each block makes the export slower."""
    from vitprune.exporter import export_onnx, verify
    from vitprune.exporter.verify import RELATIVE_TOLERANCE
    from vitprune.measure.ort import OrtModel

    model = apply(make_eva("eva02", depth=depth), method, **SETTINGS[method][0])
    path = tmp_path / "m.onnx"
    tokens = export_onnx(model, path, (3, 32, 32))
    assert tokens == model.vitprune_method.token_schedule(model)
    assert tokens[-1] < 65  # the graph runs fewer tokens than the dense 1 + 8 x 8
    assert len(set(tokens)) == steps + 1
    result = verify(OrtModel(path), model, images(4), "random")
    assert result.argmax_agree == result.compared
    assert result.max_abs_diff <= RELATIVE_TOLERANCE * max(1.0, result.logit_scale)
