"""Hugging Face transformers checkpoints (ViT, DeiT, DINOv2) loaded as timm ViTs: the converted model gives the
transformers model's outputs, from a folder and from an offline Hub cache; preprocessing and labels carried over;
methods on top; what does not map is one line; the base model is named by its Hub repo.

Every transformers model here is built in the test from a tiny random config and written by ``save_pretrained``.
"""
from __future__ import annotations

import json

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file
from timm.data import resolve_data_config
from typer.testing import CliRunner

import vitprune
from vitprune.cli.main import app
from vitprune.errors import ModelNotFoundError, UnsupportedModelError
from vitprune.hub import load_model, read_vitprune_section
from vitprune.report.redact import public_model

from .conftest import digits_batch
from .hubcache import populate_from_folder

#: the bound the conversion must meet: |Δ| of the outputs, relative to the transformers outputs' largest magnitude
REL_TOL = 1e-4
#: ImageNet statistics (what the facebook/deit and facebook/dinov2 processors ship)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, num_labels=5)
_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8,
             num_labels=5)

#: name -> (transformers class, config class, config): every family and head the conversion maps
CASES = {
    "vit": ("ViTForImageClassification", "ViTConfig", _VIT),
    "vit-tanh-gelu-no-qkv-bias": ("ViTForImageClassification", "ViTConfig",
                                  dict(_VIT, hidden_act="gelu_new", qkv_bias=False)),
    "vit-backbone": ("ViTModel", "ViTConfig", _VIT),
    "deit": ("DeiTForImageClassification", "DeiTConfig", _VIT),
    "deit-distilled": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", _VIT),
    "deit-backbone": ("DeiTModel", "DeiTConfig", _VIT),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config", _DINO),
    "dinov2-swiglu": ("Dinov2ForImageClassification", "Dinov2Config", dict(_DINO, use_swiglu_ffn=True)),
    "dinov2-registers": ("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                         dict(_DINO, num_register_tokens=3)),
    "dinov2-backbone": ("Dinov2Model", "Dinov2Config", _DINO),
}


def make_hf(case: str, seed: int = 0, **overrides):
    """A transformers model of ``case`` with every tensor drawn at random (LayerScale, tokens and norms included),
    so nothing the conversion misplaces can hide behind an initial value."""
    cls_name, cfg_name, cfg = CASES[case]
    model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**{**cfg, **overrides})).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def save_hf(model, folder, processor=None):
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def hf_outputs(model, x):
    """What the converted timm model must reproduce: the logits of a model with a head timm has, else the token
    sequence after the final norm (timm's ``forward_features``)."""
    with torch.no_grad():
        out = model(x)
    head = type(model).__name__
    if "ForImageClassification" in head and "Dinov2" not in head:
        return "logits", out.logits
    backbone = getattr(model, "dinov2", None) or getattr(model, "dinov2_with_registers", None) or model
    with torch.no_grad():
        return "features", backbone(x).last_hidden_state


def timm_outputs(model, kind, x):
    with torch.no_grad():
        return model(x) if kind == "logits" else model.forward_features(x)


def rel_err(got, ref) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


# --------------------------------------------------------------------------------------------- outputs


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_gives_the_transformers_outputs(case, tmp_path, offline_cache):
    hf = make_hf(case)
    folder = save_hf(hf, tmp_path / case)
    populate_from_folder(offline_cache, f"someone/{case}", folder)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kind, ref = hf_outputs(hf, x)
    for spec in (str(folder), f"hf-hub:someone/{case}"):
        model = load_model(spec)
        assert isinstance(model, timm.models.vision_transformer.VisionTransformer) and not model.training
        got = timm_outputs(model, kind, x)
        assert got.shape == ref.shape, spec
        assert rel_err(got, ref) <= REL_TOL, (spec, rel_err(got, ref))
    if case.startswith("deit-distilled"):  # the two heads, averaged as transformers does
        assert type(model).__name__ == "VisionTransformerDistilled" and model.num_prefix_tokens == 2
    if case == "dinov2-registers":
        assert model.num_reg_tokens == 3 and model.no_embed_class


@pytest.mark.parametrize("case", ["dinov2", "dinov2-registers"])
def test_dinov2_head_is_left_out_and_the_backbone_carries_what_it_reads(case, tmp_path, caplog):
    """DINOv2's classifier reads [class token, mean of the patch tokens]: timm has no such pooling, so the
    backbone loads headless (with a warning) and its tokens give the transformers logits through that head."""
    hf = make_hf(case)
    model = load_model(str(save_hf(hf, tmp_path / case)))
    assert model.num_classes == 0 and "no timm VisionTransformer equivalent" in caplog.text
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(x).logits
        tokens = model.forward_features(x)
        pooled = torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens:].mean(1)], 1)
        got = hf.classifier(pooled)
    assert rel_err(got, ref) <= REL_TOL


@pytest.mark.parametrize("case", ["dinov2", "dinov2-registers"])
@pytest.mark.parametrize("crop", [24, 48])
def test_dinov2_at_another_image_size(case, crop, tmp_path):
    """A processor cropping to another size than the config's: the model is built for the crop, with the position
    embeddings resampled as transformers resamples them for that input (plain bicubic for DINOv2, antialiased
    for DINOv2 with registers)."""
    hf = make_hf(case)
    processor = transformers.BitImageProcessor(size={"shortest_edge": crop + 8}, crop_size={"height": crop,
                                               "width": crop}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    model = load_model(str(save_hf(hf, tmp_path / case, processor)))
    assert model.patch_embed.img_size == (crop, crop)
    x = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(3))
    _, ref = hf_outputs(hf, x)
    assert rel_err(timm_outputs(model, "features", x), ref) <= REL_TOL


def test_layer_norm_eps_is_transformers(tmp_path):
    """ViT's layer-norm epsilon is 1e-12 in transformers (timm's default: 1e-6): the converted model uses it."""
    model = load_model(str(save_hf(make_hf("vit"), tmp_path / "vit")))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-12 for m in norms)


# --------------------------------------------------------------------------------------------- what is carried


def test_preprocessing_and_labels_are_carried_over(tmp_path):
    labels = {0: "cat", 1: "dog", 2: "fox", 3: "owl", 4: "yak"}
    # ViT: squash-resize to 32x32, no crop, bilinear, mean/std 0.5 (ViTImageProcessor)
    vit = save_hf(make_hf("vit", id2label=labels, label2id={v: k for k, v in labels.items()}), tmp_path / "vit",
                  transformers.ViTImageProcessor(size={"height": 32, "width": 32}))
    model = load_model(str(vit))
    assert model.pretrained_cfg["label_names"] == ["cat", "dog", "fox", "owl", "yak"]
    cfg = resolve_data_config(model=model)
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "squash"
    assert cfg["interpolation"] == "bilinear" and list(cfg["mean"]) == [0.5] * 3 and list(cfg["std"]) == [0.5] * 3
    # DeiT: squash to 36x36 then a 32x32 centre crop, bicubic, ImageNet statistics, rescaled by 1/127.5 (a
    # processor whose pixels go to [0, 2]: timm's mean and std are scaled by 255 / 127.5 = 2 to match)
    deit = save_hf(make_hf("deit-distilled"), tmp_path / "deit", transformers.DeiTImageProcessor(
        size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD, rescale_factor=1 / 127.5))
    model = load_model(str(deit))
    assert "label_names" not in model.pretrained_cfg  # transformers' LABEL_0... fillers name nothing
    cfg = resolve_data_config(model=model)
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_mode"] == "squash" and cfg["interpolation"] == "bicubic"
    assert int(32 / cfg["crop_pct"]) == 36
    assert cfg["mean"] == pytest.approx([m / 2 for m in IMAGENET_MEAN]) and cfg["std"] == pytest.approx(
        [s / 2 for s in IMAGENET_STD])
    # without preprocessor_config.json: the config's image size and the model type's processor defaults
    # (BitImageProcessor for DINOv2: OpenAI CLIP statistics, bicubic, shortest edge then crop)
    model = load_model(str(save_hf(make_hf("dinov2-backbone"), tmp_path / "dino")))
    cfg = resolve_data_config(model=model)
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_mode"] == "center" and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == pytest.approx(timm.data.OPENAI_CLIP_MEAN)


# --------------------------------------------------------------------------------------------- methods on top


@pytest.mark.parametrize("case", ["vit", "deit-distilled", "dinov2-registers"])
def test_evit_on_a_converted_model(case, tmp_path):
    model = load_model(str(save_hf(make_hf(case), tmp_path / case)))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        dense = model(x)
        same = vitprune.apply_method(load_model(str(tmp_path / case)), "evit", keep_rate=1.0).eval()(x)
        assert torch.equal(same, dense)  # nothing pruned: the converted dense model exactly
        # a 32-px image in 8-px patches has 16; keep 0.7 drops some at EViT's blocks
        pruned = vitprune.apply_method(load_model(str(tmp_path / case)), "evit", keep_rate=0.7).eval()
        out = pruned(x)
    assert out.shape == dense.shape and torch.isfinite(out).all()


def test_saved_converted_model_reloads_as_timm_with_the_repo_as_base(tmp_path, offline_cache):
    populate_from_folder(offline_cache, "google/vit-tiny-test", save_hf(make_hf("vit"), tmp_path / "hf"))
    model = vitprune.apply_method(load_model("hf-hub:google/vit-tiny-test"), "evit", keep_rate=0.7)
    out = vitprune.save(model, tmp_path / "saved")
    section = read_vitprune_section(out)
    assert section["base_model"] == "hf-hub:google/vit-tiny-test"
    card = (out / "README.md").read_text()
    assert "base_model: google/vit-tiny-test" in card
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_base_patch16_224" and config["model_args"]["embed_dim"] == 32
    back = vitprune.load(out)
    x = digits_batch(4)
    with torch.no_grad():
        ref, got = model.eval()(x), back(x)
    # the saved config names the timm architecture, whose layer norms use timm's epsilon (1e-6, not 1e-12)
    assert rel_err(got, ref) <= REL_TOL


@pytest.mark.slow
@pytest.mark.parametrize("case", ["deit-distilled", "dinov2-registers"])
def test_profile_cli_takes_a_transformers_folder_and_repo(case, tmp_path, offline_cache):
    """A command given the folder or its hf-hub: name: EViT at keep rate 0.5 drops half of the 16 patch tokens
    (32-px images, 8-px patches) from its first pruning block on, so it counts fewer GMACs than the dense model."""
    folder = save_hf(make_hf(case), tmp_path / case)
    populate_from_folder(offline_cache, f"someone/{case}", folder)
    for spec in (str(folder), f"hf-hub:someone/{case}"):
        res = CliRunner().invoke(app, ["profile", spec, "--method", "evit", "--keep-rate", "0.5", "--no-speed",
                                       "--json"])
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["input_size"] == [3, 32, 32] and 0 < report["gmacs_ratio"] < 1, spec


# --------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize("cfg_name", ["BeitConfig", "SwinConfig", "ConvNextConfig", "Siglip2VisionConfig"])
def test_architectures_that_do_not_map_are_one_line(cfg_name, tmp_path):
    folder = tmp_path / cfg_name
    getattr(transformers, cfg_name)().save_pretrained(folder)
    with pytest.raises(UnsupportedModelError) as e:
        load_model(str(folder), pretrained=False)
    assert "\n" not in str(e.value) and "ViT (model_type vit), DeiT" in str(e.value) and "DINOv2" in str(e.value)
    res = CliRunner().invoke(app, ["profile", str(folder), "--no-weights", "--no-speed"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and res.output.startswith("Error: ")


def test_heads_and_weights_that_do_not_fit_are_one_line(tmp_path):
    hf = transformers.ViTForMaskedImageModeling(transformers.ViTConfig(**_VIT))
    hf.save_pretrained(tmp_path / "mim")
    with pytest.raises(UnsupportedModelError, match="ViTForImageClassification"):
        load_model(str(tmp_path / "mim"))
    # a checkpoint whose tensors are not those of its config
    folder = save_hf(make_hf("vit"), tmp_path / "vit")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    # one more layer: its 16 tensors (query, key, value, output, two norms, two MLP layers; weight and bias each)
    with pytest.raises(ModelNotFoundError, match=r"missing 16 tensors \(e\.g\. vit\.encoder\.layer\.2\."):
        load_model(str(folder))


def test_a_config_without_architectures_takes_the_head_its_weights_have(tmp_path):
    for case in ("vit", "deit-distilled", "vit-backbone"):
        hf = make_hf(case)
        folder = save_hf(hf, tmp_path / case)
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "architectures"}))
        x = torch.randn(2, 3, 32, 32)
        kind, ref = hf_outputs(hf, x)
        assert rel_err(timm_outputs(load_model(str(folder)), kind, x), ref) <= REL_TOL, case


def test_pytorch_model_bin_is_read_as_tensors_when_there_is_no_safetensors(tmp_path):
    hf = make_hf("deit-distilled")
    folder = tmp_path / "bin"
    hf.save_pretrained(folder)
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    x = torch.randn(2, 3, 32, 32)
    _, ref = hf_outputs(hf, x)
    assert rel_err(timm_outputs(load_model(str(folder)), "logits", x), ref) <= REL_TOL


# --------------------------------------------------------------------------------------------- base model


def test_base_model_of_a_local_transformers_folder(tmp_path):
    folder = save_hf(make_hf("vit"), tmp_path / "vit")
    assert public_model(str(folder)) == "ViTForImageClassification (local weights)"
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "google/vit-base-patch16-224"}))
    assert public_model(str(folder)) == "hf-hub:google/vit-base-patch16-224"
    (folder / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "/home/someone/runs/vit"}))
    assert public_model(str(folder)) == "ViTForImageClassification (local weights)"
    model = load_model(str(folder))
    assert model.vitprune_base_model == "ViTForImageClassification (local weights)"


# --------------------------------------------------------------------------------------------- end to end


def demo_as_transformers(folder):
    """The bundled demo teacher (a timm ViT) written as a transformers ViTForImageClassification with its image
    processor: the reverse of the conversion, tensor by tensor."""
    demo = load_model("demo")
    sd = demo.state_dict()
    dim, depth = demo.embed_dim, len(demo.blocks)
    cfg = transformers.ViTConfig(
        hidden_size=dim, num_hidden_layers=depth, num_attention_heads=demo.blocks[0].attn.num_heads,
        intermediate_size=demo.blocks[0].mlp.fc1.out_features, image_size=32, patch_size=4,
        layer_norm_eps=1e-6, architectures=["ViTForImageClassification"], id2label=dict(enumerate(demo.pretrained_cfg["label_names"])),
        label2id={n: i for i, n in enumerate(demo.pretrained_cfg["label_names"])})
    state = {"vit.embeddings.cls_token": sd["cls_token"], "vit.embeddings.position_embeddings": sd["pos_embed"],
             "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
             "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}
    for p in ("weight", "bias"):
        state[f"vit.embeddings.patch_embeddings.projection.{p}"] = sd[f"patch_embed.proj.{p}"]
        for i in range(depth):
            layer, blk = f"vit.encoder.layer.{i}.", f"blocks.{i}."
            for name, t in zip(("query", "key", "value"), sd[f"{blk}attn.qkv.{p}"].chunk(3)):
                state[f"{layer}attention.attention.{name}.{p}"] = t
            for theirs, ours in (("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                                 ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                                 ("output.dense", "mlp.fc2")):
                state[f"{layer}{theirs}.{p}"] = sd[f"{blk}{ours}.{p}"]
    # written in the Hub's tensor layout (what save_pretrained writes), then read back by transformers itself
    cfg.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    mean, std = demo.pretrained_cfg["mean"], demo.pretrained_cfg["std"]
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(mean),
                                   image_std=list(std)).save_pretrained(folder)
    hf = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    return folder, demo, hf


@pytest.mark.slow
def test_compress_a_transformers_repo_through_the_cli(tmp_path, offline_cache):
    folder, demo, hf = demo_as_transformers(tmp_path / "demo-hf")
    x = digits_batch(8)
    with torch.no_grad():
        assert rel_err(hf(x).logits, demo(x)) <= REL_TOL  # the reverse mapping above is right
    populate_from_folder(offline_cache, "someone/demo-vit", folder)
    runner = CliRunner()
    # the converted dense model reads the digits as the demo teacher does: its val top-1 (97.79 %, README)
    res = runner.invoke(app, ["eval", "hf-hub:someone/demo-vit", "--data", "demo", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top1"] == pytest.approx(97.79, abs=0.01)
    out = tmp_path / "out"
    res = runner.invoke(app, ["compress", "hf-hub:someone/demo-vit", "-m", "evit", "--keep-rate", "0.7",
                              "--epochs", "0.2", "--data", "demo", "-o", str(out), "--profile-batch-size", "8",
                              "--quiet"])
    assert res.exit_code == 0, res.output
    section = read_vitprune_section(out)
    assert section["base_model"] == "hf-hub:someone/demo-vit" and section["method"] == "evit"
    assert section["metrics"]["dense_top1"] == pytest.approx(97.79, abs=0.01)
    assert "base_model: someone/demo-vit" in (out / "README.md").read_text()
    assert json.loads((out / "report.json").read_text())["base_model"] == "hf-hub:someone/demo-vit"
    assert vitprune.load(out).vitprune_method.name == "evit"



# --------------------------------------------------------------------------------------------- files as data


HOSTILE = """import pathlib
pathlib.Path({marker!r}).write_text("ran")
"""


class _Planted:
    """A pickle that writes a file when unpickled without ``weights_only``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_in_a_transformers_folder_is_never_run(tmp_path):
    """A repo may ship its own modeling code (``auto_map`` + ``modeling_*.py``, what ``trust_remote_code`` runs) or a
    pickle: the conversion reads config.json and tensors only, so neither runs."""
    hf = make_hf("vit")
    folder = save_hf(hf, tmp_path / "vit")
    marker = tmp_path / "ran"
    for name in ("modeling_evil.py", "configuration_evil.py", "__init__.py"):
        (folder / name).write_text(HOSTILE.format(marker=str(marker)))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    x = torch.randn(2, 3, 32, 32)
    _, ref = hf_outputs(hf, x)
    assert rel_err(timm_outputs(load_model(str(folder)), "logits", x), ref) <= REL_TOL
    res = CliRunner().invoke(app, ["profile", str(folder), "--no-speed", "--json"])
    assert res.exit_code == 0, res.output
    assert not marker.exists()
    # a pytorch_model.bin that is a pickle with a payload (and no model.safetensors): refused in one line, not run
    (folder / "model.safetensors").unlink()
    torch.save({"vit.embeddings.cls_token": _Planted(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match="not a readable PyTorch checkpoint"):
        load_model(str(folder))
    res = CliRunner().invoke(app, ["profile", str(folder), "--no-speed"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and res.output.startswith("Error: ")
    assert not marker.exists()


NO_TRANSFORMERS = """
import sys
sys.modules["transformers"] = None  # any import of transformers now fails
import torch
from vitprune.hub import load_model
import vitprune.hub.transformers
try:
    import transformers
except ImportError:
    pass
else:
    raise SystemExit("transformers was importable")
model = load_model(sys.argv[1])
with torch.no_grad():
    got = model(torch.load(sys.argv[2], weights_only=True))
torch.save(got, sys.argv[3])
assert not any(name == "transformers" or name.startswith("transformers.") for name, m in sys.modules.items()
               if m is not None)
"""


@pytest.mark.slow
def test_conversion_does_not_need_transformers(tmp_path):
    """transformers writes the folder here; a process in which transformers cannot be imported converts it."""
    import subprocess
    import sys

    hf = make_hf("deit-distilled")
    folder = save_hf(hf, tmp_path / "deit")
    x = torch.randn(2, 3, 32, 32)
    _, ref = hf_outputs(hf, x)
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "convert.py"
    script.write_text(NO_TRANSFORMERS)
    proc = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rel_err(torch.load(tmp_path / "y.pt", weights_only=True), ref) <= REL_TOL
