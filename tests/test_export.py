"""`vitprune export` / `vitprune.export`: every method with a static inference path exports with its pruning in
the graph (token counts per block checked against its schedule) and ONNX Runtime gives PyTorch's logits at two
batch sizes; per-image modes refuse in one line; a missing extra is one line; `--runtime onnxruntime` times the
files; push and compress carry the file, and the card's five lines run it."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import vitprune
from tests.conftest import digits_batch, make_vit
from vitprune.cli.main import app
from vitprune.errors import ExportError
from vitprune.exporter import check_token_counts, export_onnx, graph_token_counts, verify
from vitprune.exporter.verify import RELATIVE_TOLERANCE
from vitprune.measure.ort import OrtModel
from tests.hostile import BLOCK_EXTRA

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
INPUT = (3, 32, 32)

#: the exportable settings, each on the fewest tiny-ViT blocks that hold its pruning (every block makes the export
#: slower): DynamicViT, EViT and ToMe in two steps (65 45 32, 65 65 47 35, 65 61 57 tokens), Evo-ViT and SaiT in
#: their one (65 33); the dense graph on 2 blocks
EXPORTABLE = [
    ("dense", {}, 2),
    ("dynamicvit", {"keep_rate": 0.7}, 3),
    ("evit", {"keep_rate": 0.7}, 4),
    ("evovit", {"keep_rate": 0.5}, 2),
    ("tome", {"r": 4}, 3),
    ("sait", {"mode": "fixed", "keep_rate": 0.5}, 2),
]


def tiny(method: str, depth: int = 4, **options) -> nn.Module:
    """A ``depth``-block tiny ViT with ``method`` (4 blocks hold every method's pruning steps, see EXPORTABLE)."""
    model = make_vit(depth=depth)
    # timm keeps the 224-px preprocessing of the architecture it was built from: say 32 px, so that the check images
    # (and a model card's snippet) reach the model at its own size
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": INPUT, "crop_pct": 1.0}
    if method == "dense":
        return model
    vitprune.apply_method(model, method, **options)
    if method == "dynamicvit":
        spread_predictor_scores(model)
    return model.eval()


def saved_tiny(folder: Path) -> Path:
    """A tiny EViT model saved with vitprune.save, with a report.json: a folder `vitprune export` records into."""
    from vitprune.hub.save import save

    save(tiny("evit", keep_rate=0.7), folder, extra_files={"report.json": json.dumps({"model": "tiny"}) + "\n"})
    return folder


def spread_predictor_scores(model: nn.Module) -> None:
    """DynamicViT's predictors start at std 0.02 (the reference's init): their keep scores then differ only in
    the last float32 bits, so which tokens are kept is decided by rounding, differently in every backend. A
    trained predictor separates its scores; PyTorch's default Linear init (Kaiming-uniform) does too."""
    for mod in model.score_predictor.modules():
        if isinstance(mod, nn.Linear):
            nn.Linear.reset_parameters(mod)


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------------------ export + ORT equality


@pytest.mark.slow
@pytest.mark.parametrize("method,options,depth", EXPORTABLE, ids=[m for m, _, _ in EXPORTABLE])
def test_export_matches_pytorch_at_two_batch_sizes_with_the_schedule_in_the_graph(method, options, depth, tmp_path):
    model = tiny(method, depth, **options)
    path = tmp_path / "m.onnx"
    tokens = export_onnx(model, path, INPUT)
    schedule = model.vitprune_method.token_schedule(model) if method != "dense" else [65] * 2  # 8x8 patches + cls
    assert tokens == schedule
    if method != "dense":
        assert tokens[-1] < 65  # the graph really runs fewer tokens
        # in the steps EXPORTABLE names: two for DynamicViT, EViT and ToMe, one for Evo-ViT and SaiT
        assert len(set(tokens)) == (3 if method in ("dynamicvit", "evit", "tome") else 2)
    images = digits_batch(8)
    result = verify(OrtModel(path), model, images, "8 digits")
    assert result.batch_sizes == [1, 8] and result.compared == 16 and result.argmax_agree == 16
    # float32 on both sides: the differences are rounding, far below the stated tolerance
    assert result.max_abs_diff <= RELATIVE_TOLERANCE * max(1.0, result.logit_scale)
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(INPUT)  # dynamic batch axis


@pytest.mark.slow
def test_token_check_catches_a_dense_graph(tmp_path):
    import onnx

    dense = make_vit(depth=4)
    path = tmp_path / "dense.onnx"
    assert export_onnx(dense, path, INPUT) == [65] * 4
    graph = onnx.load(str(path))
    counts = graph_token_counts(graph, 4, dense.embed_dim)
    assert counts == [65] * 4
    evit = vitprune.apply_method(make_vit(depth=4), "evit", keep_rate=0.5)
    schedule = evit.vitprune_method.token_schedule(evit)
    assert schedule != counts
    with pytest.raises(ExportError, match=r"runs its blocks on 65×4 tokens but evit.s schedule is 65×2 34×1 19×1"):
        check_token_counts(counts, schedule, "evit")
    # a graph in which the check cannot find a block's input (names changed, a data-dependent count) fails too
    with pytest.raises(ExportError, match=r"\?×4"):
        check_token_counts(graph_token_counts(graph, 4, dense.embed_dim + 1), [65] * 4, "the dense model")


@pytest.mark.slow
def test_a_fixed_batch_file_has_that_batch_and_is_checked_at_it(tmp_path):
    model = tiny("evit", keep_rate=0.7)
    path = tmp_path / "b3.onnx"
    export_onnx(model, path, INPUT, batch_size=3)
    import onnx

    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    result = verify(OrtModel(path), model, digits_batch(8), "8 digits", batch_size=3)
    assert result.batch_sizes == [3] and result.compared == 9  # ceil(8/3) full batches of 3


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("args,needle", [
    (["--method", "dge"], "Dynamic Grained Encoder chooses its token counts per image"),
    (["--method", "sait"], "SaiT's adaptive mode keeps a different number of tokens per image"),
    (["--method", "sait", "--mode", "adaptive", "--threshold", "0.8"], "export its fixed mode (--mode fixed"),
])
def test_per_image_modes_refuse_in_one_line_and_name_what_exports(args, needle, tmp_path):
    out = tmp_path / "x.onnx"
    res = runner.invoke(app, ["export", "demo", *args, "-o", str(out)])
    assert res.exit_code == 1
    line = one_line(res.output)
    assert line.startswith("Error: ") and needle in line
    if "dge" in args:
        assert "dynamicvit, evit, evovit, tome, sait (fixed or dense mode)" in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_method_flips_exportable_by_its_class_flag():
    from vitprune.methods import create_method

    dge = create_method("dge")
    assert type(dge).exportable is False
    with pytest.raises(ExportError):
        dge.export_check(None)
    sait = create_method("sait", mode="fixed")
    sait.export_check(None)  # fixed mode exports
    with sait.overrides(mode="adaptive", threshold=1.0):
        sait.export_check(None)  # threshold 1 prunes nothing: the dense blocks, static


def test_usage_errors_exit_2():
    res = runner.invoke(app, ["export", "demo", "--batch-size", "2", "--dynamic-batch"])
    assert res.exit_code == 2 and res.output == "Error: give --batch-size N or --dynamic-batch, not both.\n"
    res = runner.invoke(app, ["export", "demo", "--format", "tflite"])
    assert res.exit_code == 2




@pytest.mark.slow
@pytest.mark.parametrize("blocked,args", [
    ("onnxruntime", ["export", "demo", "--method", "evit"]),
    ("onnxscript", ["profile", "demo", "--method", "tome", "--runtime", "onnxruntime"]),
])
def test_missing_extra_is_one_clear_line(blocked, args, tmp_path):
    """A fresh interpreter where importing one of the extra's modules fails, as on an install without it."""
    res = subprocess.run([sys.executable, "-c", BLOCK_EXTRA, blocked, *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line(res.stdout + res.stderr)
    assert f"needs {blocked}, which is not installed" in line and 'pip install "vitprune[export]"' in line
    assert not list(tmp_path.iterdir())  # nothing written


# ------------------------------------------------------------------------------------------ CLI, runtime, sharing


@pytest.mark.slow
def test_cli_export_demo_json(tmp_path):
    out = tmp_path / "demo-tome.onnx"
    res = runner.invoke(app, ["export", "demo", "--method", "tome", "--r", "4", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    model = vitprune.apply_method(vitprune.load_model("demo"), "tome", r=4)
    assert info["tokens"] == model.vitprune_method.token_schedule(model)
    check = info["verification"]
    assert check["passed"] and check["batch_sizes"] == [1, 8] and check["images"] == "8 demo digits"
    assert info["batch"] == "dynamic" and out.is_file() and info["size_bytes"] == out.stat().st_size
    # the file alone, in a fresh session, gives the model's logits on a demo digit
    x = digits_batch(2)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(OrtModel(out)(x), ref, atol=RELATIVE_TOLERANCE * max(1.0, np.abs(ref).max()))


@pytest.mark.slow
def test_profile_runtime_onnxruntime_smoke():
    res = runner.invoke(app, ["profile", "demo", "--method", "evit", "--keep-rate", "0.5", "--runtime",
                              "onnxruntime", "--device", "cpu", "--batch-size", "4", "--repeats", "1", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["runtime"] == "onnxruntime" and "onnxruntime" in rep["versions"]
    assert f"{torch.get_num_threads()} intra-op threads = torch's" in rep["runtime_info"]
    for side in ("dense", "compressed"):
        assert rep[side]["throughput"] > 0 and rep[side]["latency_ms"] > 0
    assert rep["speedup"] == rep["speed"]["throughput_ratio"]["median"]  # paired per-round ratios
    assert rep["latency_ratio"] == rep["speed"]["latency_ratio"]["median"]
    res = runner.invoke(app, ["profile", "demo", "--method", "evit", "--runtime", "onnxruntime", "--compile"])
    assert res.exit_code == 1 and "does not apply to --runtime onnxruntime" in one_line(res.output)


@pytest.mark.slow
def test_push_include_onnx_exports_records_and_uploads_and_the_card_snippet_runs(tmp_path):
    from tests.fakehub import FakeHub
    from tests.test_push import TOKEN, cli_env, run_cli

    folder = saved_tiny(tmp_path / "evit-tiny")
    repo = "alice/tiny-evit-onnx"
    with FakeHub(TOKEN) as hub:
        res = run_cli(["push", str(folder), "--repo", repo, "--include-onnx"], cli_env(tmp_path, hub.url))
        assert res.returncode == 0, res.stdout + res.stderr
        files = hub.files(repo)
    assert files["model.onnx"] == (folder / "model.onnx").read_bytes()
    record = json.loads((folder / "report.json").read_text())["onnx"]
    assert record["verification"]["passed"] and record["file"] == "model.onnx"
    card = files["README.md"].decode()
    assert "## Run it with ONNX Runtime" in card and "Checked at export against PyTorch on 8 demo digits" in card
    assert f'hf_hub_download("{repo}", "model.onnx")' in card
    # the local card's snippet (five lines at most) runs the file on a real image without torch
    local = (folder / "README.md").read_text()
    code = re.search(r"## Run it with ONNX Runtime.*?```python\n(.*?)```", local, re.S).group(1)
    assert len(code.strip().splitlines()) <= 5
    from vitprune.data.demo import DigitsDemo

    DigitsDemo("val")[0][0].save(folder / "image.jpg")
    run = subprocess.run([sys.executable, "-c", code + "print(list(logits.shape))"], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[1, 10]"


@pytest.mark.slow
def test_compress_export_onnx_writes_the_file_after_saving(tmp_path):
    from tests.test_train_utils import digits_folder

    data = digits_folder(tmp_path / "d", per_class=4, val_per_class=2)
    result = vitprune.compress("demo", "evit", data=str(data), output=str(tmp_path / "out"), epochs=1,
                               batch_size=16, speed=False, export="onnx", keep_rate=0.7)
    out = tmp_path / "out"
    assert (out / "model.onnx").is_file()
    record = json.loads((out / "report.json").read_text())["onnx"]
    assert record == result.report["onnx"] and record["verification"]["passed"]
    assert record["tokens"] == result.model.vitprune_method.token_schedule(result.model)
    assert "## Run it with ONNX Runtime" in (out / "README.md").read_text()
    with pytest.raises(vitprune.errors.MethodOptionError, match="`export` tflite"):
        vitprune.compress("demo", "evit", data=str(data), output=str(tmp_path / "o2"), export="tflite")
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_an_export_into_a_saved_folder_is_part_of_that_model_records_its_speed_and_leaves_with_it(tmp_path):
    """model.onnx, report.json's onnx section (with the speed measured in ONNX Runtime) and the card switch in as one
    new version of the folder; a later save of other weights drops the file, so an ONNX export never sits beside
    weights it was not made from."""
    from vitprune.hub.save import current_version, save

    folder = saved_tiny(tmp_path / "m")
    before = current_version(folder)
    result = vitprune.export(str(folder), measure=True, repeats=1, measure_batch_size=4)
    assert result.path == folder / "model.onnx"
    after = current_version(folder)
    assert after is not None and after != before and not before.exists()
    assert (folder / "model.onnx").is_symlink() and (after / "model.onnx").is_file()
    record = json.loads((folder / "report.json").read_text())["onnx"]
    assert record["file"] == "model.onnx"
    speed = record["speed"]
    assert speed["runtime"] == "onnxruntime" and speed["batch_size"] == 4
    assert speed["speedup"] == speed["speed"]["throughput_ratio"]["median"]  # paired per-round ratios
    card = (folder / "README.md").read_text()
    assert "onnxruntime" in card
    assert "Measured in ONNX Runtime" in card and "| throughput (img/s, batch 4) |" in card
    assert vitprune.load(folder).vitprune_method.name == "evit"  # the weights came along unchanged

    save(tiny("evit", keep_rate=0.5), folder)
    assert not os.path.lexists(folder / "model.onnx")
    assert vitprune.load(folder).vitprune_method.options.keep_rate == 0.5
