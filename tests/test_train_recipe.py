"""The recipe and the optimizer it builds: precedence of defaults, param groups and their learning rates, frozen
parameters really unchanged after real optimizer steps, the per-iteration schedule, and the distillation loss."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import vitprune
from vitprune.data import Prepared, eval_transform, load_data
from vitprune.errors import MethodOptionError
from vitprune.methods import StepContext
from vitprune.train.loop import RunSettings, Trainer, lr_lambda, param_groups
from vitprune.train.losses import DistillationLoss, soft_distillation
from vitprune.train.recipe import DEMO_CLIP_GRAD, DEMO_EPOCHS, DEMO_LR_MULT, Recipe, build_recipe, scaled_lr
from tests.test_train_utils import tiny_vit


def test_precedence_trainer_method_demo_user():
    method = vitprune.methods.create_method("dynamicvit").default_recipe()
    rec, src = build_recipe(method, {"kd_weight": 0.25}, demo=False, batch_size=64)
    assert rec.lr == method["lr"] and src["lr"] == "method"
    assert rec.kd_weight == 0.25 and src["kd_weight"] == "user"
    assert rec.drop_path is Recipe().drop_path and src["drop_path"] == "trainer"
    demo, dsrc = build_recipe(method, {}, demo=True, batch_size=64, augment_hints={"hflip": 0.0})
    assert demo.epochs == DEMO_EPOCHS and dsrc["epochs"] == "demo"
    assert demo.lr == pytest.approx(method["lr"] * DEMO_LR_MULT) and demo.lr_batch_ref == 64
    # warm-up and frozen phases keep their share of the schedule
    assert demo.freeze_backbone_epochs == pytest.approx(method["freeze_backbone_epochs"] * DEMO_EPOCHS / 30, 1e-3)
    assert demo.augment["hflip"] == 0.0 and dsrc["augment"] == "data"
    assert demo.backbone_lr_scale == 0.1 and dsrc["backbone_lr_scale"] == "demo"  # 0.01 would barely move
    # the demo's high lr is clipped (new modules saturated without it); elsewhere no clipping unless asked for
    assert demo.clip_grad == DEMO_CLIP_GRAD and dsrc["clip_grad"] == "demo" and rec.clip_grad is None
    assert build_recipe(method, {"clip_grad": 5.0}, demo=True)[0].clip_grad == 5.0
    plain, psrc = build_recipe(method, {}, demo=True, augment_hints={"hflip": 0.0}, augment_default=False)
    assert plain.augment is None and psrc["augment"] == "data"  # the digits train on plain images...
    asked, _ = build_recipe(method, {"augment": {"scale": [0.5, 1.0]}}, demo=True, augment_hints={"hflip": 0.0},
                            augment_default=False)
    assert asked.augment["scale"] == [0.5, 1.0] and asked.augment["hflip"] == 0.0  # ...unless asked, no flips
    user, usrc = build_recipe(method, {"epochs": 3, "lr": 1e-2}, demo=True, batch_size=64)
    assert (user.epochs, user.lr, usrc["lr"]) == (3, 1e-2, "user")


@pytest.mark.parametrize("bad", [{"lr": -1.0}, {"kd_temperature": 0.0}, {"nope": 1}, {"frozen": "cls_token"},
                                 {"augment": {"scale": [0.9, 0.1]}}, {"label_smoothing": 1.0}])
def test_bad_recipe_values(bad):
    with pytest.raises(MethodOptionError):
        build_recipe({}, bad)


def test_an_unknown_user_key_is_one_line_with_the_closest_key():
    with pytest.raises(MethodOptionError, match=r"unknown recipe key\(s\) kd_weigth \(did you mean kd_weight\?\)"):
        build_recipe({}, {"kd_weigth": 0.25})


def test_an_unknown_key_in_a_methods_recipe_is_an_error_not_the_trainer_default():
    """A misspelt key in a method's default_recipe() used to be dropped, so the trainer's default ran silently."""
    from vitprune.methods.evit import EViT

    class Misspelt(EViT):
        name = "evit_misspelt_recipe_test"

        def default_recipe(self):
            return {**super().default_recipe(), "warmup_epoch": 0}

    method = Misspelt(Misspelt.Options())
    with pytest.raises(TypeError, match=r"evit_misspelt_recipe_test's default_recipe\(\) returns an unknown "
                                        r"recipe key\(s\) warmup_epoch \(did you mean warmup_epochs\?\)"):
        build_recipe(method.default_recipe(), {}, method=method.name)


def test_every_registered_methods_recipe_uses_known_keys():
    for name in vitprune.methods.method_names():
        method = vitprune.methods.create_method(name)
        rec, src = build_recipe(method.default_recipe(), {}, method=name)
        assert {k for k, v in src.items() if v == "method"} == set(method.default_recipe())
        assert isinstance(rec, Recipe)


def test_recipe_fields_carry_help_and_record_as_plain_json():
    from vitprune.train.recipe import recipe_help

    helps = recipe_help()
    assert list(helps) == list(Recipe().to_dict()) and all(helps.values())
    rec, _ = build_recipe({}, {"frozen": ["cls_token"], "augment": None})
    assert json.loads(json.dumps(rec.to_dict())) == rec.to_dict()


def test_param_groups_lr_scales_weight_decay_and_frozen_names():
    model = vitprune.apply_method(tiny_vit(), "dynamicvit", keep_rate=0.7)
    rec, _ = build_recipe(model.vitprune_method.default_recipe(), {})
    groups = param_groups(model, rec, model.vitprune_method.new_module_prefixes)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["score_predictor.0.in_conv.1.weight"]["lr_scale"] == 1.0
    assert by_name["blocks.0.attn.qkv.weight"]["lr_scale"] == rec.backbone_lr_scale == 0.01
    assert by_name["blocks.0.attn.qkv.weight"]["weight_decay"] == rec.weight_decay
    for n in ("blocks.0.attn.qkv.bias", "blocks.0.norm1.weight", "score_predictor.0.in_conv.0.weight"):
        assert by_name[n]["weight_decay"] == 0.0
    assert "cls_token" not in by_name and "pos_embed" not in by_name  # DynamicViT's recipe freezes them
    assert not model.cls_token.requires_grad
    with pytest.raises(vitprune.errors.VitpruneError, match="matches no parameter"):
        param_groups(tiny_vit(), rec.replace(frozen=["no_such_param"]), ())


def test_schedule_warmup_cosine_and_frozen_backbone():
    rec = Recipe(warmup_epochs=2, freeze_backbone_epochs=1, min_lr=1e-5, warmup_lr=1e-6)
    base = 1e-3
    head = lr_lambda({"lr_scale": 1.0, "backbone": False}, rec, base, steps_per_epoch=10, total_steps=100)
    back = lr_lambda({"lr_scale": 0.1, "backbone": True}, rec, base * 0.1, steps_per_epoch=10, total_steps=100)
    assert head(0) * base == pytest.approx(1e-6)
    assert head(10) * base == pytest.approx(1e-6 + (base - 1e-6) / 2)  # linear warm-up, per iteration
    assert head(20) == pytest.approx(1.0)
    assert head(60) * base == pytest.approx(1e-5 + (base - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert head(100) * base == pytest.approx(1e-5)
    assert back(0) == back(9) == 0.0 and back(10) > 0  # backbone frozen for the first epoch
    assert back(20) == pytest.approx(head(20))


def _trainer(model, teacher, recipe_over, steps=2):
    """A Trainer over 64 real demo digits, one epoch of ``steps`` optimizer steps."""
    src, idx = load_data("demo").train
    ds = Prepared(src, idx[:64], eval_transform(model))
    rec, _ = build_recipe(model.vitprune_method.default_recipe(), {"epochs": 1, "augment": None, **recipe_over})
    return Trainer(model, teacher, ds, rec, RunSettings(device=torch.device("cpu"), batch_size=64 // steps))


def test_real_steps_change_trained_params_and_leave_frozen_ones_alone():
    teacher = tiny_vit()
    model = vitprune.apply_method(copy.deepcopy(teacher), "dynamicvit", keep_rate=0.7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = _trainer(model, teacher, {"frozen": ["cls_token", "pos_embed", "blocks.0"], "backbone_lr_scale": 0.5,
                                   "freeze_backbone_epochs": 0, "warmup_epochs": 0, "lr": 1e-3,
                                   "lr_batch_ref": 32})
    summary = tr.run()
    assert summary.steps == 2 and summary.finished
    after = model.state_dict()
    for k in ("cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.0.norm1.bias"):
        assert torch.equal(before[k], after[k]), k
    for k in ("blocks.1.attn.qkv.weight", "score_predictor.0.out_conv.4.weight", "head.weight"):
        assert not torch.equal(before[k], after[k]), k
    # the optimizer really holds the lr scales the recipe asked for (peak lr, no warm-up: step 0 is the peak)
    lrs = {(g["backbone"], g["lr_scale"]) for g in tr.optimizer.param_groups}
    assert lrs == {(True, 0.5), (False, 1.0)}
    assert tr.lr == pytest.approx(scaled_lr(tr.recipe, 32)) == pytest.approx(1e-3)


def test_frozen_backbone_phase_moves_only_new_modules():
    teacher = tiny_vit()
    model = vitprune.apply_method(copy.deepcopy(teacher), "dynamicvit", keep_rate=0.7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _trainer(model, teacher, {"freeze_backbone_epochs": 1, "warmup_epochs": 0, "lr": 1e-3}).run()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("score_predictor") for k in changed)


def test_soft_distillation_is_deits_kl_times_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    T = 2.0
    p_t = F.softmax(t / T, -1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert soft_distillation(s, t, T) == pytest.approx(manual.item(), rel=1e-5)
    assert soft_distillation(t, t, T).item() == pytest.approx(0.0, abs=1e-6)
    loss = DistillationLoss(cls_weight=1.0, label_smoothing=0.1, kd_weight=0.5, kd_temperature=T)
    y = torch.tensor([1, 2, 3, 4])
    terms = loss(s, y, t)
    assert terms["cls"].item() == pytest.approx(F.cross_entropy(s, y, label_smoothing=0.1).item())
    assert terms["kd"].item() == pytest.approx(0.5 * manual.item(), rel=1e-5)
    assert set(DistillationLoss(kd_weight=0.0)(s, y, t)) == {"cls"}


def test_method_hooks_progress_and_several_passes_per_step():
    """on_train_progress before every step (EViT's keep-rate schedule) and training_passes with overrides."""
    from vitprune.methods.evit import EViT

    class TwoPassEViT(EViT):  # a real method whose training runs two student passes per step
        name = "evit_two_pass_test"
        seen: list = []
        steps: list = []

        def training_passes(self, step=None):
            return [{"keep_rate": 1.0}, {}]

        def aux_losses(self, model, state, teacher, *, targets=None, step=None):
            TwoPassEViT.seen.append(self.options.keep_rate)
            TwoPassEViT.steps.append((step, step.epoch, targets.shape))
            return {}

    teacher = tiny_vit()
    from vitprune.methods import registry

    registry.register(TwoPassEViT)
    try:
        model = vitprune.apply_method(copy.deepcopy(teacher), "evit_two_pass_test", keep_rate=0.5, shrink_epochs=1.0)
        tr = _trainer(model, teacher, {"warmup_epochs": 0}, steps=2)
        summary = tr.run()
    finally:
        registry._REGISTRY.pop("evit_two_pass_test", None)
    m = model.vitprune_method
    assert TwoPassEViT.seen == [1.0, 0.5, 1.0, 0.5]  # each pass under its own settings, restored afterwards
    # both passes of a step share one step context (epoch 0, then 0.5: two steps per epoch), each step a new one,
    # and the labels of the 32-image micro-batch reach the method's losses
    (c0, e0, y0), (c1, e1, _), (c2, e2, _), (c3, e3, _) = TwoPassEViT.steps
    assert c0 is c1 and c2 is c3 and c0 is not c2 and (e0, e1, e2, e3) == (0.0, 0.0, 0.5, 0.5)
    assert y0 == (32,)
    assert m.options.keep_rate == 0.5
    assert m.train_keep_rate == pytest.approx(m.scheduled_keep_rate(0.5))  # set before the last step (epoch 0.5)
    assert {"pass0/cls", "pass1/cls", "pass0/kd"} <= set(summary.history[0])


def test_the_trainer_hands_labels_to_method_losses():
    """Evo-ViT's assisted class-token loss is a label cross-entropy when the trainer passes the labels (not the KL
    to the teacher it falls back to): a training step's aux_cls equals that CE on the class-token head."""
    from vitprune.methods.evovit import AUX_LABEL_SMOOTHING

    teacher = tiny_vit()
    model = vitprune.apply_method(copy.deepcopy(teacher), "evovit", keep_rate=0.5, head="avg")
    tr = _trainer(model, teacher, {"drop_path": 0.0})
    tr._prepare()
    images, labels = next(iter(torch.utils.data.DataLoader(tr.data, batch_size=8)))
    model.train()
    terms = tr._losses(images, labels, tr._teacher_out(images), model, StepContext(0.0, 1.0))
    with torch.no_grad():  # the same training-mode forward again (no randomness left), for its class-token logits
        model(images)
    cls_logits = model.__dict__.pop("vitprune_state").aux["cls_logits"].float()
    expected = model.vitprune_method.options.aux_cls_weight * F.cross_entropy(
        cls_logits, labels, label_smoothing=AUX_LABEL_SMOOTHING)
    assert terms["aux_cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_every_recipe_flag_of_compress_shows_the_recipe_fields_help():
    """A recipe key's help is declared once, on its ``Recipe`` field; compress's flag shows that text."""
    import typer.main

    from vitprune.cli.main import app
    from vitprune.train.recipe import recipe_help

    command = typer.main.get_command(app).commands["compress"]
    params = {p.name: p for p in command.params}
    helps = recipe_help()
    flags = [k for k in helps if k in params and (params[k].rich_help_panel or "").startswith("Recipe")]
    assert {"lr", "optimizer", "layer_decay", "kd_weight", "frozen", "clip_grad"} <= set(flags)
    for key in flags:
        assert params[key].help.startswith(helps[key]), key
