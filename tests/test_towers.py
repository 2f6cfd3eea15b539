"""CLIP and SigLIP vision towers saved by transformers load as timm ViTs with transformers' own outputs (pooled
embedding, projected image embedding, last hidden state, class scores), read as data; every method runs on them
(identity at its no-op setting); a headless tower compresses by feature distillation and ``eval`` reports the
cosine agreement with the dense tower.

Every transformers model here is built in the test from a tiny random config and written by ``save_pretrained``;
inputs are real photos (scikit-image) and real digits.
"""
from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
import transformers
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import vitprune
from vitprune.cli.main import app
from vitprune.errors import UnsupportedModelError
from vitprune.data import build_split, eval_transform
from vitprune.hub import load_model
from vitprune.methods import dense_copy
from vitprune.methods.registry import get_method_class, method_names
from vitprune.train.losses import feature_output

from .conftest import digits_batch, photo_batch
from .hubcache import populate_from_folder

#: the bound the conversion must meet: |delta| of the outputs, relative to the transformers outputs' largest magnitude
REL_TOL = 1e-4

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
               patch_size=8)
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


def _configs(case: str):
    """(transformers class name, config) of ``case``."""
    clip_v = transformers.CLIPVisionConfig(**_VISION, projection_dim=16)
    siglip_v = transformers.SiglipVisionConfig(**_VISION)
    return {
        "clip-vision": ("CLIPVisionModel", clip_v),
        "clip-projection": ("CLIPVisionModelWithProjection", clip_v),
        "clip-full": ("CLIPModel", transformers.CLIPConfig(vision_config=clip_v.to_dict(), text_config=_TEXT,
                                                           projection_dim=16)),
        "siglip-vision": ("SiglipVisionModel", siglip_v),
        "siglip-vision-no-head": ("SiglipVisionModel", transformers.SiglipVisionConfig(**_VISION,
                                                                                       vision_use_head=False)),
        "siglip-full": ("SiglipModel", transformers.SiglipConfig(vision_config=siglip_v.to_dict(),
                                                                 text_config=dict(_TEXT, vocab_size=64))),
        "siglip-classifier": ("SiglipForImageClassification", transformers.SiglipConfig(
            vision_config=siglip_v.to_dict(), text_config=dict(_TEXT, vocab_size=64), num_labels=5)),
    }[case]


CASES = ["clip-vision", "clip-projection", "clip-full", "siglip-vision", "siglip-vision-no-head", "siglip-full",
         "siglip-classifier"]


def make_hf(case: str, seed: int = 0):
    """A transformers model of ``case`` with every tensor drawn at random (norms, probe, tokens included)."""
    cls_name, cfg = _configs(case)
    model = getattr(transformers, cls_name)(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def hf_reference(model, x, **kw):
    """What the converted model's forward must give (the pooled embedding, the image embedding, the class scores)
    and its token sequence after the final norm (timm's ``forward_features``), from transformers' own modules."""
    name = type(model).__name__
    vision = model.vision_model if hasattr(model, "vision_model") else model
    with torch.no_grad():
        out = vision(pixel_values=x, **kw)
        tokens = out.last_hidden_state
        if name.startswith("CLIP"):  # CLIP's last_hidden_state is before post_layernorm, which only its pool reads
            post = vision.post_layernorm if hasattr(vision, "post_layernorm") else vision.vision_model.post_layernorm
            tokens = post(tokens)
        if name == "CLIPVisionModelWithProjection":
            pooled = model(pixel_values=x, **kw).image_embeds
        elif name == "CLIPModel":
            pooled = model.visual_projection(out.pooler_output)
        elif name == "SiglipForImageClassification":
            pooled = model(pixel_values=x, **kw).logits
        elif out.pooler_output is None:  # SigLIP without its head: no pooled output in transformers
            pooled = out.last_hidden_state.mean(1)  # the converted model's stated pooling
        else:
            pooled = out.pooler_output
    return pooled, tokens


def rel_err(got, ref) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


def photos(size: int = 32) -> torch.Tensor:
    return photo_batch(size)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case -> (transformers model, its save_pretrained folder)."""
    root = tmp_path_factory.mktemp("towers")
    out = {}
    for case in CASES:
        hf = make_hf(case)
        hf.save_pretrained(root / case)
        out[case] = (hf, root / case)
    return out


# --------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("case", CASES)
def test_tower_gives_transformers_outputs(case, saved, caplog):
    hf, folder = saved[case]
    model = load_model(str(folder))
    assert isinstance(model, timm.models.vision_transformer.VisionTransformer) and not model.training
    x = torch.cat([photos(32), digits_batch(2)])
    ref, ref_tokens = hf_reference(hf, x)
    with torch.no_grad():
        got, tokens = model(x), model.forward_features(x)
    assert got.shape == ref.shape and rel_err(got, ref) <= REL_TOL, rel_err(got, ref)
    # SigLIP has no class token: its tokens are the patches; CLIP's class token comes first
    assert tokens.shape == ref_tokens.shape and rel_err(tokens, ref_tokens) <= REL_TOL
    clip = case.startswith("clip")
    assert model.num_prefix_tokens == (1 if clip else 0)
    assert isinstance(model.norm_pre, torch.nn.LayerNorm) == clip  # CLIP's pre_layrnorm
    assert (model.attn_pool is not None) == (case in ("siglip-vision", "siglip-full"))  # the attention-pool head
    # what the output is: an embedding (no classifier) except SigLIP's image classifier
    assert feature_output(model) == (case != "siglip-classifier")
    if case in ("clip-projection", "clip-full"):  # the bias-free projection is timm's head, its bias held at zero
        assert model.num_classes == 16 and torch.equal(model.head.bias, torch.zeros(16))


@pytest.mark.parametrize("case", ["clip-full", "siglip-full"])
def test_full_image_text_repo_from_an_offline_hub_cache(case, saved, offline_cache):
    """``hf-hub:org/name`` of a full CLIPModel / SiglipModel repo (what openai/clip-vit-base-patch32 and
    google/siglip-base-patch16-224 are): the vision tower, from the Hub cache, with the repo as its source."""
    hf, folder = saved[case]
    populate_from_folder(offline_cache, f"someone/{case}", folder)
    model = load_model(f"hf-hub:someone/{case}")
    x = photos(32)
    ref, _ = hf_reference(hf, x)
    with torch.no_grad():
        assert rel_err(model(x), ref) <= REL_TOL
    assert model.vitprune_source == f"hf-hub:someone/{case}"


def test_clip_at_the_processors_size_interpolates_as_transformers(saved, tmp_path):
    """A CLIPImageProcessor that crops 48 px (the config says 32): position embeddings resampled once, as
    transformers' ``interpolate_pos_encoding`` does at that size; preprocessing carried over."""
    hf, folder = saved["clip-projection"]
    hf.save_pretrained(tmp_path / "m")
    transformers.CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}) \
        .save_pretrained(tmp_path / "m")
    model = load_model(str(tmp_path / "m"))
    cfg = model.pretrained_cfg
    assert list(cfg["input_size"]) == [3, 48, 48] and cfg["crop_mode"] == "center" and cfg["interpolation"] == \
        "bicubic"
    assert cfg["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])  # OpenAI's statistics, as saved
    x = photos(48)
    ref, _ = hf_reference(hf, x, interpolate_pos_encoding=True)
    with torch.no_grad():
        assert rel_err(model(x), ref) <= REL_TOL


def test_siglip_preprocessing_is_read(saved, tmp_path):
    hf, _ = saved["siglip-full"]
    hf.save_pretrained(tmp_path / "m")
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "m")
    cfg = load_model(str(tmp_path / "m")).pretrained_cfg
    # SiglipImageProcessor: a square bicubic resize, no crop, mean and std 0.5 (rescale 1/255 folded in)
    assert list(cfg["input_size"]) == [3, 32, 32] and cfg["crop_mode"] == "squash" and cfg["crop_pct"] == 1.0
    assert cfg["interpolation"] == "bicubic" and cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.5] * 3


@pytest.mark.parametrize("case", ["clip-vision", "siglip-vision"])
def test_checkpoints_with_the_vision_model_prefix(case, saved, tmp_path):
    """Older transformers saved the standalone towers' tensors under ``vision_model.``: read either way."""
    hf, folder = saved[case]
    out = tmp_path / case
    out.mkdir()
    (out / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    assert not any(k.startswith("vision_model.") for k in tensors)  # this transformers writes them bare
    save_file({f"vision_model.{k}": v for k, v in tensors.items()}, str(out / "model.safetensors"))
    x = photos(32)
    ref, _ = hf_reference(hf, x)
    with torch.no_grad():
        assert rel_err(load_model(str(out))(x), ref) <= REL_TOL


def test_siglip_without_its_head_says_how_it_pools(saved, caplog):
    _, folder = saved["siglip-vision-no-head"]
    with caplog.at_level("WARNING", logger="vitprune"):
        model = load_model(str(folder))
    assert model.global_pool == "avg" and "averaging" in caplog.text


def test_pickled_full_clip_is_read_as_tensors(saved, tmp_path):
    """A CLIPModel repo with pytorch_model.bin only: tensors read with weights_only, the text tower dropped."""
    hf, folder = saved["clip-full"]
    out = tmp_path / "bin"
    out.mkdir()
    (out / "config.json").write_text((folder / "config.json").read_text())
    torch.save(load_file(str(folder / "model.safetensors")), out / "pytorch_model.bin")
    x = photos(32)
    ref, _ = hf_reference(hf, x)
    with torch.no_grad():
        assert rel_err(load_model(str(out))(x), ref) <= REL_TOL


@pytest.mark.parametrize("model_type, config", [
    ("siglip2", "Siglip2VisionConfig"), ("siglip2", "Siglip2Config"), ("clipseg", "CLIPSegVisionConfig"),
])
def test_unsupported_towers_are_refused_naming_what_works(model_type, config, tmp_path):
    getattr(transformers, config)().save_pretrained(tmp_path / "m")
    with pytest.raises(UnsupportedModelError) as e:
        load_model(str(tmp_path / "m"), pretrained=False)
    msg = str(e.value)
    assert "\n" not in msg and "clip_vision_model" in msg and "siglip_vision_model" in msg and "ViT" in msg
    if model_type == "siglip2":  # why, and where SigLIP 2 does load
        assert "NaFlex" in msg and "fixed-resolution checkpoints" in msg and "saved as siglip" in msg


def test_clip_image_classifier_is_refused_naming_the_towers(tmp_path):
    hf = transformers.CLIPForImageClassification(transformers.CLIPConfig(
        vision_config=transformers.CLIPVisionConfig(**_VISION).to_dict(), text_config=_TEXT, num_labels=3))
    hf.save_pretrained(tmp_path / "m")
    with pytest.raises(UnsupportedModelError, match="of clip vitprune converts CLIPModel"):
        load_model(str(tmp_path / "m"))


# --------------------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("case", ["clip-projection", "siglip-vision"])
@pytest.mark.parametrize("name", method_names())
def test_every_method_is_identity_at_its_no_op_setting_on_a_tower(name, case, saved):
    model = load_model(str(saved[case][1]))
    x = photos(32)
    patched = vitprune.apply_method(copy.deepcopy(model), name, **get_method_class(name).noop_options).eval()
    with torch.no_grad():
        assert torch.equal(patched(x), model(x))
    # and at its default setting (ToMe's default r of 13 is for 196 patches, more than these 16: r=3): a finite
    # output of the same shape
    with torch.no_grad():
        y = vitprune.apply_method(copy.deepcopy(model), name, **({"r": 3} if name == "tome" else {})).eval()(x)
    assert y.shape == model(x).shape and torch.isfinite(y).all()


# --------------------------------------------------------------------------------------------- headless compress


def test_feature_distillation_loss_is_the_cosine_distance():
    from vitprune.train.losses import DistillationLoss

    s, t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    terms = DistillationLoss(cls_weight=1.0, kd_weight=0.5, features=True)(s, torch.zeros(2, dtype=torch.long), t)
    # 1 - cos: 1 - 1/sqrt(2) for the first pair, 0 for the second (same direction); mean, times kd_weight 0.5
    assert set(terms) == {"feat"} and terms["feat"].item() == pytest.approx(0.5 * (1 - 2 ** -0.5) / 2)


@pytest.mark.slow
def test_compress_a_headless_clip_tower_then_eval_reports_cosine_agreement(saved, tmp_path):
    _, folder = saved["clip-vision"]
    out = tmp_path / "out"
    # EViT keeps half of the 16 patches from the first block's MLP on (the second block sees 8 + the class token
    # and the fused token)
    res = CliRunner().invoke(app, ["compress", str(folder), "-m", "evit", "--keep-rate", "0.5", "--drop-loc", "0",
                                   "--data", "demo", "--epochs", "0.25",
                                   "-o", str(out), "--no-speed", "--profile-batch-size", "8", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "cosine to teacher" in res.output and "top-1" not in res.output  # the table and the closing line
    assert "| cosine to teacher | 1.0000 |" in (out / "README.md").read_text()  # the card: the teacher's own is 1
    report = json.loads((out / "report.json").read_text())
    hist = report["train"]["history"]
    assert hist[-1]["feat"] > 0 and "cls" not in hist[-1] and "kd" not in hist[-1]  # the feature term only
    assert "val_cosine" in hist[-1] and -1 <= hist[-1]["val_cosine"] <= 1
    student = load_model(str(out))
    assert student.vitprune_method.name == "evit" and student.num_classes == 0
    res = CliRunner().invoke(app, ["eval", str(out), "--data", "demo", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["top1"] is None and 0 < info["cosine"] <= 1 and info["images"] > 0
    # the agreement is the mean cosine similarity of the compressed and dense towers' embeddings on the val images
    val = build_split("demo", "val", eval_transform(student))
    x = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(student.eval()(x), dense_copy(student).eval()(x), dim=-1)
    assert len(val) == info["images"] and cos.mean().item() == pytest.approx(info["cosine"], abs=1e-5)
    assert info["cosine"] < 1 and info["reference"] == "dense copy"  # EViT dropped tokens: not the dense output
    # against the original tower instead of the fine-tuned weights without the method
    res = CliRunner().invoke(app, ["eval", str(out), "--data", "demo", "--reference", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(student(x), load_model(str(folder))(x), dim=-1)
    assert json.loads(res.output)["cosine"] == pytest.approx(cos.mean().item(), abs=1e-5)
    res = CliRunner().invoke(app, ["eval", str(out), "--data", "demo"])
    assert res.exit_code == 0 and "cosine" in res.output


def test_an_embedding_head_stays_an_embedding_through_save_and_load(saved, tmp_path):
    """CLIP's projection is timm's head (512 outputs on the Hub models) yet no classifier: saved by vitprune, with a
    method or without, it loads back as an embedding model; a new head makes it a classifier."""
    from vitprune.compression import _replace_head

    model = load_model(str(saved["clip-projection"][1]))
    assert feature_output(model) and model.num_classes == 16
    for name, m in (("dense", model), ("evit", vitprune.apply_method(copy.deepcopy(model), "evit"))):
        vitprune.save(m, tmp_path / name)
        again = load_model(str(tmp_path / name))
        assert feature_output(again) and again.num_classes == 16, name
        assert json.loads((tmp_path / name / "config.json").read_text())["vitprune"]["output"] == "embedding"
    _replace_head(model, ["a", "b"])
    assert not feature_output(model)


@pytest.mark.slow
def test_a_siglip_tower_compresses_on_one_unlabelled_class_folder(saved, tmp_path):
    """The labels of a headless model are not used, so one folder of images is enough (a classifier needs two);
    DynamicViT on SigLIP's attention-pooled embedding, through the library."""
    from .test_train_utils import digits_folder

    data = digits_folder(tmp_path / "imgs", per_class=16, val_per_class=4, classes=(3,))
    res = vitprune.compress(str(saved["siglip-full"][1]), "dynamicvit", data=str(data), output=str(tmp_path / "out"),
                            epochs=1, batch_size=8, speed=False, profile_batch_size=8)
    assert res.finished and res.metrics["top1"] is None and 0 < res.metrics["cosine"] <= 1
    assert "feat" in res.report["train"]["history"][-1] and res.report["dense"]["cosine"] == 1.0
