"""NaFlexViT's patch dictionaries (mixed resolutions padded to one sequence length, with ``patch_valid``) on the
methods that keep static token counts: the dictionary path is the image path where nothing is padded, the no-op
settings are timm's own NaFlexVit on a padded mixed batch, padding is never kept over a real patch and has no
influence on the logits, and the methods that choose token counts per image refuse in one line."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.data.naflex_dataset import NaFlexCollator
from timm.data.naflex_transforms import Patchify
from torch import nn

import vitprune
from vitprune.errors import UnsupportedModelError
from vitprune.methods import registry, tracking
from vitprune.ops import merge as tm
from vitprune.ops import padding

from .conftest import digits_batch

#: tiny NaFlexViTs (32 px, patch 4: at most an 8 x 8 grid = 64 patches; 3 blocks, width 48, 3 heads): average pooling
#: with 4 register tokens (``_gap``) and attention pooling with 1 register token (``_map``); neither has a class token
VARIANTS = {"gap": "naflexvit_base_patch16_gap", "map": "naflexvit_base_patch16_map"}
#: the methods that run patch dictionaries (``padding_masks``): every static-count method
STATIC = sorted(cls.name for cls in registry.method_classes() if cls.padding_masks)
SEQ = 64  # the padded sequence length: the largest image's 8 x 8 patches
#: float32 rounding of the same computation in another order (an additive zero mask, row-major patches vs conv)
TOL = dict(atol=1e-5, rtol=1e-5)


def test_the_static_count_methods_run_patch_dictionaries():
    assert STATIC == ["dynamicvit", "evit", "evovit", "sait", "tome"]


def make(variant: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(VARIANTS[variant], pretrained=False, depth=3, embed_dim=48, num_heads=3, num_classes=10,
                             img_size=32, patch_size=4, pretrained_cfg_overlay=dict(input_size=(3, 32, 32))).eval()


def apply(model: nn.Module, method: str, **opts) -> nn.Module:
    return vitprune.apply_method(copy.deepcopy(model), method, **opts).eval()


def collate(images: list[torch.Tensor], seq: int = SEQ) -> dict:
    """timm's own NaFlex batch: each image patchified (``Patchify``), padded to ``seq`` by ``NaFlexCollator``."""
    patchify = Patchify(4)
    batch, _ = NaFlexCollator(max_seq_len=seq)([(patchify(img), 0) for img in images])
    return batch


def mixed_images() -> list[torch.Tensor]:
    """Three digits at 32 x 32 (64 patches, no padding), 24 x 32 (48) and 16 x 16 (16 patches, 48 of padding)."""
    x = digits_batch(3)
    return [x[0], x[1, :, :24], x[2, :, :16, :16]]


def run(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


def settings(method: str) -> list[dict]:
    cls = registry.get_method_class(method)
    return [dict(cls.noop_options), dict(cls.sparse_options)]


# ------------------------------------------------------------------------------------------ (a) no padding


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("method", STATIC)
def test_an_unpadded_dictionary_is_the_image_path(method, variant):
    model = make(variant)
    images = digits_batch(2)
    for opts in settings(method):
        patched = apply(model, method, **opts)
        with torch.no_grad():
            want = patched(images)
        got = run(patched, collate(list(images)))
        assert torch.allclose(got, want, **TOL), (opts, (got - want).abs().max())


# ------------------------------------------------------------------------------------------ (b) no-op = timm


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("method", STATIC)
def test_noop_on_a_padded_mixed_batch_is_timms_naflexvit(method, variant):
    model = make(variant)
    batch = collate(mixed_images())
    want = run(model, batch)  # timm's own forward: its symmetric padding mask and masked pooling
    got = run(apply(model, method, **settings(method)[0]), batch)
    assert torch.allclose(got, want, **TOL), (got - want).abs().max()


def test_patches_coordinates_and_validity_as_arguments_are_the_dictionary():
    patched = apply(make("gap"), "tome", r=8)
    batch = collate(mixed_images())
    with torch.no_grad():
        got = patched(batch["patches"], batch["patch_coord"], batch["patch_valid"])
    assert torch.equal(got, run(patched, batch))


# ------------------------------------------------------------------------------------------ (c) padding


def _noisy_padding(batch: dict, seed: int = 1) -> dict:
    """The same batch with random values in the padding patches (their coordinates stay the collator's zeros:
    timm sizes each image's position-embedding grid from its largest coordinate)."""
    g = torch.Generator().manual_seed(seed)
    pad = ~batch["patch_valid"]
    patches = batch["patches"].clone()
    patches[pad] = 5 * torch.randn(patches[pad].shape, generator=g)
    return {**batch, "patches": patches}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("method", STATIC)
def test_padding_has_no_influence_at_the_sparse_setting(method, variant):
    """What the padding slots hold and which images share the batch change nothing in an image's logits."""
    patched = apply(make(variant), method, **settings(method)[1])
    batch = collate(mixed_images())
    got = run(patched, batch)
    assert torch.allclose(run(patched, _noisy_padding(batch)), got, atol=1e-6, rtol=0)
    for i in range(3):
        alone = run(patched, {k: (v[i:i + 1] if torch.is_tensor(v) else v) for k, v in batch.items()})
        assert torch.allclose(alone[0], got[i], **TOL)


#: settings that keep 16 of the 64 slots at one location (block 1): for the 16 x 16 image, its 16 real patches
#: exactly (ToMe: merge the 24 padding tokens of set A in block 0), whatever their scores, if padding ranks last
DROP_PADDING = {
    "evit": dict(keep_rate=0.25, drop_loc=[1]),  # ceil(0.25 * 64) = 16, the inattentive (padding) fused
    "dynamicvit": dict(keep_rate=0.25, pruning_loc=[1]),  # int(64 * 0.25) = 16
    "evovit": dict(keep_rate=0.25, select_loc=[1]),  # floor(0.25 * 64) = 16 informative patches
    "sait": dict(mode="fixed", keep_rate=0.25, prune_at=[2], k_min=0.1),  # ceil(0.25 * 64) = 16 after block 1
    "tome": dict(r=[24]),  # padding slots 16..63 alternate between sets A and B: 24 in set A
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("method", STATIC)
def test_dropping_the_padding_leaves_the_image_as_it_is_alone(method, variant):
    """A static count that equals the image's real patches keeps exactly those (padding ranks below every real
    patch, ToMe merges padding first): its logits are the image's own, unpadded and dense, to rounding."""
    model = make(variant)
    small = mixed_images()[2]
    patched = apply(model, method, **DROP_PADDING[method])
    got = run(patched, collate([mixed_images()[0], small]))[1]
    want = run(model, collate([small], seq=16))[0]  # timm, the image alone: 16 patches, no padding
    assert torch.allclose(got, want, **TOL), (got - want).abs().max()


@pytest.mark.parametrize("method", ["evit", "dynamicvit", "sait"])
def test_kept_tokens_include_padding_only_once_every_real_patch_is_kept(method):
    """The token maps (``tracking``): at the sparse setting every image keeps its highest-ranked real patches first;
    a padding slot among the kept tokens means no real patch was dropped."""
    for fuse in ((True, False) if method == "evit" else (None,)):
        opts = {**settings(method)[1], **({} if fuse is None else {"fuse": fuse})}
        patched = apply(make("gap"), method, **opts)
        batch = collate(mixed_images())
        with tracking(patched), torch.no_grad():
            patched(batch)
        origin = patched.vitprune_state.origin  # per kept token: its slot in the padded sequence (-1: fused)
        assert origin.shape[1] < SEQ  # something was dropped
        for b in range(3):
            real = batch["patch_valid"][b]
            kept = origin[b][origin[b] >= 0]
            if (~real[kept]).any():
                assert real[kept].sum() == real.sum()
            else:
                assert real[kept].all()
        # the small image (16 real slots) keeps more than 16 tokens: all of its real patches are among them
        assert set(range(16)) <= set(origin[2].tolist())


def test_evovit_informative_patches_are_real_before_padding():
    patched = apply(make("gap"), "evovit", keep_rate=0.5, select_loc=[1])
    batch = collate(mixed_images())
    with tracking(patched), torch.no_grad():
        patched(batch)
    assignment = patched.vitprune_state.stages[0][1]  # slot -> position among the 32 informative patches, or -1
    informative = assignment >= 0
    real = batch["patch_valid"]
    assert (informative.sum(1) == 32).all()
    for b in range(3):
        if (informative[b] & ~real[b]).any():
            assert (informative[b] | ~real[b]).all()
        else:
            assert not (informative[b] & ~real[b]).any()
    assert informative[2, :16].all()  # the 16 x 16 image: its 16 real patches, then 16 padding slots


def test_tome_never_merges_a_real_token_into_padding():
    """ToMe at the sparse setting: every real patch stays represented by a live token, and the live tokens' sizes
    add up to the image's real patches (padding counts nowhere)."""
    patched = apply(make("gap"), "tome", r=8)
    batch = collate(mixed_images())
    with tracking(patched), torch.no_grad():
        patched(batch)
    state = patched.vitprune_state
    size = state.aux["size"][:, 4:, 0]  # after the 4 register tokens
    live = state.valid
    assert torch.equal(live, size > 0)
    assert torch.equal(size.sum(1), batch["patch_valid"].sum(1).to(size.dtype))
    assignment = state.stages[-1][1]  # slot -> current token
    real = batch["patch_valid"]
    for b in range(3):
        tokens = assignment[b][real[b]]
        assert (tokens >= 0).all() and live[b, tokens].all()


def test_bipartite_matching_merges_padding_first_and_real_tokens_into_real_ones():
    """The op itself, on random keys: padding set-A tokens are sources before any real one; a real source's
    destination is real while its image has a real set-B token."""
    g = torch.Generator().manual_seed(0)
    B, P, npre = 4, 20, 1
    metric = torch.randn(B, npre + P, 8, generator=g)
    n_real = torch.tensor([20, 13, 6, 9])
    live = torch.arange(P).expand(B, -1) < n_real[:, None]
    for r in (2, 5, 9):
        m = tm.bipartite_matching(metric, r, npre, live)
        a_live, b_live = live[:, m.a_start::2], live[:, 1 - m.a_start::2]
        for b in range(B):
            src_real = a_live[b, m.src_idx[b]]
            if src_real.any():  # a real source only once every padding A token is a source
                assert (~a_live[b]).sum() == (~src_real).sum()
            assert b_live[b, m.dst_idx[b][src_real]].all()
    # without a mask: the matching as before
    plain = tm.bipartite_matching(metric, 5, npre)
    assert torch.equal(tm.bipartite_matching(metric, 5, npre, torch.ones(B, P, dtype=torch.bool)).src_idx,
                       plain.src_idx)


def test_padding_ops_rank_padding_last_and_weigh_it_zero():
    scores = torch.tensor([[0.5, 9.0, -3.0, 0.0]])
    live = torch.tensor([[True, False, True, True]])
    assert padding.rank_scores(scores, live).argsort(descending=True)[0, -1] == 1
    assert torch.equal(padding.live_weights(scores, live), torch.tensor([[0.5, 0.0, -3.0, 0.0]]))
    bias = padding.key_bias(live, 2, torch.float32)
    assert bias.shape == (1, 1, 1, 6)
    assert torch.equal(bias[0, 0, 0] == 0, torch.tensor([True, True, True, False, True, True]))


# ------------------------------------------------------------------------------------------ (d) refusals


def test_per_image_count_methods_refuse_patch_dictionaries_in_one_line():
    model = make("gap")
    batch = collate(mixed_images())
    cases = [("dge", {}, "whole images"), ("sait", dict(mode="adaptive"), "fixed and dense")]
    for method, opts, words in cases:
        with pytest.raises(UnsupportedModelError, match=words) as e:
            run(apply(model, method, **opts), batch)
        msg = str(e.value)
        assert "\n" not in msg and all(name in msg for name in ("evit", "tome", "evovit", "dynamicvit"))
    trained = apply(model, "dynamicvit", keep_rate=0.5).train()
    with pytest.raises(UnsupportedModelError, match="inference only") as e:
        trained(batch)
    assert "\n" not in str(e.value)
    with pytest.raises(UnsupportedModelError, match="attn_mask") as e:
        run(apply(model, "evit"), {**batch, "attn_mask": torch.zeros(3, 1, 68, 68)})
    assert "\n" not in str(e.value)
