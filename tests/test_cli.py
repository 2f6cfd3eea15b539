"""The command line as a user meets it: help, profile (table and JSON), errors as one line with exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from vitprune.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_help_lists_every_command():
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("compress", "profile", "eval", "push", "methods", "visualize", "sweep"):
        assert cmd in res.output


def test_version_names_vitprune_and_its_stack():
    import timm

    import vitprune

    res = run("--version")
    assert res.exit_code == 0
    assert res.output.startswith(f"vitprune {vitprune.__version__} (torch ") and f"timm {timm.__version__}" in res.output


@pytest.mark.slow
def test_profile_json_schema_dense_and_compressed():
    res = run("profile", "demo", "--method", "evit", "--keep-rate", "0.7", "--device", "cpu", "--batch-size", "8",
              "--repeats", "2", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for side in ("dense", "compressed"):
        for key in ("gmacs", "params", "throughput", "latency_ms", "tokens"):
            assert data[side][key] is not None, (side, key)
    assert data["compressed"]["gmacs"] < data["dense"]["gmacs"]
    # the speed-up is the median of per-round paired ratios (vitprune.measure.speed.paired), its spread beside it
    thr = data["speed"]["throughput_ratio"]
    assert data["speedup"] == thr["median"] and thr["q1"] <= thr["median"] <= thr["q3"] and thr["rounds"] == 2
    assert data["speed"]["verdict"] in ("conclusive", "machine busy: speed not conclusive")
    assert data["batch_size"] == 8 and data["dtype"] == "fp32" and data["device"] == "cpu"
    assert data["device_name"] and data["versions"]["timm"]


@pytest.mark.slow
def test_profile_table_names_device_dtype_batch_and_units():
    res = run("profile", "demo", "--no-speed")
    assert res.exit_code == 0, res.output
    assert "GMACs (papers' GFLOPs)" in res.output
    assert "fp32" in res.output and "batch 32" in res.output
    # beside a compressed model, "dense" says what it is: the same weights without the method
    res = runner.invoke(app, ["profile", "demo", "--method", "evit", "--no-speed"], env={"COLUMNS": "200"})
    assert "dense (same weights)" in res.output and "the same model without the method" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "deit_smal_patch16_224", "--no-weights"], "unknown model"),
        (["profile", "resnet18", "--no-weights"], "not a Vision Transformer"),
        (["profile", "/no/such/folder"], "does not exist"),
        (["profile", "hf-hub:nobody/not-cached"], "not in the local Hugging Face cache"),
        (["profile", "demo", "--method", "evit", "--keep-rate", "1.5", "--no-speed"], "keep-rate must be in (0, 1]"),
        (["profile", "demo", "--method", "evit", "--r", "8", "--no-speed"], "not an option of evit"),
        (["profile", "demo", "--keep-rate", "0.5", "--no-speed"], "needs --method"),
        (["compress", "demo", "--data", "/no/such/data"], "data folder /no/such/data does not exist"),
        (["compress", "demo", "--method", "evit", "--keep-rate", "0"], "keep-rate must be in (0, 1]"),
        (["eval", "demo", "--data", "/no/such/data"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_exit_1(args, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run(*args)
    assert res.exit_code == 1, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu():
    res = run("profile", "demo", "--device", "cuda")
    assert res.exit_code == 1 and "no CUDA GPU" in res.output


@pytest.mark.parametrize("bad", ["0", "-4"])
def test_bad_batch_size_is_a_usage_error(bad):
    res = run("profile", "demo", "--batch-size", bad)
    assert res.exit_code == 2
    assert "batch-size" in res.output


@pytest.mark.slow
def test_console_script_runs_as_installed():
    out = subprocess.run([sys.executable, "-m", "vitprune.cli.main", "profile", "demo", "--no-speed", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dense"]["params"] > 0
