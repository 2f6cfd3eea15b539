"""Multi-process training: `torchrun --nproc_per_node 2` on CPU (Gloo) trains like one process with the same
global batch; SIGTERM to one process stops every process after the same step; a process group made by the
calling program is left to it; --resume works when only process 0 can read the checkpoint.

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

import vitprune
from vitprune.cli.main import app
from vitprune.train.checkpoints import load_checkpoint
from tests.test_train_utils import digits_folder, max_diff, save_tiny_vit, weights

runner = CliRunner()


def agreement(moved: float) -> float:
    """How close a 2-process run must end to the 1-process run with the same global batch: 1 % of how far training
    moved the weights. The runs differ only in float summation order (two all-reduced half-batch gradients against
    one batch's), which Adam's per-parameter normalisation can grow on parameters whose gradient is near zero
    (seen: up to 1.2e-5 of a 7.8e-3 move); a step skipped or repeated on resume moves the weights by about
    ``moved / steps`` (10 or 15 steps here: 7-10 %), so 1 % tells the two apart."""
    return moved / 100


@pytest.mark.slow
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
    assert max_diff(one, two) < agreement(moved), (max_diff(one, two), moved)
    r1 = json.loads((tmp_path / "one" / "report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "report.json").read_text())
    assert r2["train"]["processes"] == 2 and r2["train"]["global_batch"] == r1["train"]["global_batch"] == 16
    assert r2["train"]["steps"] == r1["train"]["steps"] == 10
    assert r2["compressed"]["top1"] == pytest.approx(r1["compressed"]["top1"], abs=1.0)
    # only rank 0 wrote the output and printed the table
    assert proc.stdout.count("Saved ") == 1


def _torchrun(script_args: list[str], env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "ddp_host_program.py"), *script_args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(Path(__file__).parents[1]))


def _worker_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=``rank`` (from /proc: its parent and environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under process {launcher}")


def _first_checkpoint(base: Path, proc: subprocess.Popen) -> Path:
    """Wait until rank 0 of the run in ``base`` has written its first checkpoint."""
    import time

    ckpt = base / "node0" / "checkpoints" / "last.pt"
    t0 = time.time()
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 300, "no checkpoint appeared"
        time.sleep(0.02)
    return ckpt


def _statuses(base: Path) -> list[dict]:
    return [json.loads((base / f"status-{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step_and_resume_reads_process_0s_checkpoint(tmp_path):
    """A host program owning its Gloo group runs vitprune.compress in 2 processes, each with its own output folder
    (two nodes' local disks). SIGTERM to rank 1 only: both stop after the same step, rank 0 saves, the host's
    group still works. --resume: only rank 0 can read the checkpoint; rank 1 gets it from rank 0 and the run
    ends with the weights of one uninterrupted process with the same global batch."""
    import signal

    model = save_tiny_vit(tmp_path / "tiny", depth=4)
    data = digits_folder(tmp_path / "digits", per_class=8, val_per_class=2)
    # as in the test above: EViT without augmentation, so 2 x 8 images per step = 1 x 16 up to rounding;
    # 80 images / 16 per step x 3 epochs = 15 steps
    common = {"model": str(model), "method": "evit", "keep_rate": 0.7, "data": str(data), "epochs": 3,
              "augment": False, "speed": False, "eval_every": 0, "device": "cpu",
              "recipe": {"lr": 1e-3, "lr_batch_ref": 16}}
    single = vitprune.compress(output=str(tmp_path / "one"), batch_size=16, **common)
    assert single.finished and single.steps == 15

    base = tmp_path / "two"
    base.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    run = {**common, "base": str(base), "batch_size": 8, "save_every": 1}
    proc = _torchrun([json.dumps(run)], env)
    ckpt = _first_checkpoint(base, proc)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    first = _statuses(base)
    step = first[0].get("interrupted_at")
    assert step is not None and 1 <= step < 15, (first, err[-3000:])
    assert first[1] == {**first[0], "rank": 1}  # same step, same signal, the group usable on both
    assert first[0]["signum"] == signal.SIGTERM and first[0]["group_sum"] == 3.0
    assert load_checkpoint(ckpt)["step"] == step
    assert not (base / "node1" / "checkpoints").exists()  # only rank 0 writes

    for f in base.glob("status-*.json"):
        f.unlink()
    proc = _torchrun([json.dumps({**run, "resume": True})], env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    done = _statuses(base)
    assert [d.get("steps") for d in done] == [15, 15] and all(d["finished"] for d in done), done
    assert all(d["group_sum"] == 3.0 for d in done)
    assert not (base / "node1" / "model.safetensors").exists()
    one, two = weights(tmp_path / "one"), weights(base / "node0")
    moved = max_diff(one, weights(model))
    assert max_diff(one, two) < agreement(moved), (max_diff(one, two), moved)


@pytest.mark.slow
def test_sigterm_to_the_torchrun_launcher_stops_every_process_at_one_step(tmp_path):
    """What a scheduler usually signals is the launcher: torchrun passes SIGTERM on to every worker (and gives them
    a grace period); they stop after the same step with a checkpoint."""
    import signal

    model = save_tiny_vit(tmp_path / "tiny", depth=4)
    data = digits_folder(tmp_path / "digits", per_class=8, val_per_class=2)
    base = tmp_path / "run"
    base.mkdir()
    # 80 images / (2 x 8) per step x 3 epochs = 15 steps
    run = {"base": str(base), "model": str(model), "method": "evit", "keep_rate": 0.7, "data": str(data),
           "epochs": 3, "batch_size": 8, "save_every": 1, "augment": False, "speed": False, "eval_every": 0,
           "device": "cpu"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = _torchrun([json.dumps(run)], env)
    ckpt = _first_checkpoint(base, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    status = _statuses(base)
    step = status[0].get("interrupted_at")
    assert step is not None and 1 <= step < 15, (status, err[-3000:])
    assert status[1] == {**status[0], "rank": 1} and status[0]["signum"] == signal.SIGTERM
    assert load_checkpoint(ckpt)["step"] == step
