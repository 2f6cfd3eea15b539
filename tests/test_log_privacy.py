"""Experiment logs do not name the machine: wandb's run record carries no host name (wandb fills an unset one from
``socket.gethostname()`` whatever its metadata settings), and TensorBoard's event files lose the host and process
id TensorBoard puts in their names once closed, and still read back with TensorBoard's own reader."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.side_by_side import Started, selected
from tests.test_train_logs import _tb_scalars, wandb_records

ROOT = Path(__file__).resolve().parents[1]

#: one run's loggers, two epochs, as the trainer drives them (open, log after each epoch, close)
DRIVER = """
import sys
from pathlib import Path
from vitprune.train.loggers import Loggers
history = []
logs = Loggers(sys.argv[1].split(","), Path(sys.argv[2]), config={"lr": 0.001}, run_name="privacy")
logs.open()
for epoch in (1, 2):
    history.append({"epoch": epoch, "loss": 1.0 / epoch, "lr": 0.001, "val_top1": 50.0 + epoch})
    logs.log(history)
logs.close()
"""


def run_loggers(names: str, folder: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-c", DRIVER, names, str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def names_with_host(folder: Path) -> list[str]:
    host = socket.gethostname()
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if host in p.name.split(".") or host in p.name.split("-")]


WANDB = "test_the_wandb_run_record_has_no_host_name"
TENSORBOARD = "test_tensorboard_event_files_carry_no_host_or_pid"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """Each selected test's driver runs, each test in a folder of its own, the two tests' side by side (each
    process spends seconds on its imports); ``runs.result(test)`` waits for that test's runs and gives its folder.
    The TensorBoard test's two runs stay one after the other (the second is a resume beside the first)."""
    def wandb(tmp_path):
        run_loggers("wandb", tmp_path / "logs", tmp_path)
        return tmp_path

    def tensorboard(tmp_path):
        run_loggers("tensorboard", tmp_path / "logs", tmp_path)
        run_loggers("tensorboard", tmp_path / "logs", tmp_path)  # a second run (a resume) writes a second file
        return tmp_path

    calls = {}
    for test, module, call in ((WANDB, "wandb", wandb), (TENSORBOARD, "tensorboard", tensorboard)):
        if selected(request, test) and _importable(module):
            folder = tmp_path_factory.mktemp("logs")
            calls[test] = lambda call=call, folder=folder: call(folder)
    started = Started(calls)
    yield started
    started.close()


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
def test_the_wandb_run_record_has_no_host_name(runs):
    pytest.importorskip("wandb")
    tmp_path = runs.result(WANDB)  # run_loggers("wandb", tmp_path / "logs", tmp_path) has run
    folder = tmp_path / "logs"
    run_file = next((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = [r.run for r in wandb_records(run_file) if r.HasField("run")]
    assert runs and all(r.host == "" for r in runs), [r.host for r in runs]
    assert socket.gethostname().encode() not in b"".join(r.SerializeToString() for r in runs)
    assert names_with_host(folder) == []


@pytest.mark.slow
def test_tensorboard_event_files_carry_no_host_or_pid(runs):
    pytest.importorskip("tensorboard")
    folder = runs.result(TENSORBOARD) / "logs"  # two tensorboard runs into it, one after the other
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2 and all(".vitprune." in f for f in files), files
    assert names_with_host(folder) == []
    assert [step for step, _ in _tb_scalars(folder, "val/top1")] == [1, 2, 1, 2]
