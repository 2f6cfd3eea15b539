"""timm BEiT (relative position bias per block), NaFlexViT at a fixed resolution and ViTs with a rotary embedding
per block (``rope_mixed``): every registered method drives them, its no-op setting is the dense model bit for bit,
the token schedule holds, the bias / rotation of each block follows the tokens, and MACs are counted."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import vitprune
from vitprune import ops
from vitprune.errors import UnsupportedModelError
from vitprune.methods import registry, tracking
from vitprune.methods.base import embed
from vitprune.ops import relpos
from vitprune.ops.attention import head_dim
from vitprune.ops import rope as rope_ops

from .conftest import digits_batch

#: tiny variants (32 px, patch 4: an 8 x 8 grid; 3 blocks, width 48, 3 heads): BEiT as timm builds beit_* (relative
#: position bias per block, q/v bias, LayerScale), BEiT with absolute positions and neither (data2vec-vision's layout
#: without LayerScale), NaFlexViT with average and attention pooling, and a rotary ViT with a rope per block
#: (LayerScale raised from its 1e-5 so that the blocks show in the logits)
VARIANTS = {
    "beit": ("beit_base_patch16_224", {}),
    "beit-abs-pos": ("beit_base_patch16_224", dict(use_abs_pos_emb=True, use_rel_pos_bias=False, init_values=None)),
    "naflex-gap": ("naflexvit_base_patch16_gap", {}),
    "naflex-map": ("naflexvit_base_patch16_map", {}),
    "rope-mixed": ("vit_small_patch16_rope_mixed_224", dict(init_values=0.5)),
}
#: per registered method: its declared setting that removes tokens
SPARSE = {cls.name: dict(cls.sparse_options) for cls in registry.method_classes()}


def make(variant: str, depth: int = 3, seed: int = 0) -> nn.Module:
    arch, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    if arch.startswith("naflexvit"):  # its resolution: the one its config names
        extra = {**extra, "pretrained_cfg_overlay": dict(input_size=(3, 32, 32))}
    model = timm.create_model(arch, pretrained=False, depth=depth, embed_dim=48, num_heads=3, num_classes=10,
                              img_size=32, patch_size=4, **extra).eval()
    with torch.no_grad():  # timm starts BEiT's bias tables and q/v biases at zero: spread them so they matter
        for name, p in model.named_parameters():
            if name.endswith(("relative_position_bias_table", "q_bias", "v_bias")):
                p.normal_(std=0.5)
    return model


def apply(model: nn.Module, method: str, **opts) -> nn.Module:
    return vitprune.apply_method(copy.deepcopy(model), method, **opts).eval()


# ------------------------------------------------------------------------------------------ identity, schedule


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_method_is_the_dense_model_at_its_declared_noop_setting_and_prunes_by_its_schedule(variant):
    base = make(variant)
    x = digits_batch(2)
    with torch.no_grad():
        dense = base(x)
    for method in registry.method_names():
        noop = apply(base, method, **registry.get_method_class(method).noop_options)
        with torch.no_grad():
            assert torch.equal(noop(x), dense), method
        sparse = apply(base, method, **SPARSE[method])
        with tracking(sparse), torch.no_grad():
            out = sparse(x)
        assert out.shape == dense.shape and torch.isfinite(out).all(), method
        assert not torch.equal(out, dense), method  # tokens were removed, merged or pooled
        counts = sparse.vitprune_state.counts
        assert counts[0] == base.num_prefix_tokens + 64
        if method != "dge":  # DGE keeps every token and pools queries (its schedule is in test_dge)
            assert counts == sparse.vitprune_method.token_schedule(sparse), method
            assert counts[-1] < counts[0], method


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["beit", "naflex-map", "rope-mixed"])
def test_training_forwards_backpropagate(variant):
    base = make(variant)
    for method, opts in SPARSE.items():
        model = apply(base, method, **opts).train()
        model(digits_batch(2)).sum().backward()
        assert model.blocks[-1].mlp.fc2.weight.grad is not None, method


# ------------------------------------------------------------------------------------------ BEiT's bias follows


def _kept(n: int, k: int, batch: int = 2) -> torch.Tensor:
    return torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(b))[:k] for b in range(batch)])


def test_gathered_bias_is_timm_bias_at_the_kept_positions_and_zero_for_tokens_without_one():
    blk = make("beit").blocks[1]
    full = blk.attn._get_rel_pos_bias()[0]  # H x 65 x 65, class token first
    rows = relpos.position_rows((8, 8), 2, full.device, torch.float32)
    idx = _kept(64, 20)
    kept_rows = ops.take_rope(rows, idx, synthetic=1)  # 20 kept patches, then a fused token
    got = relpos.gather_bias(blk.attn, kept_rows, kept_rows, num_prefix=1)
    for b in range(2):
        seq = torch.cat([torch.zeros(1, dtype=torch.long), idx[b] + 1])
        assert torch.equal(got[b, :, :21, :21], full[:, seq][:, :, seq])
        assert not got[b, :, 21].any() and not got[b, :, :, 21].any()  # the fused token: no bias


def test_a_pooled_cell_takes_the_bias_of_the_patch_at_its_centre():
    """DGE pools rows as it pools tokens (mean, then ``rope.normalise``): a 2 x 2 cell at grid rows 2-3, columns
    4-5 decodes to (2, 4), a 4 x 4 cell at rows 4-7, columns 0-3 to (5, 1) (centre 5.5, 1.5, rounded down)."""
    rows = relpos.position_rows((8, 8), 1, torch.device("cpu"), torch.float32)[0].reshape(8, 8, 4)
    cell2 = rope_ops.normalise(rows[2:4, 4:6].reshape(-1, 4).mean(0))
    cell4 = rope_ops.normalise(rows[4:8, 0:4].reshape(-1, 4).mean(0))
    got = relpos.table_index(torch.stack([cell2, cell4])[None], (8, 8))
    assert got.tolist() == [[1 + 2 * 8 + 4, 1 + 5 * 8 + 1]]


def test_beit_attention_on_kept_tokens_is_timm_block_forward_with_the_bias_indexed_by_hand():
    """vitprune's BEiT block on a token subset equals timm's ``beit.Block.forward`` on the same tokens, given the
    rows and columns of its own ``_get_rel_pos_bias()`` at those positions (passed as timm's shared bias, with the
    block's table set aside)."""
    model = make("beit")
    x, rows = embed(model, digits_batch(2))
    idx = _kept(64, 24)
    kept = ops.keep_tokens(x, idx, 1)
    for blk in model.blocks:
        ref = copy.deepcopy(blk)
        full = ref.attn._get_rel_pos_bias()
        ref.attn.relative_position_bias_table = None
        seqs = torch.cat([torch.zeros(2, 1, dtype=torch.long), idx + 1], dim=1)
        by_hand = torch.stack([full[0][:, s][:, :, s] for s in seqs])  # B x H x 25 x 25
        with torch.no_grad():
            want = ref(kept, shared_rel_pos_bias=by_hand)
            got = ops.run_block(blk, kept, ops.take_rope(rows, idx))
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


def test_merged_and_fused_tokens_get_the_documented_bias():
    base = make("beit")
    x = digits_batch(2)
    _, rows = embed(base, x)
    with torch.no_grad():
        evit = apply(base, "evit", keep_rate=0.5, drop_loc=[1])
        with tracking(evit):
            evit(x)
        state = evit.vitprune_state
        assert (relpos.table_index(state.rope, (8, 8))[:, -1] == -1).all()  # the fused token: no position
        assert torch.equal(state.rope[:, :-1], ops.take_rope(rows, state.origin[:, :-1]))
        tome = apply(base, "tome", r=6)
        with tracking(tome):
            tome(x)
        st = tome.vitprune_state
        last = st.stages[-1][1]  # for every original patch, the token that stands for it now
        for b in range(2):
            for token in range(st.rope.shape[1]):
                patches = (last[b] == token).nonzero().flatten()
                assert any(torch.equal(st.rope[b, token], rows[b, p]) for p in patches)  # one of its patches'
    described = {d["name"]: d["notes"] for d in registry.describe_methods()}
    for name in SPARSE:
        assert any(n.startswith("Relative position bias (timm BEiT models): ") for n in described[name]), name
    assert "destination" in registry.get_method_class("tome").position_bias
    assert "no bias" in registry.get_method_class("evit").position_bias
    assert any(n.startswith("relative position bias: ") for n in evit.vitprune_method.report_notes(evit))


# ------------------------------------------------------------------------------------------ rope per block


def test_each_block_rotates_kept_tokens_by_its_own_rope_rows():
    """A rope per block: vitprune's attention on kept tokens equals timm's ``AttentionRope.forward`` given block
    ``i``'s own rope table gathered at the kept patches (timm's ``apply_keep_indices_nlc``)."""
    from timm.layers import apply_keep_indices_nlc

    model = make("rope-mixed")
    x, rows = embed(model, digits_batch(2))
    table = model.rope.get_embed()  # depth x H x 64 x 2 head_dim
    idx = _kept(64, 20)
    kept = ops.keep_tokens(x, idx, model.num_prefix_tokens)
    outs = []
    for i, blk in enumerate(model.blocks):
        per_block = apply_keep_indices_nlc(x, table[i], idx)  # B x H x 20 x 2 head_dim
        with torch.no_grad():
            want = blk.attn(blk.norm1(kept), rope=per_block)
            got, _, _ = ops.attention(blk.attn, blk.norm1(kept), rope=ops.take_rope(rows, idx))
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
        outs.append(got)
    assert not torch.allclose(outs[0], outs[1])  # the blocks' rotations differ


# ------------------------------------------------------------------------------------------ MACs


@pytest.mark.slow
def test_dense_beit_macs_agree_with_torch_flop_counter_and_sdpa_formula():
    """fvcore + vitprune's handles vs torch's FlopCounterMode (2 flops per MAC) on the matrix ops (linear, conv);
    SDPA by its formula; the bias gather costs no MACs (fvcore's convention for indexing)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitprune.measure import count_macs

    for arch in ("beit", "naflex-map"):
        model = make(arch)
        mc = count_macs(model, images=digits_batch(1))
        assert mc.uncounted == {}
        model.requires_grad_(False)  # torch's module tracker cannot hook NaFlexViT's parameter inputs otherwise
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(digits_batch(1))
        assert mc.by_operator["linear"] + mc.by_operator.get("conv", 0) == counter.get_total_flops() / 2
        attn, n = model.blocks[0].attn, 1 + 64
        heads, hd = attn.num_heads, head_dim(attn)
        # per block: heads x N x N x (head_dim for QK^T + head_dim for AV); the map head's SDPA counted apart
        blocks_sdpa = len(model.blocks) * heads * n * n * 2 * hd
        pool = getattr(model, "attn_pool", None)
        pool_sdpa = 0 if pool is None else pool.num_heads * pool.latent_len * 64 * 2 * pool.head_dim
        assert mc.by_operator["scaled_dot_product_attention"] == blocks_sdpa + pool_sdpa


@pytest.mark.slow
@pytest.mark.parametrize("method", ["evit", "tome", "dynamicvit"])
def test_sparse_beit_macs_are_the_independent_count_at_the_token_schedule(method):
    """A static method on BEiT: fvcore's matrix ops are torch's FlopCounterMode's (the bias gathers add none), and
    SDPA is heads x n_i x n_i x 2 head_dim summed over the blocks' token counts n_i."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitprune.measure import count_macs

    model = apply(make("beit"), method, **SPARSE[method])
    x = digits_batch(1)
    mc = count_macs(model, images=x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    matrix = sum(v for k, v in mc.by_operator.items() if k not in ("scaled_dot_product_attention", "layer_norm"))
    assert matrix == counter.get_total_flops() / 2
    attn = model.blocks[0].attn
    schedule = model.vitprune_method.token_schedule(model)
    assert mc.by_operator["scaled_dot_product_attention"] == sum(
        attn.num_heads * n * n * 2 * head_dim(attn) for n in schedule)
    assert mc.macs < count_macs(make("beit"), images=x).macs


def test_analytic_block_cost_is_fvcore_on_a_beit_block():
    from vitprune.measure import count_macs
    from vitprune.ops.analytic import block_cost

    blk = make("beit").blocks[0]
    n = 65
    assert block_cost(blk).dense(n) == count_macs(blk, images=torch.randn(1, n, 48)).macs


# ------------------------------------------------------------------------------------------ refusals


def test_refusals_are_one_line_and_name_what_works():
    shared = timm.create_model("beit_base_patch16_224", pretrained=False, depth=2, embed_dim=48, num_heads=3,
                               img_size=32, patch_size=4, use_shared_rel_pos_bias=True, use_rel_pos_bias=False)
    with pytest.raises(UnsupportedModelError, match="bias per block") as e:
        vitprune.apply_method(shared, "evit")
    assert "\n" not in str(e.value)
    naflex = apply(make("naflex-gap"), "dge")  # per-image token counts: NaFlex patch dictionaries are refused
    patches = torch.randn(2, 64, 4 * 4 * 3)
    coord = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij"), -1).reshape(1, 64, 2)
    with pytest.raises(UnsupportedModelError, match="whole images") as e:
        naflex({"patches": patches, "patch_coord": coord.expand(2, -1, -1), "patch_valid": torch.ones(2, 64).bool()})
    assert "\n" not in str(e.value) and "evit" in str(e.value) and "tome" in str(e.value)


def test_tome_and_dge_blocks_add_the_bias_where_they_form_attention_themselves():
    """ToMe's merging block (at r = 0) and DGE's query update (every token a query) compute the BEiT block themselves
    (fused SDPA with their own biases): with the tokens' position rows each is the BEiT block with its bias."""
    from vitprune.methods.base import TokenState

    model = make("beit")
    x, rows = embed(model, digits_batch(2))
    tome = apply(model, "tome", r=4).vitprune_method
    dge = apply(model, "dge").vitprune_method
    state = TokenState(num_prefix=1, grid=(8, 8), training=False, rope=rows)
    state.aux["dge_rope"] = (rope_ops.prefixed(rows, 1), None)  # the keys' rows (``DGE._key_rope``)
    with torch.no_grad():
        for blk in model.blocks:
            want = ops.run_block(blk, x, rows)
            got, _, _ = tome.merge_block(blk, x, None, 0, 1, rows)
            assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
            xn = blk.norm1(x)
            k, v = ops.project_kv(blk.attn, xn, rows)
            assert torch.allclose(x + dge._query_update(blk, x, xn, k, v, state, rows), want, atol=1e-6, rtol=1e-5)
            without = ops.run_block(blk, x)  # timm's block: its full bias, the same tokens in the same order
            assert torch.allclose(without, want, atol=1e-6, rtol=1e-5)
