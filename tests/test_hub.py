"""Model loading (timm names, hf-hub:, folders, demo, offline cache) and the saved-folder format."""
from __future__ import annotations

import json
import os

import pytest
import timm
import torch
from safetensors.torch import save_file

import vitprune
from vitprune.errors import ModelNotFoundError, OutputFolderError, UnsupportedModelError
from vitprune.hub import load_model

from .conftest import digits_batch, make_vit
from .test_train_utils import same_weights
from .hubcache import populate, populate_from_folder


def test_timm_name_loads_weights_from_offline_cache(offline_cache):
    ref = timm.create_model("test_vit.r160_in1k", pretrained=False)
    save_file(ref.state_dict(), str(offline_cache / "w.safetensors"))
    populate(offline_cache, "timm/test_vit.r160_in1k", {"model.safetensors": offline_cache / "w.safetensors"})
    model = load_model("test_vit.r160_in1k")
    assert not model.training
    for (k, a), (_, b) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_hf_hub_timm_repo_and_vitprune_repo_from_offline_cache(offline_cache, tmp_path):
    dense = make_vit()
    # a timm-format repo (config.json + model.safetensors written by timm's own exporter)
    timm.models.save_for_hf(dense, str(tmp_path / "timm-repo"), safe_serialization=True)
    populate_from_folder(offline_cache, "someone/tiny-vit", tmp_path / "timm-repo")
    loaded = load_model("hf-hub:someone/tiny-vit")
    x = digits_batch(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), dense(x))
    # a vitprune-saved compressed repo comes back with its method
    comp = vitprune.apply_method(make_vit(seed=1), "evit", keep_rate=0.6)
    vitprune.save(comp, tmp_path / "vp-repo")
    populate_from_folder(offline_cache, "someone/tiny-vit-evit", tmp_path / "vp-repo")
    back = vitprune.load("hf-hub:someone/tiny-vit-evit")
    assert back.vitprune_method.name == "evit" and back.vitprune_method.options.keep_rate == 0.6
    with torch.no_grad():
        assert torch.equal(back(x), comp(x))


def test_not_cached_while_offline_is_a_clear_error(offline_cache):
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        load_model("hf-hub:nobody/missing-model")
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache") as info:
        load_model("deit_tiny_patch16_224")  # weights not cached: the architecture alone needs none
    assert "architecture-only run" in str(info.value) and "--no-weights (pretrained=False in Python)" in str(info.value)
    assert load_model("deit_tiny_patch16_224", pretrained=False).patch_embed.num_patches == 196  # (224 / 16) ** 2


def test_local_timm_folder_and_missing_folder(tmp_path):
    dense = make_vit()
    timm.models.save_for_hf(dense, str(tmp_path / "plain"), safe_serialization=True)
    model = load_model(str(tmp_path / "plain"))
    x = digits_batch(2)
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_not_a_vit_and_unknown_name():
    with pytest.raises(UnsupportedModelError, match="not a Vision Transformer"):
        load_model("resnet18", pretrained=False)
    with pytest.raises(ModelNotFoundError, match="Did you mean deit_small_patch16_224"):
        load_model("deit_smal_patch16_224", pretrained=False)


def test_no_weights_builds_architecture_without_download(offline_cache):
    model = load_model("deit_tiny_patch16_224", pretrained=False)
    assert model.embed_dim == 192 and len(model.blocks) == 12


def test_save_format_is_a_hub_repo_and_round_trips_bit_exact(tmp_path):
    dense = make_vit()
    folder = vitprune.save(dense, tmp_path / "out", base_model="tiny", metrics={"val_top1": 12.5})
    # the Hub repo's files at the top level; vitprune's bookkeeping (versions, lock) hidden in .vitprune/
    assert sorted(p.name for p in folder.iterdir()) == [".vitprune", "README.md", "config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    for key in ("architecture", "num_classes", "pretrained_cfg", "model_args"):
        assert key in cfg
    section = cfg["vitprune"]
    assert section["method"] is None and section["base_model"] == "tiny"
    assert section["version"] == vitprune.__version__ and section["metrics"] == {"val_top1": 12.5}
    # plain timm reads a dense vitprune folder
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True)
    back = vitprune.load(folder)
    x = digits_batch(4)
    with torch.no_grad():
        ref = dense(x)
        assert torch.equal(back(x), ref) and torch.equal(plain(x), ref)
    assert oct(os.stat(folder / "model.safetensors").st_mode & 0o044) != "0o0"  # readable by others per umask


def test_failed_save_keeps_the_previous_model(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    vitprune.save(make_vit(seed=1), folder)
    (folder / "checkpoint-last.pt.keep").write_text("training state")  # a file the save does not own
    real_replace = os.replace

    def failing_replace(src, dst):  # the disk fills up when the save switches to the new version
        if os.path.basename(dst) == "current":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputFolderError, match="cannot save into .*: No space left on device"):
        vitprune.save(make_vit(seed=2), folder)
    monkeypatch.setattr(os, "replace", real_replace)
    ref = make_vit(seed=1).state_dict()
    assert same_weights(vitprune.load(folder).state_dict(), ref)  # still the old model
    assert (folder / "checkpoint-last.pt.keep").read_text() == "training state"
    assert len(list((folder / ".vitprune" / "versions").iterdir())) == 1  # the failed save's staging is gone
    vitprune.save(make_vit(seed=2), folder)  # a later save completes normally
    ref = make_vit(seed=2).state_dict()
    assert same_weights(vitprune.load(folder).state_dict(), ref)


def test_weights_that_do_not_match_config_are_refused(tmp_path):
    folder = vitprune.save(make_vit(), tmp_path / "out")
    save_file({"cls_token": torch.zeros(1, 1, 48)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelNotFoundError, match="do not match its config"):
        vitprune.load(folder)
