"""Experiment logs and keep-best on real tiny runs: TensorBoard event files that TensorBoard's own reader reads back
with the val top-1 of every epoch, timm-style summary.csv rows, the best val top-1 epoch's weights saved (also
across --resume), and one line when a logger's package is missing."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vitprune.cli.main import app
from tests.test_train_utils import digits_folder, same_weights, save_tiny_vit, weights

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    model = save_tiny_vit(root / "tiny", depth=4)
    data = digits_folder(root / "digits", per_class=8, val_per_class=3)
    return root, model, data


def args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # 80 train images / batch 8 = 10 steps per epoch, 3 epochs; validation after every epoch (30 val images)
    return ["compress", str(model), "-m", "dynamicvit", "--keep-rate", "0.7", "--data", str(data), "-o", str(out),
            "--epochs", "3", "--batch-size", "8", "--lr", "2e-3", "--lr-batch-ref", "8", "--no-speed", "--quiet",
            *extra]


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def _events(folder: Path):
    """TensorBoard's own reader over the event files in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def _tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in _events(folder).Scalars(tag)]


def _check_keep_best(out: Path, log: list[dict]) -> None:
    """The saved model is the best.pt weights, and that is the first epoch with the highest logged val top-1."""
    report = json.loads((out / "report.json").read_text())
    tops = [line["val_top1"] for line in log]
    assert report["best_epoch"] == tops.index(max(tops)) + 1 and report["best_val_top1"] == max(tops)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == report["best_epoch"]
    saved = weights(out)
    assert same_weights(saved, {k: v for k, v in best["model"].items() if k in saved})
    # the final evaluation runs the same val images through the same weights as that epoch's validation
    assert report["compressed"]["top1"] == pytest.approx(report["best_val_top1"], abs=1e-9)


@pytest.mark.slow
def test_tensorboard_csv_and_keep_best(setup):
    root, model, data = setup
    out = root / "run"
    res = runner.invoke(app, args(model, data, out, "--keep-best", "--keep-checkpoints", "--logger",
                                  "tensorboard,csv"))
    assert res.exit_code == 0, res.output
    log = _log(out)
    assert [line["epoch"] for line in log] == [1, 2, 3]
    top1 = _tb_scalars(out / "logs", "val/top1")
    assert top1 == [(line["epoch"], pytest.approx(line["val_top1"], rel=1e-6)) for line in log]
    assert [s for s, _ in _tb_scalars(out / "logs", "train/loss")] == [1, 2, 3]
    assert {"train/kd", "train/cls", "train/lr", "train/img_per_s"} <= set(_events(out / "logs").Tags()["scalars"])
    with open(out / "logs" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_cls", "train_kd", "lr", "val_top1", "val_top5", "img_per_s"} <= set(rows[0])
    for r, line in zip(rows, log):
        assert float(r["val_top1"]) == pytest.approx(line["val_top1"]) and float(r["lr"]) == line["lr"]
        assert float(r["train_loss"]) == pytest.approx(line["loss"])
    _check_keep_best(out, log)


@pytest.mark.slow
def test_keep_best_and_logs_survive_resume(setup):
    """Stopped in the middle of epoch 2 and resumed: the best epoch is still the argmax of the whole curve, and
    the CSV and TensorBoard hold every epoch once."""
    root, model, data = setup
    out = root / "resumed"
    extra = ("--keep-best", "--keep-checkpoints", "--logger", "csv", "--logger", "tensorboard")
    res = runner.invoke(app, args(model, data, out, *extra, "--max-steps", "15"))
    assert res.exit_code == 0 and "Stopped after 15/30" in res.output, res.output
    assert (out / "checkpoints" / "best.pt").is_file()  # epoch 1 was validated
    res = runner.invoke(app, args(model, data, out, *extra, "--resume"))
    assert res.exit_code == 0, res.output
    log = _log(out)
    with open(out / "logs" / "summary.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    assert [s for s, _ in _tb_scalars(out / "logs", "val/top1")] == [1, 2, 3]
    _check_keep_best(out, log)


def test_keep_best_needs_validation_and_an_unknown_logger_is_one_line(setup):
    root, model, data = setup
    res = runner.invoke(app, args(model, data, root / "x", "--keep-best", "--eval-every", "0"))
    assert res.exit_code == 1 and "--keep-best" in res.output and "--eval-every" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, args(model, data, root / "x", "--logger", "tensorbord"))
    assert res.exit_code == 1 and res.output.strip().startswith("Error: --logger 'tensorbord'"), res.output


@pytest.mark.slow
@pytest.mark.parametrize("logger, module, extra", [("tensorboard", "tensorboard", "vitprune[logs]"),
                                                   ("wandb", "wandb", "pip install wandb")])
def test_a_missing_logger_package_is_one_line_naming_how_to_install_it(tmp_path, logger, module, extra):
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from vitprune.cli.main import main\n"
            f"sys.argv = ['vitprune', 'compress', '--logger', {logger!r}, '-o', {str(tmp_path / 'o')!r}]\n"
            "main()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: --logger {logger} needs the {module} package")
    assert extra in lines[0]
    assert not (tmp_path / "o").exists()  # refused before anything was made


# ------------------------------------------------------------------------------------------ wandb (offline)

def wandb_records(run_file: Path) -> list:
    """The records of a wandb run file (``run-ID.wandb``), read as wandb writes it: a 7-byte header (``:W&B``,
    magic 0xBEE1, version 0), then LevelDB's log format (32 KiB blocks of chunks: crc32c, length, type
    1 full / 2 first / 3 middle / 4 last), each record one protobuf ``Record`` of wandb's own schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B" and int.from_bytes(raw[4:6], "little") == 0xBEE1 and raw[6] == 0
    records, pos, part = [], 7, b""
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        data = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding to the end of the block
            pos += 32768 - pos % 32768 if pos % 32768 else 0
            continue
        part = data if kind in (1, 2) else part + data
        if kind in (1, 4):
            records.append(pb.Record.FromString(part))
    return records


def _connects(trace: Path) -> list[str]:
    """The connect() calls in an strace log that reach out of the machine (not a Unix socket, not loopback)."""
    calls = [line for line in trace.read_text().splitlines() if "connect(" in line]
    return [c for c in calls if "AF_UNIX" not in c and "127.0.0.1" not in c and '"::1"' not in c]


def _strace_works() -> bool:
    import shutil

    if shutil.which("strace") is None:
        return False
    # --seccomp-bpf: only the traced calls stop the process (a run traced call by call takes three times as long)
    return subprocess.run(["strace", "-f", "--seccomp-bpf", "-e", "trace=connect", "-o", os.devnull, "true"],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_wandb_offline_run_holds_what_the_csv_holds_and_nothing_private(setup, tmp_path):
    """A real run with ``--logger wandb,csv`` in wandb's offline mode (a real subprocess, as a user runs it):
    wandb's run file, read back record by record, holds per epoch the training loss and its parts, the lr, val
    top-1/top-5/loss and images/s with the values of the CSV of the same run; the run is kept in ``$WANDB_DIR``;
    no wandb message reaches the terminal; nothing in the run folder names the user's paths; and (where strace
    can watch it) no process of the run opens a network connection."""
    pytest.importorskip("wandb")
    root, model, data = setup
    out, wandb_dir = tmp_path / "run", tmp_path / "wandb-home"
    wandb_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_PROJECT": "vitprune-test",
                "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    cmd = [sys.executable, "-m", "vitprune", *args(model, data, out, "--epochs", "2", "--logger", "wandb,csv")]
    trace = tmp_path / "connects.txt"
    if _strace_works():
        cmd = ["strace", "-f", "--seccomp-bpf", "-e", "trace=connect", "-o", str(trace), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wandb:" not in proc.stdout + proc.stderr  # wandb's messages print the run folder's path
    if trace.exists():
        assert _connects(trace) == [], _connects(trace)[:3]

    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and not (out / "logs" / "wandb").exists()  # $WANDB_DIR is honoured
    run_id = (out / "logs" / "wandb-id").read_text().strip()
    records = wandb_records(runs[0] / f"run-{run_id}.wandb")
    assert {r.run.run_id for r in records if r.HasField("run")} == {run_id}
    assert {r.run.project for r in records if r.HasField("run")} == {"vitprune-test"}
    history = {}
    for r in records:
        if r.HasField("history"):
            row = {"/".join([i.key] if i.key else list(i.nested_key)): json.loads(i.value_json)
                   for i in r.history.item}
            history[r.history.step.num] = row
    with open(out / "logs" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(history) == [int(r["epoch"]) for r in rows] == [1, 2]
    # the CSV's columns and wandb's keys (train_x -> train/x, val_x -> val/x, lr and img_per_s under train/)
    names = {"train_loss": "train/loss", "train_cls": "train/cls", "train_kd": "train/kd", "lr": "train/lr",
             "val_top1": "val/top1", "val_top5": "val/top5", "val_loss": "val/loss", "img_per_s": "train/img_per_s"}
    assert set(names) <= set(rows[0])
    for row in rows:
        logged = history[int(row["epoch"])]
        assert logged["epoch"] == int(row["epoch"])
        for column, key in names.items():  # the CSV writes Python's repr of the same float
            assert logged[key] == float(row[column]), (key, logged[key], row[column])
        method_parts = {k for k in row if k.startswith("train_")} - {"train_loss", "train_cls", "train_kd"}
        assert {f"train/{k[6:]}" for k in method_parts} <= set(logged)

    # the user's folders (what wandb's run metadata, console capture and messages would hold)
    private = [str(p) for p in (root, tmp_path, Path.home(), Path.cwd())]
    for f in runs[0].rglob("*"):
        if f.is_file() and f.parent.name != "logs":  # logs/debug*.log: wandb's local debug logs, never uploaded
            text = f.read_bytes()
            assert not [p for p in private if p.encode() in text], f.name
