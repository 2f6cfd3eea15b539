"""Checkpoints and --resume: a run killed with SIGKILL, interrupted with Ctrl-C (SIGINT), stopped by SIGTERM (to the
process, or to every process of the job as SLURM does), or stopped by --max-steps in the middle of an epoch, then
resumed, ends with exactly the weights of an uninterrupted run (bit for bit on CPU).

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
from vitprune.train.checkpoints import load_checkpoint
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
    return int(load_checkpoint(path)["step"])


def resume_to_the_reference(model, data, out, reference) -> None:
    """--resume the stopped run in ``out``: it finishes with the uninterrupted run's weights."""
    res = runner.invoke(app, args(model, data, out, "--save-every", "1", "--resume"))
    assert res.exit_code == 0, res.output
    assert same_weights(weights(out), reference[0]), max_diff(weights(out), reference[0])


@pytest.mark.slow
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


def _spawn(cmd: list[str], new_session: bool = False) -> subprocess.Popen:
    # as many threads as this process: float sums differ with the thread count, and the resumed half of the run
    # happens in this process
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "vitprune.cli.main", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(Path(__file__).parents[1]),
                            start_new_session=new_session)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.02)


def _signal_after_a_checkpoint(model, data, out, sig, *extra: str,
                               whole_group: bool = False) -> tuple[subprocess.Popen, str, str]:
    """Start a run that checkpoints every step, send ``sig`` once a checkpoint exists (to the process, or with
    ``whole_group`` to it and every process it started, as SLURM signals a job), wait for the process."""
    proc = _spawn(args(model, data, out, "--save-every", "1", *extra), new_session=whole_group)
    _wait_for(out / "checkpoints" / "last.pt", proc)
    if whole_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc, stdout, stderr


def _stopped_with_one_line(proc, stderr: str, out: Path, code: int, first_words: str) -> None:
    """The run exited with ``code`` and ended with one line naming the checkpoint's step and --resume."""
    assert proc.returncode == code, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(first_words) and "--resume" in last
    assert "Traceback" not in stderr
    step = _ckpt_step(out / "checkpoints" / "last.pt")
    assert f"step {step}/20" in last


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(setup, reference):
    root, model, data = setup
    out = root / "killed"
    proc, _, _ = _signal_after_a_checkpoint(model, data, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    step = _ckpt_step(out / "checkpoints" / "last.pt")
    assert 1 <= step < 20
    resume_to_the_reference(model, data, out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, words", [
    (signal.SIGINT, 130, "Interrupted: interrupted at step "),  # Ctrl-C; 128 + the signal number, as shells do
    (signal.SIGTERM, 143, "Interrupted: stopped by SIGTERM at step "),  # SLURM, Kubernetes, torchrun
])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_exits_with_one_line_and_resumes_bit_identical(setup, reference, sig,
                                                                                             code, words):
    root, model, data = setup
    out = root / f"signal{int(sig)}"
    proc, stdout, stderr = _signal_after_a_checkpoint(model, data, out, sig)
    _stopped_with_one_line(proc, stderr, out, code, words)
    resume_to_the_reference(model, data, out, reference)


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_job_with_loader_workers(setup, reference):
    """SLURM signals every process of a job step, DataLoader workers included: the workers must not die under the
    main process, which finishes its step and saves."""
    root, model, data = setup
    out = root / "sigterm-all"
    proc, stdout, stderr = _signal_after_a_checkpoint(model, data, out, signal.SIGTERM, "--workers", "1",
                                                      whole_group=True)
    _stopped_with_one_line(proc, stderr, out, 143, "Interrupted: stopped by SIGTERM at step ")
    resume_to_the_reference(model, data, out, reference)  # augmentation does not depend on the worker count


@pytest.mark.slow
def test_temp_files_of_a_killed_checkpoint_write_are_removed_on_the_next_start(setup):
    root, model, data = setup
    out = root / "leftovers"
    assert runner.invoke(app, args(model, data, out, "--max-steps", "2")).exit_code == 0
    folder = out / "checkpoints"
    half = (folder / "last.pt").read_bytes()[:4096]  # a write killed part of the way: a partial file, temp name
    leftovers = [folder / ".last.pt.tmp-0a1b2c3d", folder / ".teacher.pt.tmp-ffff0000"]
    # not temp files of a checkpoint write in this folder: left alone
    others = [folder / ".notes.txt.tmp-0a1b2c3d", folder / "last.pt.tmp-0a1b2c3d", folder / ".last.pt.tmp-0a1b",
              folder / "mine.pt", out / ".last.pt.tmp-0a1b2c3d"]
    for f in leftovers + others:
        f.write_bytes(half)
    res = runner.invoke(app, args(model, data, out, "--resume", "--max-steps", "3"))
    assert res.exit_code == 0, res.output
    assert _ckpt_step(folder / "last.pt") == 3
    assert not any(f.exists() for f in leftovers) and all(f.exists() for f in others)


@pytest.mark.slow
def test_resume_refuses_other_settings_and_missing_checkpoints(setup, reference):
    root, model, data = setup
    out = root / "other"
    res = runner.invoke(app, args(model, data, out, "--resume"))
    assert res.exit_code == 1 and "no checkpoint" in res.output
    assert runner.invoke(app, args(model, data, out, "--max-steps", "2")).exit_code == 0
    res = runner.invoke(app, [*args(model, data, out, "--resume"), "--lr", "0.1"])
    assert res.exit_code == 1 and "other settings" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_checkpoint_with_malformed_contents_is_one_line(setup):
    root, model, data = setup
    out = root / "malformed"
    assert runner.invoke(app, args(model, data, out, "--max-steps", "1")).exit_code == 0
    path = out / "checkpoints" / "last.pt"
    c = load_checkpoint(path)
    c["rng"] = [{"python": "not a random state"}]  # right settings, contents that do not fit
    torch.save(c, path)
    res = runner.invoke(app, args(model, data, out, "--resume"))
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert [x for x in lines if x.startswith("Error:")] == lines[-1:] and "cannot be resumed" in lines[-1]
