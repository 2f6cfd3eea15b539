"""The benchmark scripts run (CPU smoke mode, tiny model) and write what the README says they write."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchscripts import BENCH, PREFIXES, forget, leaked_benchmark_modules, load_benchmark


@pytest.fixture(scope="module")
def bench_modules():
    """benchmarks/speed.py and kernels.py as module objects that ``sys.modules`` does not keep (see benchscripts);
    afterwards also without the ``--baseline`` tree speed.py imports."""
    before = set(sys.modules)
    try:
        yield load_benchmark("speed"), load_benchmark("kernels")
    finally:
        forget(before)


def test_benchmark_scripts_leave_no_module_and_no_path_behind(bench_modules):
    """Loading the scripts (kernels.py loads speed.py itself) registers no module under a name a package could have
    (``kernels``, ``speed``) and leaves ``sys.path`` as it was; the modules work all the same."""
    path = list(sys.path)
    speed, kernels = load_benchmark("speed"), load_benchmark("kernels")
    assert sys.path == path and leaked_benchmark_modules() == []
    assert not any(name.startswith(PREFIXES) for name in sys.modules)
    for name in ("kernels", "speed", "model_matrix", "accuracy", "data"):
        assert Path(getattr(sys.modules.get(name), "__file__", None) or "/").parent != BENCH
    assert kernels.category("aten::addmm") == "matmul" and speed.paired_ratio([2.0], [1.0], inverse=False) == 2.0
    assert Path(kernels.__file__).parent == BENCH and kernels.__name__ == "vitprune_bench_kernels"


@pytest.mark.slow
def test_speed_smoke_writes_every_method_next_to_dense(tmp_path, bench_modules, capsys):
    speed, _ = bench_modules
    out = tmp_path / "speed.json"
    root = BENCH.parent  # this checkout as its own baseline: its methods measured a second time, as NAME@baseline
    assert speed.main(["--smoke", "--device", "cpu", "--methods", "evit,tome", "--baseline", str(root),
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    run = res["runs"]["fp32"]
    assert set(run) == {"dense", "evit", "tome", "evit@baseline", "tome@baseline", "_seconds"}
    assert run["evit@baseline"]["flop_ratio"] == run["evit"]["flop_ratio"]
    assert all(run[m]["throughput"] > 0 and run[m]["latency_ms"] > 0 for m in ("dense", "evit", "tome"))
    assert res["gmacs"]["evit"] < res["gmacs"]["dense"] and res["versions"]["torch"]
    table = capsys.readouterr().out
    assert "× dense" in table and "evit" in table
    assert run["evit"]["ratio"] > 0 and run["evit"]["latency_ratio"] > 0
    assert run["evit"]["flop_ratio"] == pytest.approx(res["gmacs"]["dense"] / res["gmacs"]["evit"])


def test_ratios_pair_runs_of_the_same_round(bench_modules):
    """Three rounds of a model next to dense's: speeds 2, 3, 8 vs 1, 6, 4 -> per-round 2, 0.5, 2, median 2 (the
    ratio of the medians, 3 / 4, would carry dense's slow round 1 and the model's slow round 2); times: inverted."""
    speed, _ = bench_modules
    assert speed.paired_ratio([2.0, 3.0, 8.0], [1.0, 6.0, 4.0], inverse=False) == 2.0
    assert speed.paired_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0], inverse=True) == 1.0  # 2/1, 2/2, 2/4 -> 1


@pytest.mark.slow
def test_speed_check_fails_below_the_targets_and_passes_above(tmp_path, bench_modules, capsys):
    """Two sessions: ratios come with their range. --check compares them with the targets: a fraction no ratio
    can reach fails (exit 1, one line per miss); fraction 0 passes."""
    speed, _ = bench_modules
    out = tmp_path / "speed.json"
    argv = ["--smoke", "--device", "cpu", "--methods", "evit,dge", "--sessions", "2", "--out", str(out), "--check"]
    assert speed.main(argv + ["--check-fraction", "1000"]) == 1
    printed = capsys.readouterr().out
    assert "BELOW TARGET: evit fp32 batch 4" in printed and "BELOW TARGET: dge fp32 batch 1" in printed
    assert "median (range) of 2 sessions" in printed
    res = json.loads(out.read_text())
    run = res["runs"]["fp32"]
    lo, hi = run["dge"]["latency_ratio_range"]
    assert lo <= run["dge"]["latency_ratio"] <= hi and len(run["dge"]["latency_ms_sessions"]) == 2
    assert len(speed.check(res, 1000)) == 4 and speed.check(res, 0.0) == []  # 2 methods x (batch 4, batch 1)


@pytest.mark.slow
def test_kernel_summary_smoke_groups_all_time_into_categories(tmp_path, bench_modules, capsys):
    _, kernels = bench_modules
    out = tmp_path / "kernels.json"
    assert kernels.main(["--smoke", "--methods", "dynamicvit", "--batch-size", "2", "--steps", "1",
                         "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"dense", "dynamicvit"} and res["dtype"] == "fp32"
    for r in res["models"].values():
        assert r["ms_per_forward"] > 0 and r["calls_per_forward"] > 0 and r["top"]
        assert sum(r["by_category_ms"].values()) == pytest.approx(r["ms_per_forward"])
        assert r["by_category_ms"].get("matmul", 0) > 0
    assert "dynamicvit" in capsys.readouterr().out


def test_kernel_category_names(bench_modules):
    _, kernels = bench_modules
    assert kernels.category("aten::addmm") == "matmul" and kernels.category("aten::topk") == "token ops"
    assert kernels.category("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_tn") == "matmul"
    assert kernels.category("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert kernels.category("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel") == "norm"
    assert kernels.category("void at::native::sbtopk::gatherTopK<float, unsigned int, 2, false>") == "token ops"
    assert kernels.category("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>") \
        == "element-wise"


@pytest.mark.slow
def test_speed_smoke_in_onnxruntime_times_the_exports(tmp_path, bench_modules, capsys):
    speed, _ = bench_modules
    out = tmp_path / "speed_ort.json"
    assert speed.main(["--smoke", "--device", "cpu", "--runtime", "onnxruntime", "--methods", "tome,dge",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    run = res["runs"]["fp32"]
    assert set(run) == {"dense", "tome", "_seconds"}  # dge has no static path to export: skipped, named
    assert all(run[m]["throughput"] > 0 and run[m]["latency_ms"] > 0 for m in ("dense", "tome"))
    assert res["runtime"] == "onnxruntime" and "onnxruntime" in res["versions"]
    text = capsys.readouterr().out
    assert "skipping dge" in text and "intra-op threads" in text


@pytest.mark.slow
def test_data_loader_benchmark_smoke_runs_as_a_script(tmp_path):
    """``benchmarks/data.py --smoke`` as a user runs it (a real subprocess with loader worker processes): the three
    loaders are measured side by side in every round and reported with positive rates (no speed threshold: the
    machine is shared)."""
    pytest.importorskip("webdataset")
    pytest.importorskip("skimage")
    out = tmp_path / "data.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(BENCH / "data.py"), "--smoke", "--out", str(out)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    loaders = {"vitprune", "timm", "shards"}
    # --smoke is 48 images, batch 8, 2 rounds (the setting in benchmarks/data.py)
    assert (data["images"], data["batch_size"], data["rounds"], data["workers"]) == (48, 8, 2, 1)
    assert set(data["median"]) == loaders and all(data["median"][k] > 0 for k in loaders)
    assert all(len(data["rounds_data"][k]) == 2 and min(data["rounds_data"][k]) > 0 for k in loaders)
    assert set(data["ratio_to_timm"]) == {"vitprune", "shards"} and all(v > 0 for v in data["ratio_to_timm"].values())
    assert data["shard_index_seconds"] > 0 and data["versions"]["webdataset"]
    assert data["command"].startswith("python benchmarks/data.py --smoke")
    table = res.stdout
    assert "× timm" in table and all(f"  {k} " in table for k in loaders)


@pytest.mark.slow
def test_accuracy_smoke_compresses_at_the_target_gmacs(tmp_path):
    out = tmp_path / "acc.json"
    # a file from before the test split (val = the 359 held-out digits, no demo_split): its rows are not merged
    out.write_text(json.dumps({"split": "val", "rows": [{"method": "tome", "top1": 98.61}]}))
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    proc = subprocess.run([sys.executable, str(BENCH / "accuracy.py"), "--smoke", "--seeds", "0", "--json", str(out),
                           "--out-dir", str(tmp_path / "runs")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["method"] == "evit" and row["budget"]["target_gmacs"] == 0.65
    # the trained model's counted GMACs are the budget's (EViT's keep rate is static): within 1 % of 0.65x dense
    assert row["gmacs"] / row["dense_gmacs"] == pytest.approx(0.65, rel=0.01)
    assert row["options"]["keep_rate"] == row["budget"]["value"]
    assert "| evit | keep_rate=" in proc.stdout and "(" in proc.stdout.split("| evit |")[1]
    assert "not merged" in proc.stdout
    # the test column is the saved model's top-1 on the demo's test digits, the teacher's next to it; val is what
    # compress reported
    import vitprune.hub

    saved = tmp_path / "runs" / "evit-seed0"
    test = vitprune.evaluate(vitprune.load(saved), "demo", split="test", device="cpu")
    assert test.images == 178 and row["test_top1"] == pytest.approx(test.top1) == row["runs"][0]["test_top1"]
    assert row["teacher_test_top1"] == pytest.approx(vitprune.evaluate("demo", "demo", split="test").top1)
    assert row["top1"] == pytest.approx(vitprune.hub.read_vitprune_section(saved)["metrics"]["top1"])
    assert row["test_delta"] == pytest.approx(row["test_top1"] - row["teacher_test_top1"])
    header = proc.stdout.split("| method |")[1].splitlines()[0]
    assert header.index("test top-1") < header.index("val top-1")
    assert f"{row['test_top1']:.2f} ({row['test_top1']:.2f}–{row['test_top1']:.2f})" in proc.stdout
