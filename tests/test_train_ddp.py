"""Multi-process training: `torchrun --nproc_per_node 2` on CPU (Gloo) trains like one process with the same
global batch.

The comparison is set up so the two are mathematically the same computation: EViT (no random numbers in its
forward), no augmentation, no dropout or drop-path, 2 processes x 8 images vs 1 process x 16 images from the same
global order. Only the order of floating-point sums differs (gradients are averaged across processes), so the
weights agree to rounding, not bit for bit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitprune.cli.main import app
from tests.test_train_utils import digits_folder, max_diff, save_tiny_vit, weights

runner = CliRunner()


def test_two_gloo_processes_match_one_process(tmp_path):
    model = save_tiny_vit(tmp_path / "tiny", depth=4)
    data = digits_folder(tmp_path / "digits", per_class=8, val_per_class=2)
    common = ["-m", "evit", "--keep-rate", "0.7", "--data", str(data), "--epochs", "2", "--no-augment",
              "--no-speed", "--quiet", "--eval-every", "0", "--device", "cpu", "--lr", "1e-3", "--lr-batch-ref", "16"]
    single = runner.invoke(app, ["compress", str(model), *common, "-o", str(tmp_path / "one"), "--batch-size", "16"])
    assert single.exit_code == 0, single.output

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vitprune", "compress", str(model), *common, "-o", str(tmp_path / "two"),
           "--batch-size", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                          cwd=str(Path(__file__).parents[1]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    moved = max_diff(one, weights(model))
    assert moved > 1e-3  # training really changed the weights (the agreement is not trivial)
    assert max_diff(one, two) < 1e-5 < moved / 100, (max_diff(one, two), moved)
    r1 = json.loads((tmp_path / "one" / "report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "report.json").read_text())
    assert r2["train"]["processes"] == 2 and r2["train"]["global_batch"] == r1["train"]["global_batch"] == 16
    assert r2["train"]["steps"] == r1["train"]["steps"] == 10
    assert r2["compressed"]["top1"] == pytest.approx(r1["compressed"]["top1"], abs=1.0)
    # only rank 0 wrote the output and printed the table
    assert proc.stdout.count("Saved ") == 1
