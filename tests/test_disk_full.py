"""A write that finds no room (disk full, quota, file size limit) is one line, exit 1, and leaves the previous model
as it was: the compress checkpoint write and the ONNX export, run for real in a subprocess whose file size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored so a write past it fails with EFBIG as a full disk fails with ENOSPC) is
smaller than the file being written. No root, no mount needed."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vitprune

from .side_by_side import Started, selected
from .test_train_utils import digits_folder, save_tiny_vit

ROOT = Path(__file__).resolve().parents[1]


def run_capped(argv: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "VITPRUNE_TEST_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vitprune", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=cap)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """This module's processes, each prepared in a folder of its own by the ``prepare_*`` function beside its test
    and started side by side (each spends seconds on its imports) for the tests this run selected; a test checks
    its own with ``runs.result(name)``, which gives ``(folder, completed process)``."""
    calls = {}
    for test, prepare in PREPARE.items():
        if selected(request, test):
            folder = tmp_path_factory.mktemp("capped")
            start = prepare(folder)
            calls[test] = lambda folder=folder, start=start: (folder, start())
    started = Started(calls)
    yield started
    started.close()


def digest(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("config.json", "model.safetensors")}


def error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and res.stderr.strip().endswith(errors[0]), res.stderr[-3000:]
    return errors[0]


def prepare_checkpoint(tmp_path):
    model = save_tiny_vit(tmp_path / "tiny", depth=2)
    data = digits_folder(tmp_path / "digits", per_class=4, val_per_class=1)
    out = save_tiny_vit(tmp_path / "out", depth=2)
    (tmp_path / "before.json").write_text(json.dumps(digest(out)))
    return lambda: run_capped(["compress", str(model), "-m", "evit", "--keep-rate", "0.7", "--data", str(data), "-o",
                               str(out), "--epochs", "1", "--batch-size", "8", "--no-speed", "-q", "--eval-every",
                               "0", "--overwrite"], tmp_path, 20_000)


@pytest.mark.slow
def test_a_full_disk_at_the_checkpoint_is_one_line_and_keeps_the_old_model(runs):
    """The tiny model's weights are ~250 KB and a checkpoint (weights, optimizer moments) ~3x that; a 20 KB limit
    lets the lock, logs and small files through and stops the first checkpoint."""
    tmp_path, res = runs.result("test_a_full_disk_at_the_checkpoint_is_one_line_and_keeps_the_old_model")
    out = tmp_path / "out"  # prepare_checkpoint's folder and run
    before = json.loads((tmp_path / "before.json").read_text())
    line = error_line(res)
    assert f"cannot write to {out}: File too large (the disk is full or a size limit was reached)" in line, line
    assert digest(out) == before
    assert vitprune.load(out).num_classes == vitprune.load(tmp_path / "tiny").num_classes


def prepare_export(tmp_path):
    model = save_tiny_vit(tmp_path / "tiny", depth=2)
    old = tmp_path / "model.onnx"
    old.write_bytes(b"the previous export")
    return lambda: run_capped(["export", str(model), "-o", str(old)], tmp_path, 20_000)


@pytest.mark.slow
def test_a_full_disk_during_export_is_one_line_and_keeps_the_old_file(runs):
    tmp_path, res = runs.result("test_a_full_disk_during_export_is_one_line_and_keeps_the_old_file")
    old = tmp_path / "model.onnx"  # prepare_export's folder and run
    line = error_line(res)
    assert "cannot write the ONNX file: File too large" in line, line
    assert old.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".vitprune-export-")] == []


def prepare_library_save(tmp_path):
    out = save_tiny_vit(tmp_path / "out", depth=2)
    (tmp_path / "before.json").write_text(json.dumps(digest(out)))
    code = ("import resource, signal, sys\n"
            "import vitprune\n"
            "from tests.test_train_utils import tiny_vit\n"
            "model = tiny_vit(depth=2)\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n"
            "try:\n"
            "    vitprune.save(model, sys.argv[1])\n"
            "except vitprune.errors.OutputFolderError as e:\n"
            "    print(e)\n"
            "    sys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VITPRUNE_TEST_THREADS": "1"}
    return lambda: subprocess.run([sys.executable, "-c", code, str(out)], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)


@pytest.mark.slow
def test_vitprune_save_on_a_full_disk_is_one_error_and_keeps_the_old_model(runs):
    """The library's own save (not only the CLI): the tiny model's weights (~250 KB) do not fit under a 20 KB file
    size limit; the error is an OutputFolderError in one line and the folder still holds the model saved before."""
    tmp_path, res = runs.result("test_vitprune_save_on_a_full_disk_is_one_error_and_keeps_the_old_model")
    out = tmp_path / "out"  # prepare_library_save's folder and run
    before = json.loads((tmp_path / "before.json").read_text())
    assert res.returncode == 3, res.stderr[-3000:]
    line = res.stdout.strip()
    assert "\n" not in line and line.startswith(f"cannot save into {out}: File too large"), line
    assert digest(out) == before


PREPARE = {  # test -> its prepare function: folder -> a call that runs the process
    "test_a_full_disk_at_the_checkpoint_is_one_line_and_keeps_the_old_model": prepare_checkpoint,
    "test_a_full_disk_during_export_is_one_line_and_keeps_the_old_file": prepare_export,
    "test_vitprune_save_on_a_full_disk_is_one_error_and_keeps_the_old_model": prepare_library_save,
}
