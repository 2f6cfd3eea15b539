"""`vitprune sweep`: one point per setting plus dense in sweep.json and pareto.png, GMACs falling with the keep rate,
accuracy with --data, run-time sweeps of one checkpoint, and clear refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import vitprune
from tests.test_visualize import run_without_matplotlib
from vitprune.cli.main import app

runner = CliRunner()


def read(out: Path) -> dict:
    data = json.loads((out / "sweep.json").read_text())
    with Image.open(out / "pareto.png") as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 300
    return data


@pytest.mark.slow
def test_cli_evit_keep_rates_on_demo_without_data(tmp_path):
    out = tmp_path / "sweep"
    res = runner.invoke(app, ["sweep", "demo", "--method", "evit", "--keep-rates", "0.5,0.7,0.9", "--out", str(out),
                              "--device", "cpu", "--batch-size", "4", "--repeats", "1", "--no-latency"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    data = read(out)
    assert data["mode"] == "off-the-shelf" and data["option"] == "keep_rate" and data["method"] == "evit"
    assert [p["value"] for p in data["points"]] == [0.5, 0.7, 0.9]
    gmacs = [p["gmacs"] for p in data["points"]]
    assert gmacs == sorted(gmacs) and gmacs[0] < gmacs[-1] < data["dense"]["gmacs"]  # fewer tokens, fewer MACs
    for p in data["points"]:
        assert p["throughput"] > 0 and p["speedup"] > 0 and p["top1"] is None
        # the speedup is the paired per-round median, as profile's (one round here: that round's ratio)
        assert p["speedup"] == p["speed"]["throughput_ratio"]["median"] and p["latency_ratio"] is None
        assert p["options"]["keep_rate"] == p["value"]
    assert data["dense"]["throughput"] > 0 and data["dense"]["top1"] is None
    assert data["batch_size"] == 4 and data["device"] == "cpu" and data["dtype"] == "fp32"
    # the table: the dense reference row and one row per value
    assert "dense" in res.stdout and "0.5" in res.stdout and "GMACs (papers' GFLOPs)" in res.stdout
    assert "pareto.png" in res.stdout


@pytest.mark.slow
def test_tome_r_values_with_demo_data_have_accuracy(tmp_path):
    res = vitprune.sweep("demo", "tome", [2, 8], data="demo", out=str(tmp_path), speed=False)
    data = read(tmp_path)
    assert data["option"] == "r" and data["mode"] == "off-the-shelf"
    d = data["dense"]
    assert d["top1"] > 90  # the demo teacher on its digits
    assert [p["value"] for p in data["points"]] == [2, 8]
    assert all(p["top1"] is not None and 0 <= p["top1"] <= 100 and p["images"] == 181 for p in data["points"])
    assert data["points"][1]["gmacs"] < data["points"][0]["gmacs"] < d["gmacs"]  # more merging, fewer MACs
    assert res.points[0].tokens[-1] > res.points[1].tokens[-1]
    assert not any("fine-tuned" in n for n in data["notes"])  # ToMe needs no training


@pytest.mark.slow
def test_runtime_sweep_of_one_saved_checkpoint(tmp_path):
    folder = vitprune.save(vitprune.apply_method(vitprune.load_model("demo"), "evit", keep_rate=0.7),
                           tmp_path / "evit")
    res = vitprune.sweep(str(folder), values=[0.4, 0.8], out=str(tmp_path / "sweep"), speed=False)
    assert res.mode == "runtime" and res.method == "evit" and res.option == "keep_rate"
    assert [p.gmacs for p in res.points] == sorted(p.gmacs for p in res.points)
    assert res.points[-1].gmacs < res.dense["gmacs"]
    assert vitprune.load(str(folder)).vitprune_method.options.keep_rate == 0.7  # the folder is not changed
    with pytest.raises(vitprune.errors.MethodOptionError, match="cannot change without retraining"):
        vitprune.sweep(str(folder), values=[0.0, 1.0], option="shrink_epochs", out=None, speed=False)


@pytest.mark.slow
@pytest.mark.parametrize("args, message, code", [  # a malformed command line exits 2, a refused setting 1
    (["--method", "evit"], "exactly one of --keep-rates", 2),
    (["--method", "evit", "--keep-rates", "0.5", "--r-values", "4"], "given: --keep-rates, --r-values", 2),
    (["--method", "evit", "--keep-rates", "0.5,abc"], "--keep-rates takes numbers", 2),
    (["--method", "evit", "--keep-rates", "0.5", "--option", "fuse"], "--option goes with --values", 2),
    (["--method", "evit", "--keep-rates", "0.5,1.5", "--no-speed"], "keep-rate must be in (0, 1]", 1),
    (["--keep-rates", "0.5"], "sweep needs --method", 1),
    (["--method", "dynamicvit", "--keep-rates", "0.5,0.7", "--data", "demo", "--no-speed"],
     "parameters that must be trained: give --epochs N", 1),
    (["--method", "evit", "--keep-rates", "0.5", "--epochs", "1"], "needs --data", 1),
])
def test_sweep_refusals_are_one_line(args, message, code, tmp_path):
    res = runner.invoke(app, ["sweep", "demo", *args, "--out", str(tmp_path / "s")], env={"COLUMNS": "200"})
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output


@pytest.mark.slow
def test_missing_matplotlib_is_one_clear_line(tmp_path):
    res = run_without_matplotlib(["sweep", "demo", "--method", "evit", "--keep-rates", "0.5,0.7",
                                  "--out", str(tmp_path / "sweep")])
    assert res.returncode == 1, res.stdout + res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1 and "plots need matplotlib" in lines[0] and "'vitprune[plot]'" in lines[0], lines
    assert not (tmp_path / "sweep").exists()  # refused before any work


@pytest.mark.slow
def test_trained_points_go_through_compress(tmp_path):
    """--epochs: every point is fine-tuned with vitprune.compress (a short schedule here) and saved in OUT/points."""
    res = vitprune.sweep("demo", "evit", [0.5, 0.8], data="demo", epochs=0.05, out=str(tmp_path), speed=False,
                         compress_options={"batch_size": 64})
    data = read(tmp_path)
    assert data["mode"] == "trained"
    for p, v in zip(res.points, (0.5, 0.8)):
        folder = Path(p.folder)
        assert folder == tmp_path / "points" / f"keep_rate-{v}"
        report = json.loads((folder / "report.json").read_text())
        assert p.top1 == report["compressed"]["top1"]  # the accuracy compress measured on the val split
        assert vitprune.load(str(folder)).vitprune_method.options.keep_rate == v
    assert res.points[0].gmacs < res.points[1].gmacs < res.dense["gmacs"]
    assert res.dense["top1"] == json.loads((Path(res.points[0].folder) / "report.json").read_text())["dense"]["top1"]


@pytest.mark.slow
def test_a_vit_built_at_64_px_profiles_and_sweeps_at_64_px():
    """profile and sweep measure with one function and one input-size rule (the model's own patch embedding): a
    ViT built with img_size=64 keeps pretrained_cfg's 224 px, which sweep used to feed it (an AssertionError)."""
    from tests.conftest import make_vit

    model = make_vit(depth=4, img_size=64, patch_size=8)
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 224, 224)
    prof = vitprune.profile(model, "evit", keep_rate=0.5, speed=False, device="cpu")
    res = vitprune.sweep(model, "evit", [0.5, 0.9], out=None, speed=False, device="cpu")
    assert prof.input_size == (3, 64, 64) and res.input_size == [3, 64, 64]
    assert res.dense["gmacs"] == prof.dense.gmacs and res.points[0].gmacs == prof.compressed.gmacs
    # 8x8 patches of 8 px + class token; EViT prunes in blocks 1, 2, 3 (3/6/9 of 12 scaled to 4 blocks) and fuses
    # the rest into one token: ceil(0.5 x 64) + 1 + 1 = 34 tokens enter block 2, ceil(0.5 x 33) + 1 + 1 = 19 block 3
    assert res.points[0].tokens == prof.compressed.tokens == [65, 65, 34, 19]


def test_run_time_options_on_a_compressed_model_without_a_method():
    """Options without a method on a compressed model are run-time overrides (one place, api.resolve_models):
    the model given is left as it was; on a dense model they still need a method."""
    from tests.conftest import make_vit
    from vitprune.api import resolve_models

    model = vitprune.apply_method(make_vit(depth=4), "evit", keep_rate=0.7)
    _, dense, compressed = resolve_models(model, None, {"keep_rate": 0.5})
    assert compressed.vitprune_method.options.keep_rate == 0.5 and model.vitprune_method.options.keep_rate == 0.7
    assert getattr(dense, "vitprune_method", None) is None
    prof = vitprune.profile(model, keep_rate=0.5, speed=False, device="cpu")
    assert prof.compressed.options["keep_rate"] == 0.5
    with pytest.raises(vitprune.errors.MethodOptionError, match="cannot be changed at run time"):
        resolve_models(model, None, {"drop_loc": [1]})
    with pytest.raises(vitprune.errors.MethodOptionError, match="`keep_rate` needs `method`"):
        resolve_models(make_vit(depth=4), None, {"keep_rate": 0.5})


def test_the_accuracy_axis_does_not_make_one_image_a_cliff():
    from vitprune.report.plots import MIN_SPAN_IMAGES, accuracy_limits

    one_image = 100 / 181  # the demo val split: 181 digits
    # the demo teacher's val top-1 (vitprune/assets/demo/config.json) and one image less
    lo, hi = accuracy_limits([97.79, 97.79 - one_image], 181)
    assert hi - lo >= MIN_SPAN_IMAGES * one_image and lo < 97.79 - one_image and hi > 97.79
    assert hi <= 100.0  # never above 100 %
    lo, hi = accuracy_limits([89.69, 98.33], 359)  # a real spread (docs/images/sweep.json) is shown as it is, padded
    assert lo < 89.69 and 98.33 < hi <= 100.0 and hi - lo < 12
    lo, hi = accuracy_limits([80.0, 80.1], 50_000)  # ImageNet-sized val: still at least a point wide
    assert hi - lo >= 1.0
