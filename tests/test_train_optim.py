"""Optimizers from timm's factory: other optimizers really train, layer-wise lr decay gives timm's (BEiT's) per-block
ratios on top of the per-group scales, and a name timm does not know is one line."""
from __future__ import annotations

import copy

import pytest
import torch

import vitprune
from vitprune.errors import MethodOptionError
from vitprune.train.loop import layer_scales, param_groups
from vitprune.train.recipe import build_recipe
from tests.test_train_recipe import _trainer
from tests.test_train_utils import tiny_vit


@pytest.mark.parametrize("name, cls", [("lamb", "Lamb"), ("sgd", "SGD")])
def test_other_optimizers_train_a_few_steps(name, cls):
    teacher = tiny_vit()
    model = vitprune.apply_method(copy.deepcopy(teacher), "dynamicvit", keep_rate=0.7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = _trainer(model, teacher, {"optimizer": name, "freeze_backbone_epochs": 0, "warmup_epochs": 0,
                                   "lr": 1e-2, "lr_batch_ref": 32})
    summary = tr.run()
    assert type(tr.optimizer).__name__ == cls and summary.steps == 2
    after = model.state_dict()
    for k in ("blocks.1.attn.qkv.weight", "score_predictor.0.out_conv.4.weight"):
        assert not torch.equal(before[k], after[k]), k
    # the per-group scales survive the factory: backbone lr x backbone_lr_scale, the new modules lr x 1
    assert {g["lr_scale"] for g in tr.optimizer.param_groups} == {tr.recipe.backbone_lr_scale, 1.0}


def test_layer_decay_gives_timms_per_block_ratios():
    """timm's param_groups_layer_decay (after BEiT): with the layers numbered 0..L by the model's group_matcher
    (patch embedding and tokens 0, block i at i + 1, final norm and head L = depth + 1), layer l trains at
    lr x decay ** (L - l), so consecutive blocks differ by exactly the factor ``decay``."""
    decay, depth = 0.5, 4
    model = vitprune.apply_method(tiny_vit(depth=depth), "dynamicvit", keep_rate=0.7)
    rec, _ = build_recipe({}, {"layer_decay": decay, "backbone_lr_scale": 0.1, "frozen": []})
    scales = layer_scales(model, decay)
    top = depth + 1
    for i in range(depth):
        assert scales[f"blocks.{i}.attn.qkv.weight"] == pytest.approx(decay ** (top - (i + 1)))
    assert scales["patch_embed.proj.weight"] == pytest.approx(decay ** top)
    assert scales["head.weight"] == 1.0 and scales["score_predictor.0.in_conv.0.weight"] == 1.0
    groups = param_groups(model, rec, model.vitprune_method.new_module_prefixes)
    by_name = {n: g for g in groups for n in g["names"]}
    for i in range(depth - 1):  # the ratio between neighbouring blocks is the decay, on top of the backbone scale
        lo, hi = by_name[f"blocks.{i}.mlp.fc1.weight"], by_name[f"blocks.{i + 1}.mlp.fc1.weight"]
        assert lo["lr_scale"] / hi["lr_scale"] == pytest.approx(decay)
    assert by_name["blocks.3.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.1 * decay)
    assert by_name["score_predictor.0.in_conv.0.weight"]["lr_scale"] == 1.0  # new modules: lr x 1, no decay
    assert by_name["blocks.0.norm1.weight"]["weight_decay"] == 0.0  # the exclusions stay


def test_an_unknown_optimizer_is_one_line_naming_the_close_one():
    with pytest.raises(MethodOptionError, match=r"^`optimizer` 'lamm' is not one of timm's optimizers \(did you "
                                                r"mean lamb\?\)[^\n]*$"):
        build_recipe({}, {"optimizer": "lamm"})
    with pytest.raises(MethodOptionError, match="layer_decay"):
        build_recipe({}, {"layer_decay": 1.5})
