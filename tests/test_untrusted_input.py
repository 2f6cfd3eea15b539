"""Files and names other people made are data: every bad one is one line (`Error: ...`, exit 1, no traceback),
checked before anything is allocated; and file names or user strings that look like rich markup are printed as
they are instead of crashing the command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vitprune
from vitprune.cli.main import app
from vitprune.errors import ModelNotFoundError, UnsupportedModelError, VitpruneError
from vitprune.hub import load_model

from .conftest import make_vit
from .test_train_utils import corrupt_png, digits_folder

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A real saved model: the 2-block tiny ViT every case below spoils one way."""
    return vitprune.save(vitprune.apply_method(make_vit(depth=2), "evit", keep_rate=0.7, drop_loc=[1]),
                         tmp_path_factory.mktemp("good") / "model")


def spoiled(good: Path, dst: Path, *, config=None, weights: bytes | None = None) -> Path:
    """A plain copy of ``good`` with its config.json (a dict to edit, or raw bytes) or weights replaced."""
    dst.mkdir()
    for name in ("config.json", "model.safetensors", "README.md"):
        (dst / name).write_bytes((good / name).read_bytes())
    if callable(config):
        cfg = json.loads((good / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    elif config is not None:
        (dst / "config.json").write_bytes(config)
    if weights is not None:
        (dst / "model.safetensors").write_bytes(weights)
    return dst


def one_line(res) -> str:
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


CASES = {
    # name: (how the folder is spoiled, what the one line says)
    "truncated weights": (dict(weights="half"), "model.safetensors is damaged or truncated"),
    "empty weights": (dict(weights=b""), "model.safetensors is damaged or truncated"),
    "not JSON": (dict(config=b"{'architecture': oops"), "config.json is not valid JSON"),
    "binary config": (dict(config=b"\xff\xfe\x00garbage"), "config.json is not valid JSON"),
    "JSON list": (dict(config=b"[1, 2, 3]"), "config.json holds a JSON list, not an object"),
    "no architecture": (dict(config=lambda c: c.pop("architecture")), "names no architecture"),
    "not a ViT": (dict(config=lambda c: c.update(architecture="resnet18", model_args={})),
                  "is a ResNet, not a Vision Transformer"),
    "unknown architecture": (dict(config=lambda c: c.update(architecture="vit_from_the_future")),
                             "names architecture 'vit_from_the_future', which this timm does not know"),
    "depth a word": (dict(config=lambda c: c["model_args"].update(depth="six")),
                     "depth must be an integer from 1 to 256, got 'six'"),
    "absurd width": (dict(config=lambda c: c["model_args"].update(embed_dim=10**9)),
                     "embed_dim must be an integer from 1 to 16384, got 1000000000"),
    "model_args a string": (dict(config=lambda c: c.update(model_args="big")), "model_args must be an object"),
    "unknown argument": (dict(config=lambda c: c["model_args"].update(warp_drive=True)),
                         "model_args 'warp_drive' is not a setting vitprune passes to timm"),
    "shape not in the file": (dict(config=lambda c: c["model_args"].update(embed_dim=96)),
                              "do not match its config: cls_token is [1, 1, 48] in model.safetensors, [1, 1, 96]"),
    "method a number": (dict(config=lambda c: c["vitprune"].update(method=5)),
                        "the vitprune section must be an object with a method name and options"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_spoiled_folder_is_one_line(case, good, tmp_path):
    how, message = CASES[case]
    if how.get("weights") == "half":
        data = (good / "model.safetensors").read_bytes()
        how = dict(weights=data[: len(data) // 2])
    folder = spoiled(good, tmp_path / "m", **how)
    with pytest.raises(VitpruneError) as e:
        vitprune.load(folder)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert one_line(runner.invoke(app, ["eval", str(folder), "--data", "demo"])) == f"Error: {e.value}"


def test_weights_of_the_wrong_kind_are_refused_before_loading(good, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(good / "model.safetensors"))
    state["pos_embed"] = state["pos_embed"].to(dtype=__import__("torch").int32)  # same shape, integers
    save_file(state, str(tmp_path / "w.safetensors"))
    folder = spoiled(good, tmp_path / "m", weights=(tmp_path / "w.safetensors").read_bytes())
    with pytest.raises(ModelNotFoundError, match="pos_embed is I32 in model.safetensors, float32 in the model"):
        vitprune.load(folder)


@pytest.mark.slow
def test_a_model_larger_than_memory_is_refused_on_the_meta_device(good, tmp_path):
    """Within the per-argument bounds, 256 blocks of width 16384 are ~3.3 TB of float32 (12·d² per block, the
    ViT block's parameter count): refused from the meta-device build, with or without weights."""
    folder = spoiled(good, tmp_path / "m", config=lambda c: c["model_args"].update(embed_dim=16384, depth=256,
                                                                                  num_heads=128))
    for pretrained in (True, False):
        with pytest.raises(ModelNotFoundError,
                           match=r"describes a model of [\d,.]+ GiB, more than the [\d,.]+ GiB of memory available"):
            load_model(str(folder), pretrained=pretrained)


@pytest.mark.parametrize("name", ["hf-hub:a/b/c/d", "hf-hub:..", "hf-hub:", "hf-hub:a/..", "hf-hub:-a/b",
                                  "hf-hub:a/b--c", "hf_hub:a b/c"])
def test_hub_names_huggingface_hub_rejects_are_one_line(name):
    with pytest.raises(ModelNotFoundError, match="is not a Hub repo name"):
        load_model(name, pretrained=False)
    assert "is not a Hub repo name" in one_line(runner.invoke(app, ["profile", name, "--no-weights", "--no-speed"]))


@pytest.mark.slow
def test_truncated_weights_subprocess_cli_one_line(good, tmp_path):
    data = (good / "model.safetensors").read_bytes()
    folder = spoiled(good, tmp_path / "m", weights=data[: len(data) // 3])
    res = subprocess.run([sys.executable, "-m", "vitprune", "eval", str(folder), "--data", "demo"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert res.returncode == 1 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"Error: {folder}/model.safetensors is damaged or truncated (Error while deserializing header: incomplete "
        "metadata, file not fully covered); save or download it again."]


# ------------------------------------------------------------------------------------------ names that look like markup


def test_eval_prints_an_unreadable_file_name_with_brackets_as_it_is(tmp_path):
    data = digits_folder(tmp_path / "d", per_class=1, val_per_class=2)
    corrupt_png(data / "val" / "3" / "bad[/x].png")
    res = runner.invoke(app, ["eval", "demo", "--data", str(data)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "1 unreadable image(s) skipped" in res.output and "bad[/x].png" in res.output


def test_push_dry_run_and_import_print_bracketed_paths_as_they_are(tmp_path, good):
    import shutil

    folder = tmp_path / "run[/b]"
    shutil.copytree(good, folder, symlinks=True)
    res = runner.invoke(app, ["push", str(folder), "--repo", "alice/x", "--dry-run"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert f"vitprune push {folder} --repo alice/x" in res.output


def test_compress_progress_lines_print_messages_as_they_are(capsys):
    from vitprune.cli.compress import Reporter

    report = Reporter(plain=True)
    report({"event": "warning", "message": "skipped unreadable image data/train/3/bad[/x].png (truncated)"})
    report({"event": "info", "message": "teacher: runs/[bold]odd[/b]"})
    err = capsys.readouterr().err
    assert "bad[/x].png" in err and "runs/[bold]odd[/b]" in err


def test_not_a_vit_timm_name_still_one_line():
    with pytest.raises(UnsupportedModelError, match="not a Vision Transformer"):
        load_model("resnet18", pretrained=False)
