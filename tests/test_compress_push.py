"""`vitprune compress ... --push-to user/name` as a user runs it (a real process, the loopback Hub of tests/fakehub.py):
SaiT is trained, its adaptive threshold is calibrated on training images, the folder is saved with the command in
report.json and the card, then uploaded; a failed upload is one line, exit 1, and the saved folder stays."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import vitprune
from tests.conftest import assert_card_reproduces
from tests.fakehub import FakeHub
from tests.test_push import TOKEN, cli_env, run_cli
from tests.test_train_utils import digits_folder
from vitprune.hub import read_vitprune_section

REPO = "alice/demo-sait"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits") / "d", per_class=8, val_per_class=3)


def compress_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", "demo", "--method", "sait", "--data", str(data), "--output", str(out), "--epochs", "1",
            "--batch-size", "16", "--no-speed", "--quiet", *extra]


@pytest.mark.slow
def test_compress_calibrates_records_the_command_and_pushes(data, tmp_path):
    out = tmp_path / "sait"
    with FakeHub(TOKEN) as hub:
        args = compress_args(data, out, "--push-to", REPO)
        res = run_cli(args, cli_env(tmp_path, hub.url))
        everything = res.stdout + res.stderr
        assert res.returncode == 0, everything
        assert TOKEN not in everything
        assert f"Pushed: {hub.url}/{REPO}" in res.stdout
        files = hub.files(REPO)

    report = json.loads((out / "report.json").read_text())
    # the command as typed, but the data and output folders (outside the working folder) by their own names
    assert report["command"] == "vitprune " + " ".join(args).replace(str(data), data.name).replace(str(out), out.name)
    assert str(tmp_path) not in report["command"]
    calib = report["calibration"]
    section = read_vitprune_section(out)
    # the threshold found on training images is the saved default, and it does cut GMACs by about the target
    assert section["options"]["threshold"] == pytest.approx(calib["threshold"]) and 0 < calib["threshold"] < 1
    assert report["compressed"]["gmacs"] < report["dense"]["gmacs"]
    assert "calibrated on training images: " in res.stderr + res.stdout

    card = files["README.md"].decode()
    assert_card_reproduces(card, report["command"])
    assert f'vitprune.load("hf-hub:{REPO}")' in card
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert json.loads(files["config.json"]) == json.loads((out / "config.json").read_text())
    assert vitprune.load(out).vitprune_method.options.threshold == pytest.approx(calib["threshold"])


@pytest.mark.slow
def test_an_explicit_threshold_is_kept_and_a_failed_push_leaves_the_saved_folder(data, tmp_path):
    out = tmp_path / "sait"
    with FakeHub(TOKEN) as hub:
        hub.fail["create"] = (503, "maintenance")
        res = run_cli(compress_args(data, out, "--threshold", "0.9", "--push-to", REPO), cli_env(tmp_path, hub.url))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and TOKEN not in res.stdout + res.stderr
    assert "503" in lines[-1] and f"push it later with `vitprune push {out} --repo {REPO}`" in lines[-1]
    assert (out / "model.safetensors").is_file() and (out / "report.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert "calibration" not in report and read_vitprune_section(out)["options"]["threshold"] == 0.9
