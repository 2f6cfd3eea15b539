"""Run-time safety of training: a checkpoint is data and never code, a diverged run saves nothing, and the fp16
grad scaler keeps its own way of handling overflowing gradients.

The CLI cases run `vitprune compress` in a real subprocess on a tiny real ViT and the real digits."""
from __future__ import annotations

import copy
import json
import math
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.side_by_side import Started, selected
from tests.test_train_utils import digits_folder, save_tiny_vit, tiny_vit
from vitprune.methods.registry import method_names
from vitprune.train import checkpoints as ck
from tests.hostile import WritesAMarker


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    return root, save_tiny_vit(root / "tiny", depth=4), digits_folder(root / "digits", per_class=8, val_per_class=2)


def _cli(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "vitprune", *cmd], capture_output=True, text=True, env=env,
                          cwd=str(cwd), timeout=600)


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # 80 train images / batch 8 = 10 steps per epoch, 2 epochs = 20 steps
    return ["compress", str(model), "-m", "evit", "--keep-rate", "0.7", "--data", str(data), "-o", str(out),
            "--epochs", "2", "--batch-size", "8", "--no-augment", "--no-speed", "--quiet", "--eval-every", "0",
            *extra]


def _error_line(res: subprocess.CompletedProcess) -> str:
    """The one error line a failed command ends with (before it, --quiet prints progress lines)."""
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr, res.stderr[-3000:]
    assert [x for x in lines if x.startswith("Error:")] == lines[-1:], res.stderr[-3000:]
    return lines[-1]




def plant(tmp_path: Path, layout: str) -> None:
    out, marker = tmp_path / "out", tmp_path / "marker"
    planted = out / "checkpoints" / "last.pt"
    planted.parent.mkdir(parents=True)
    if layout == "torch.save":  # looks like a vitprune checkpoint: right format number, code in the fingerprint
        torch.save({"format": ck.FORMAT, "fingerprint": WritesAMarker(marker)}, planted)
    else:
        planted.write_bytes(pickle.dumps(WritesAMarker(marker)))


@pytest.fixture(scope="module")
def cli_runs(setup, tmp_path_factory, request):
    """The CLI runs of the planted-checkpoint and diverged-run tests, each in a folder of its own, started side by
    side (each spends seconds on its imports) for the cases this run selected; ``cli_runs.result(key)`` gives
    ``(folder, completed process)``."""
    _, model, data = setup
    calls = {}
    for params in selected(request, "test_a_planted_checkpoint_runs_nothing_and_is_one_line"):
        folder = tmp_path_factory.mktemp("planted")
        plant(folder, params["layout"])
        calls[params["layout"]] = lambda folder=folder: (folder, _cli(*_args(model, data, folder / "out", "--resume"),
                                                                      cwd=folder))
    if selected(request, "test_a_diverged_run_stops_before_the_step_and_keeps_the_last_good_checkpoint"):
        folder = tmp_path_factory.mktemp("diverged")
        calls["diverged"] = lambda folder=folder: (folder, _cli(*_args(model, data, folder / "diverged", "--lr", "1e5",
                                                                       "--save-every", "1"), cwd=folder))
    runs = Started(calls)
    yield runs
    runs.close()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["torch.save", "plain pickle"])
def test_a_planted_checkpoint_runs_nothing_and_is_one_line(cli_runs, layout):
    tmp_path, res = cli_runs.result(layout)  # plant()'s folder, then compress --resume in it
    out, marker = tmp_path / "out", tmp_path / "marker"
    # the payload is real: loading it the unsafe way would create the marker
    assert res.returncode == 1, res.stderr[-2000:]
    assert _error_line(res).endswith("is not a readable vitprune checkpoint (UnpicklingError); delete it to "
                                      "start over.")
    assert not marker.exists()
    assert not (out / "model.safetensors").exists()


def test_checkpoint_load_allows_numpy_random_state_for_that_load_only(tmp_path):
    path = tmp_path / "last.pt"
    model = tiny_vit()
    payload = {k: None for k in ck.KEYS}
    payload.update(model=model.state_dict(), rng=[ck.rng_state()], step=3)
    ck.save_checkpoint(path, payload)
    before = set(torch.serialization.get_safe_globals())
    c = ck.load_checkpoint(path)
    assert c["step"] == 3 and isinstance(c["rng"][0]["numpy"][1], np.ndarray)
    assert torch.equal(c["model"]["pos_embed"], model.state_dict()["pos_embed"])
    # nothing registered for later loads (torch keeps them in a set: compare as one, order is arbitrary);
    # a plain weights_only load of a NumPy array is still refused
    assert set(torch.serialization.get_safe_globals()) == before
    torch.save({"a": np.zeros(3, np.uint32)}, tmp_path / "np.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "np.pt", weights_only=True)


@pytest.mark.parametrize("name", method_names())
def test_method_state_round_trips_through_a_weights_only_checkpoint(name, tmp_path):
    """Each method saves its own training state (what on_train_progress set) as plain data; a checkpoint holding it
    is read back with weights_only and a fresh method continues from the same state."""
    from vitprune.methods import apply_method

    model = apply_method(tiny_vit(), name)
    method = model.vitprune_method
    method.on_train_progress(model, 0.9, 1.0)  # late in training: DynamicViT's top-k tail, EViT's final rate...
    state = method.state_dict()
    ck.save_checkpoint(tmp_path / "last.pt", {**{k: {} for k in ck.KEYS}, "method_state": state})
    fresh = apply_method(tiny_vit(), name).vitprune_method
    fresh.load_state_dict(ck.load_checkpoint(tmp_path / "last.pt")["method_state"])
    assert fresh.state_dict() == state
    # 0.9 of training is past each schedule's switch (EViT's keep-rate shrink ends at its keep rate)
    schedule = {"dynamicvit": {"train_topk": True}, "evit": {"train_keep_rate": 0.7},
                "evovit": {"train_layer_wise": False}, "tome": {}, "dge": {}, "sait": {}}
    if name in schedule:  # the six methods vitprune started with: their state pinned
        assert state == schedule[name]
    fresh.load_state_dict({})  # a checkpoint without the method's state: the state before any progress
    assert fresh.state_dict() == apply_method(tiny_vit(), name).vitprune_method.state_dict()


@pytest.mark.slow
def test_a_diverged_run_stops_before_the_step_and_keeps_the_last_good_checkpoint(cli_runs):
    tmp_path, res = cli_runs.result("diverged")
    out = tmp_path / "diverged"
    # lr 1e5 is 10^8 times the 1e-3 this tiny ViT trains at: the gradients turn NaN within a few steps (step 2 on
    # x86 CPUs), while the loss of that step is still finite
    assert res.returncode == 1, res.stderr[-2000:]
    msg = _error_line(res)
    assert msg.startswith("Error: training diverged at step ") and "lower --lr (now 100000)" in msg
    step = int(msg.split("at step ")[1].split("/")[0])
    c = ck.load_checkpoint(out / "checkpoints" / "last.pt")
    assert c["step"] == step - 1 and f"last checkpoint (step {step - 1}) is kept" in msg
    assert all(torch.isfinite(v).all() for v in c["model"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists() and not (out / "report.json").exists()


def _fp16_trainer(lr: float, steps_images: int = 40):
    """The trainer with fp16 autocast and a real torch GradScaler on the CPU, on the first ``steps_images`` digits
    (batch 8: 5 optimizer steps)."""
    from vitprune.data import Prepared, eval_transform, load_data
    from vitprune.methods import apply_method
    from vitprune.train.loop import RunSettings, Trainer
    from vitprune.train.recipe import build_recipe

    torch.manual_seed(0)
    teacher = tiny_vit(depth=4)
    student = apply_method(copy.deepcopy(teacher), "evit", keep_rate=0.7)
    splits = load_data("demo")
    train = Prepared(splits.train[0], splits.train[1][:steps_images], eval_transform(student))
    recipe, _ = build_recipe(student.vitprune_method.default_recipe(), {"epochs": 1, "lr": lr}, demo=False,
                             batch_size=8, augment_hints={}, augment_default=False)
    return Trainer(student, teacher, train, recipe, RunSettings(device=torch.device("cpu"), batch_size=8,
                                                                precision="fp16"))


@pytest.mark.slow
def test_fp16_overflowing_gradients_are_the_scalers_business_not_a_divergence():
    trainer = _fp16_trainer(lr=100.0)
    summary = trainer.run()
    # torch's GradScaler starts at 2**16 and halves its scale at every step whose gradients overflowed (and skips
    # that step); at lr 100 the tiny ViT's fp16 gradients overflow, and the run goes on
    assert summary.finished and trainer.scaler.get_scale() < 2.0 ** 16
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert math.isfinite(summary.history[-1]["loss"])
    json.dumps(summary.history, allow_nan=False)


def _handlers() -> dict:
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def _library_run(model: Path, data: Path, out: Path, **kw):
    import vitprune

    return vitprune.compress(str(model), "evit", data=str(data), output=str(out), keep_rate=0.7, epochs=1,
                             batch_size=8, augment=False, speed=False, eval_every=0, device="cpu", **kw)


def test_sigterm_during_a_library_call_raises_training_interrupted_and_handlers_are_put_back(setup, tmp_path):
    from vitprune.train.loop import TrainingInterrupted

    _, model, data = setup
    before = _handlers()
    during = []

    def progress(event):
        if event["event"] == "step" and event["global_step"] == 2:
            during.append(_handlers())
            assert callable(during[0][signal.SIGTERM])  # vitprune's handler, or the signal would end pytest
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal to this process, as a scheduler sends it

    with pytest.raises(TrainingInterrupted) as e:
        _library_run(model, data, tmp_path / "out", progress=progress)
    # the signal came after step 2's optimizer step had been decided: the run stops at the end of step 3
    assert e.value.signum == signal.SIGTERM and e.value.step == 3
    assert ck.load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")["step"] == 3
    assert during[0] != before and _handlers() == before  # installed for the run only


def test_a_run_in_another_thread_leaves_signal_handlers_alone(setup, tmp_path):
    import threading

    _, model, data = setup
    before, seen, errors = _handlers(), [], []

    def work():
        try:
            _library_run(model, data, tmp_path / "out", max_steps=1,
                         progress=lambda e: seen.append(_handlers()) if e["event"] == "step" else None)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(300)
    assert not errors and seen and all(h == before for h in seen) and _handlers() == before
