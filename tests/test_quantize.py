"""`vitprune export --quantize int8 / int8-static`: the int8 file lands beside the fp32 one, its graph still runs the
method's token schedule, its agreement with PyTorch is recorded, a drop above --max-drop is refused in one line
(--force writes it and the card says so), push carries it, and profile / benchmarks/speed.py time fp32 and int8
side by side with the JSON fields the docs name."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vitprune
from tests.conftest import make_vit
from vitprune.cli.main import app
from vitprune.errors import ExportError, MethodOptionError
from vitprune.exporter.quantize import check_quantized_tokens, cpu_int8_isa, int8_path
from vitprune.measure.ort import OrtModel
from tests.benchscripts import load_benchmark
from tests.hostile import BLOCK_EXTRA

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
INPUT = (3, 32, 32)
FULL = 65  # 8x8 patches + the class token


def tiny(method: str, depth: int = 3, **options):
    """A tiny ViT whose preprocessing config says 32 px (timm keeps the 224-px cfg of the architecture it was
    built from), so the check and calibration images reach it at its own size. 3 blocks hold a pruning step of each
    method used here (EViT 65 65 47 at keep 0.7, ToMe 65 59 53 at r=6); each block makes the exports slower."""
    model = make_vit(depth=depth)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": INPUT, "crop_pct": 1.0}
    if method != "dense":
        vitprune.apply_method(model, method, **options)
    return model.eval()


def op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_names_modes_and_the_cpu_line(tmp_path):
    assert int8_path(Path("out/model.onnx")) == Path("out/model-int8.onnx")
    assert int8_path("x/deit-evit.onnx") == Path("x/deit-evit-int8.onnx")
    isa = cpu_int8_isa()
    assert isa.startswith("int8") and ("VNNI" in isa or "AMX" in isa or "unknown" in isa or "dot product" in isa)
    with pytest.raises(ExportError, match="int8 or int8-static"):
        vitprune.export(tiny("dense"), tmp_path / "x.onnx", quantize="int4")
    with pytest.raises(ExportError, match="go with --quantize"):
        vitprune.export(tiny("dense"), tmp_path / "x.onnx", eval_data="demo")
    with pytest.raises(MethodOptionError, match="add `export` onnx"):
        vitprune.compress("demo", "evit", data="demo", output=str(tmp_path / "out"), quantize="int8")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ dynamic and static


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("evit", {"keep_rate": 0.7}), ("tome", {"r": 6})], ids=["evit", "tome"])
def test_dynamic_int8_beside_the_fp32_file_keeps_the_schedule_and_records_agreement(method, options, tmp_path):
    model = tiny(method, **options)
    schedule = model.vitprune_method.token_schedule(model)
    result = vitprune.export(model, tmp_path / "m.onnx", quantize="int8")
    fp32, q = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    assert fp32.is_file() and q.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["m-int8.onnx", "m.onnx"]
    assert result.tokens == schedule and result.int8.tokens == schedule and schedule[-1] < FULL
    assert "MatMulInteger" in op_types(q) and "MatMulInteger" not in op_types(fp32)  # really int8 products
    assert q.stat().st_size < fp32.stat().st_size  # int8 weights (a tiny model's graph is mostly other bytes)
    rec = result.record()["int8"]
    a = rec["agreement"]
    assert rec["file"] == "m-int8.onnx" and rec["mode"] == "int8" and rec["eval"] is None
    assert a["batch_sizes"] == [1, 8] and a["compared"] == 16 and a["images"] == "8 demo digits"
    assert 0 < a["max_abs_diff"] < a["logit_scale"]  # int8 rounding shows, but far below the logits' size
    assert rec["drop"] == pytest.approx(100 * (16 - a["argmax_agree"]) / 16) and rec["drop"] <= 1.0
    # the file alone runs at two batch sizes
    from tests.conftest import digits_batch

    x = digits_batch(8)
    assert OrtModel(q)(x).shape == (8, 10) and OrtModel(q)(x[:1]).shape == (1, 10)
    # the check reads the int8 graph: another schedule does not pass it
    other = tiny(method, **({"keep_rate": 0.5} if method == "evit" else {"r": 2}))
    with pytest.raises(ExportError, match=r"\(int8 file\)'s schedule is"):
        check_quantized_tokens(q, other, INPUT)


@pytest.mark.slow
def test_static_int8_calibrated_on_digits_is_qdq_with_the_schedule(tmp_path):
    model = tiny("evit", keep_rate=0.7)
    result = vitprune.export(model, tmp_path / "s.onnx", quantize="int8-static", calibrate_data="demo",
                             calibrate_images=16)
    q = tmp_path / "s-int8.onnx"
    ops = op_types(q)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "MatMulInteger" not in ops
    assert result.int8.tokens == model.vitprune_method.token_schedule(model)
    assert result.int8.calibration == "16 demo train images" and result.int8.mode == "int8-static"
    assert result.int8.agreement["compared"] == 16
    with pytest.raises(ExportError, match="needs calibration images"):
        vitprune.export(model, tmp_path / "t.onnx", quantize="int8-static")
    assert not (tmp_path / "t.onnx").exists()


# ------------------------------------------------------------------------------------------ refusal, force, card, push


@pytest.mark.slow
def test_max_drop_refuses_in_one_line_force_writes_and_the_card_marks_and_runs_it(tmp_path):
    from vitprune.hub.push import push
    from vitprune.hub.save import save

    folder = tmp_path / "evit-tiny"
    save(tiny("evit", keep_rate=0.7), folder, extra_files={"report.json": json.dumps({"model": "tiny"}) + "\n"})
    # a negative limit asks the int8 file to beat the fp32 model; no file can, so the export is refused
    res = runner.invoke(app, ["export", str(folder), "--quantize", "int8", "--max-drop", "-1"])
    assert res.exit_code == 1
    line = one_line(res.output)
    assert re.search(r"loses -?\d+\.\d\d points \(argmax disagreement with PyTorch on 8 demo digits\), more than "
                     r"--max-drop -1; it was not written; measure top-1 with --eval-data DATA", line), line
    assert not (folder / "model.onnx").exists() and not (folder / "model-int8.onnx").exists()

    res = runner.invoke(app, ["export", str(folder), "--quantize", "int8", "--eval-data", "demo", "--max-drop", "-1",
                              "--force"])
    assert res.exit_code == 0, res.output
    assert re.search(r"top-1 on demo test: fp32 \d+\.\d\d%, int8 \d+\.\d\d%", res.output)
    assert "written with --force" in res.output
    rec = json.loads((folder / "report.json").read_text())["onnx"]["int8"]
    assert rec["forced"] and rec["file"] == "model-int8.onnx" and rec["eval"]["split"] == "test"
    assert rec["drop"] == pytest.approx(rec["eval"]["fp32"]["top1"] - rec["eval"]["int8"]["top1"])
    assert rec["eval"]["fp32"]["images"] == rec["eval"]["int8"]["images"] > 0
    assert (folder / "model.onnx").is_file() and (folder / "model-int8.onnx").is_file()
    card = (folder / "README.md").read_text()
    assert "### int8" in card and "**Written with `--force`:**" in card and "| top-1 (%) |" in card
    # the card's int8 snippet (five lines) runs the int8 file on a real digit without torch
    code = re.search(r"### int8.*?```python\n(.*?)```", card, re.S).group(1)
    assert len(code.strip().splitlines()) <= 5 and "model-int8.onnx" in code
    from vitprune.data.demo import DigitsDemo

    DigitsDemo("val")[0][0].save(folder / "image.jpg")
    run = subprocess.run([sys.executable, "-c", code + "print(list(logits.shape))"], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[1, 10]"
    (folder / "image.jpg").unlink()
    plan = push(folder, "alice/evit-tiny", dry_run=True)
    assert {"model.onnx", "model-int8.onnx"} <= {f.path for f in plan.files}
    assert "model-int8.onnx" in plan.card
    # a later fp32-only export replaces model.onnx: the int8 file made from the old one leaves with it
    vitprune.export(str(folder), check=False)
    assert (folder / "model.onnx").is_file() and not (folder / "model-int8.onnx").exists()
    assert "int8" not in json.loads((folder / "report.json").read_text())["onnx"]


# ------------------------------------------------------------------------------------------ speed side by side


@pytest.mark.slow
def test_profile_times_dense_and_pruned_fp32_and_int8_side_by_side():
    from vitprune.report.tables import int8_profile_table

    rep = vitprune.profile(tiny("evit", keep_rate=0.5), runtime="onnxruntime", quantize="int8", device="cpu",
                           batch_size=2, repeats=1)
    d = rep.to_dict()
    for key in ("dense", "dense_int8", "compressed", "compressed_int8"):
        assert d[key]["throughput"] > 0 and d[key]["latency_ms"] > 0
    assert d["speedup"] == pytest.approx(d["compressed_int8"]["throughput"] / d["dense"]["throughput"])
    assert d["speedup_vs_dense_int8"] == pytest.approx(
        d["compressed_int8"]["throughput"] / d["dense_int8"]["throughput"])
    assert d["speedup_fp32"] == pytest.approx(d["compressed"]["throughput"] / d["dense"]["throughput"])
    assert d["quantize"] == "int8" and d["quantize_info"].startswith("dynamic int8 (MatMul/Gemm) · int8")
    assert d["compressed_int8"]["tokens"] == d["compressed"]["tokens"]
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(int8_profile_table(rep))
    text = console.export_text()
    assert "compressed int8" in text and "ONNX Runtime" in text and "dynamic int8" in text


def test_profile_quantize_needs_onnxruntime():
    res = runner.invoke(app, ["profile", "demo", "--method", "evit", "--quantize", "int8"])
    assert res.exit_code == 1 and "--runtime onnxruntime" in one_line(res.output)


@pytest.mark.slow
def test_speed_benchmark_int8_json_fields(tmp_path):
    speed = load_benchmark("speed")
    out = tmp_path / "q.json"
    assert speed.main(["--smoke", "--device", "cpu", "--runtime", "onnxruntime", "--quantize", "int8", "--methods",
                       "evit", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    run = res["runs"]["fp32"]
    assert {"dense", "dense+int8", "evit", "evit+int8"} <= set(run)
    row = res["int8"]["fp32"]["evit"]
    assert row["speedup"] == run["evit+int8"]["ratio"]  # to dense fp32, the paired-round median
    assert row["speedup_vs_dense_int8"] == run["evit+int8"]["ratio_vs_dense_int8"]
    assert row["retained"] == pytest.approx(row["speedup"] / (row["speedup_fp32"] * row["speedup_dense_int8"]))
    assert res["quantize"] == "int8" and "int8" in res["quantize_info"]


@pytest.mark.slow
def test_missing_extra_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-c", BLOCK_EXTRA, "onnxruntime", "export", "demo", "--quantize", "int8"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line(res.stdout + res.stderr)
    assert "needs onnxruntime, which is not installed" in line and 'pip install "vitprune[export]"' in line
    assert not list(tmp_path.iterdir())
