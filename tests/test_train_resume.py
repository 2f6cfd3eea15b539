"""Checkpoints and --resume: a run killed with SIGKILL, interrupted with Ctrl-C (SIGINT), or stopped by --max-steps
in the middle of an epoch, then resumed, ends with exactly the weights of an uninterrupted run (bit for bit on CPU).

The run under test is DynamicViT (Gumbel noise in every training forward) with random augmentation, so equality
also shows that the random states and the data order are restored, not only the weights and optimizer."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vitprune.cli.main import app
from tests.test_train_utils import digits_folder, max_diff, same_weights, save_tiny_vit, weights

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = save_tiny_vit(root / "tiny", depth=4)
    data = digits_folder(root / "digits", per_class=8, val_per_class=2)
    return root, model, data


def args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # 80 train images / batch 8 = 10 steps per epoch, 2 epochs = 20 steps; augmentation on (random crops)
    return ["compress", str(model), "-m", "dynamicvit", "--keep-rate", "0.7", "--data", str(data), "-o", str(out),
            "--epochs", "2", "--batch-size", "8", "--scale", "0.6,1", "--no-speed", "--quiet", "--eval-every", "0",
            *extra]


@pytest.fixture(scope="module")
def reference(setup):
    root, model, data = setup
    res = runner.invoke(app, args(model, data, root / "ref"))
    assert res.exit_code == 0, res.output
    return weights(root / "ref"), root / "ref"


def _log(folder: Path) -> list[dict]:
    lines = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in d.items() if k not in ("seconds", "img_per_s")} for d in lines]


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def resume_to_the_reference(model, data, out, reference) -> None:
    """--resume the stopped run in ``out``: it finishes with the uninterrupted run's weights."""
    res = runner.invoke(app, args(model, data, out, "--save-every", "1", "--resume"))
    assert res.exit_code == 0, res.output
    assert same_weights(weights(out), reference[0]), max_diff(weights(out), reference[0])


def test_max_steps_stop_mid_epoch_then_resume_is_bit_identical(setup, reference):
    root, model, data = setup
    out = root / "maxsteps"
    res = runner.invoke(app, args(model, data, out, "--max-steps", "13"))
    assert res.exit_code == 0, res.output
    assert "Stopped after 13/20 steps" in res.output
    assert _ckpt_step(out / "checkpoints" / "last.pt") == 13  # in the middle of epoch 2
    assert not (out / "model.safetensors").exists()
    # the same command again without --resume refuses to overwrite the unfinished run
    again = runner.invoke(app, args(model, data, out))
    assert again.exit_code == 1 and "unfinished run" in again.output
    res = runner.invoke(app, args(model, data, out, "--resume"))
    assert res.exit_code == 0, res.output
    assert same_weights(weights(out), reference[0]), max_diff(weights(out), reference[0])
    assert _log(out) == _log(reference[1])  # per-epoch losses too, the interrupted epoch included
    assert not (out / "checkpoints").exists()  # cleaned up after the finished save


def _spawn(cmd: list[str]) -> subprocess.Popen:
    # as many threads as this process: float sums differ with the thread count, and the resumed half of the run
    # happens in this process
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "vitprune.cli.main", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(Path(__file__).parents[1]))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.02)


def _signal_after_a_checkpoint(model, data, out, sig) -> tuple[subprocess.Popen, str, str]:
    """Start a run that checkpoints every step, send ``sig`` once a checkpoint exists, wait for the process."""
    proc = _spawn(args(model, data, out, "--save-every", "1"))
    _wait_for(out / "checkpoints" / "last.pt", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc, stdout, stderr


def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(setup, reference):
    root, model, data = setup
    out = root / "killed"
    proc, _, _ = _signal_after_a_checkpoint(model, data, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    step = _ckpt_step(out / "checkpoints" / "last.pt")
    assert 1 <= step < 20
    resume_to_the_reference(model, data, out, reference)


def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_one_line(setup, reference):
    root, model, data = setup
    out = root / "sigint"
    proc, stdout, stderr = _signal_after_a_checkpoint(model, data, out, signal.SIGINT)
    assert proc.returncode == 130, (stdout, stderr)
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Interrupted: interrupted at step ") and "--resume" in last
    assert "Traceback" not in stderr
    step = _ckpt_step(out / "checkpoints" / "last.pt")
    assert f"step {step}/20" in last
    resume_to_the_reference(model, data, out, reference)


def test_resume_refuses_other_settings_and_missing_checkpoints(setup, reference):
    root, model, data = setup
    out = root / "other"
    res = runner.invoke(app, args(model, data, out, "--resume"))
    assert res.exit_code == 1 and "no checkpoint" in res.output
    assert runner.invoke(app, args(model, data, out, "--max-steps", "2")).exit_code == 0
    res = runner.invoke(app, [*args(model, data, out, "--resume"), "--lr", "0.1"])
    assert res.exit_code == 1 and "other settings" in res.output and len(res.output.strip().splitlines()) == 1
