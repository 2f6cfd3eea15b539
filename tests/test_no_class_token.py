"""ViTs without a class token (``global_pool`` ``avg`` / ``map``): DynamicViT, EViT, Evo-ViT and SaiT rank patches
by the attention they receive, and the pooled head reads only what the method keeps."""
from __future__ import annotations

import copy

import pytest
import torch

import vitprune
from vitprune.errors import UnsupportedModelError
from vitprune.methods import describe_methods, tracking
from vitprune.methods.registry import method_classes
from vitprune.ops.importance import attention_importance, received_attention
from vitprune.ops.pooling import weighted_pool

from .conftest import make_vit, photo_batch

#: the three kinds of ViT without a class token timm ships: average pooling, average pooling with registers,
#: attention pooling (SigLIP)
ARCHS = {
    "gap": dict(arch="vit_medium_patch16_gap_256"),
    "reg4-gap": dict(arch="vit_little_patch16_reg4_gap_256"),
    "siglip-map": dict(arch="vit_base_patch16_siglip_224"),
}
#: the methods that state how they work without a class token (the others need no change: ToMe, DGE), at their
#: declared no-op and sparse settings; SaiT's sparse setting here is its adaptive mode, which has its own pooling path
NO_CLS = [cls for cls in method_classes() if cls.no_class_token]
NOOP = {cls.name: dict(cls.noop_options) for cls in NO_CLS}
SPARSE = {cls.name: dict(cls.sparse_options) for cls in NO_CLS} | {"sait": {"mode": "adaptive", "threshold": 0.5}}


def base_model(kind: str) -> torch.nn.Module:
    return make_vit(depth=4, **ARCHS[kind])


@pytest.fixture(scope="module")
def models():
    return {kind: base_model(kind) for kind in ARCHS}


@pytest.mark.parametrize("method", sorted(NOOP))
@pytest.mark.parametrize("kind", sorted(ARCHS))
def test_noop_is_the_dense_model_and_sparse_runs(models, digits, kind, method):
    base = models[kind]
    assert base.cls_token is None
    m = vitprune.apply_method(copy.deepcopy(base), method, **NOOP[method]).eval()
    with torch.no_grad():
        assert torch.equal(m(digits), base(digits))
    m = vitprune.apply_method(copy.deepcopy(base), method, **SPARSE[method]).eval()
    with torch.no_grad():
        out = m(digits)
    assert out.shape == (digits.shape[0], base.num_classes) and torch.isfinite(out).all()
    assert any(n.startswith("no class token: ") for n in m.vitprune_method.report_notes(m))


def test_received_attention_is_the_mean_column_of_timms_attention(digits):
    """An independent reference: timm's own non-fused Attention hands its softmax probabilities to ``attn_drop``."""
    base = base_model("reg4-gap")
    blk = base.blocks[1]
    blk.attn.fused_attn = False
    seen = []
    hook = blk.attn.attn_drop.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        x = base.norm_pre(base.patch_drop(base._pos_embed(base.patch_embed(digits))))
        x = base.blocks[0](x)
        want_out = blk.attn(blk.norm1(x))
        out, scores = attention_importance(blk.attn, blk.norm1(x), base.num_prefix_tokens, class_token=False)
    hook.remove()
    probs = seen[0]  # B x H x N x N
    torch.testing.assert_close(scores, probs.mean(dim=(1, 2))[:, base.num_prefix_tokens:])
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    # every softmax row sums to 1, so the mean column over all keys (prefix included) sums to 1
    q = torch.randn(2, 3, 7, 5)
    torch.testing.assert_close(received_attention(q, torch.randn(2, 3, 7, 5), 0.4).sum(1), torch.ones(2))


def test_weighted_pool_counts_a_token_as_the_patches_it_stands_for():
    """A token of weight s pools as s copies of itself; weight 0 as if it were not there (avg and attention)."""
    torch.manual_seed(0)
    for kind in ("gap", "siglip-map"):
        model = base_model(kind)
        x = torch.randn(2, model.num_prefix_tokens + 5, model.embed_dim)
        w = torch.tensor([[1.0, 3.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 1.0, 4.0]])
        got = weighted_pool(model, x, w)
        for b in range(2):
            copies = x[b:b + 1, model.num_prefix_tokens:].repeat_interleave(w[b].long(), dim=1)
            want = model.pool(torch.cat([x[b:b + 1, :model.num_prefix_tokens], copies], dim=1))
            torch.testing.assert_close(got[b:b + 1], want, atol=1e-5, rtol=1e-5)
        assert weighted_pool(model, x, None) is None


def test_evit_fused_token_counts_its_patches_in_the_pooled_head(digits):
    base = base_model("gap")
    m = vitprune.apply_method(copy.deepcopy(base), "evit", keep_rate=0.5).eval()
    with tracking(m), torch.no_grad():
        final = m.forward_features(digits)
    state = m.vitprune_state
    size = state.aux["pool_weight"]
    # every original patch is accounted for once: kept (size 1) or inside the fused token
    torch.testing.assert_close(size.sum(1), torch.full((digits.shape[0],), float(state.num_patches)))
    assert size.shape[1] == final.shape[1] - base.num_prefix_tokens < state.num_patches


def test_dynamicvit_training_pools_only_the_kept_tokens(digits):
    base = base_model("gap")
    m = vitprune.apply_method(copy.deepcopy(base), "dynamicvit", keep_rate=0.5).train()
    feats = m.forward_features(digits)
    keep = m.vitprune_state.aux["decisions"][-1]
    pooled = m.pool(feats)
    for b in range(digits.shape[0]):
        kept = feats[b, keep[b] > 0.5]
        torch.testing.assert_close(pooled[b], kept.mean(0), atol=1e-5, rtol=1e-5)


def test_sait_padding_never_reaches_the_pooled_head(digits):
    """Adaptive SaiT pads a batch to its largest count; an image alone (batch 1) runs unpadded: same logits. Also
    for a ViT whose head averages the patches although it has a class token (as EVA02's does)."""
    images = torch.cat([photo_batch(32), digits[:3]])
    for kind in ("gap", "siglip-map", "class token, avg pool"):
        base = make_vit(depth=4, global_pool="avg") if kind not in ARCHS else base_model(kind)
        with torch.no_grad():  # sharper queries and keys in the ranking block: image-dependent importance
            base.blocks[0].attn.qkv.weight[:2 * base.embed_dim] *= 20
        # the class row is sharper than received attention: at 0.5 every image keeps only k_min's 7 of 64 patches
        threshold = 0.95 if kind not in ARCHS else 0.5
        m = vitprune.apply_method(base, "sait", mode="adaptive", threshold=threshold, k_min=0.1).eval()
        with tracking(m), torch.no_grad():
            batch = m(images)
        counts = m.vitprune_state.aux["sait_kept"][0]
        assert counts.min() < counts.max()  # the batch really was padded
        with torch.no_grad():
            alone = torch.cat([m(images[i:i + 1]) for i in range(images.shape[0])])
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_refusals_and_the_deviation_is_listed():
    gap = base_model("gap")
    with pytest.raises(UnsupportedModelError, match="no class token"):
        vitprune.apply_method(copy.deepcopy(gap), "sait", fuse=True)
    with pytest.raises(UnsupportedModelError, match="no class token"):
        vitprune.apply_method(copy.deepcopy(gap), "evovit", head="avg")
    maxpool = make_vit(depth=4, arch="vit_medium_patch16_gap_256", global_pool="max")
    for method in NOOP:
        with pytest.raises(UnsupportedModelError, match="'max'"):
            vitprune.apply_method(copy.deepcopy(maxpool), method)
    notes = {d["name"]: d["notes"] for d in describe_methods()}
    for method in NOOP:
        assert any(n.startswith("No class token (deviation from the paper)") for n in notes[method])


def test_saved_model_card_states_the_deviation(tmp_path):
    m = vitprune.apply_method(base_model("siglip-map"), "evit", keep_rate=0.7)
    folder = vitprune.save(m, tmp_path / "evit-siglip")
    card = (folder / "README.md").read_text()
    assert "Deviation from the paper on this model: no class token: importance is the attention each patch " \
           "receives" in card
    dense = vitprune.save(base_model("siglip-map"), tmp_path / "dense")
    assert "Deviation" not in (dense / "README.md").read_text()
