"""What `vitprune compress` writes and publishes says nothing about the machine: a run given absolute paths under a
home folder (model, data, output), stopped and resumed, then pushed to the loopback Hub of tests/fakehub.py, leaves
no absolute path and no home folder in any file it wrote or uploaded; the card names the base model by what it is,
and its Reproduce command is the original one, redacted, without --resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.conftest import assert_card_reproduces
from tests.fakehub import FakeHub
from tests.test_train_utils import corrupt_png, digit_images, save_tiny_vit, write_folder
from vitprune.report.redact import public_command, public_model, public_path, scrub

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_FAKEtokenVitprunePrivacy5e1b"
REPO = "alice/tiny-evit"


def run(args: list[str], cwd: Path, home: Path, endpoint: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update({"PYTHONPATH": str(ROOT), "HOME": str(home), "HF_HOME": str(home / ".cache" / "huggingface"),
                "HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "2"})
    return subprocess.run([sys.executable, "-m", "vitprune", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_nothing_private_is_written_or_pushed_and_reproduce_is_the_original_command(tmp_path):
    home = tmp_path / "home" / "alice"
    work = home / "proj"
    work.mkdir(parents=True)
    model = save_tiny_vit(home / "models" / "tiny", depth=2)
    data = home / "datasets" / "digits"  # train/ only: the val split's note names the train folder
    write_folder(data / "train", digit_images("train", 8, classes=(0, 1, 2)), {0: "zero", 1: "one", 2: "two"})
    for name in "wxyz":  # unreadable, markup in their names; 4 of 12 in the class: a 0.25 val split leaves 1+ in train
        corrupt_png(data / "train" / "one" / "bad[" / f"{name}].png")
    out = work / "runs" / "evit"
    args = ["compress", str(model), "--method", "evit", "--data", str(data), "--val-split", "0.25", "--output",
            str(out), "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "6", "--no-speed", "--quiet"]

    with FakeHub(TOKEN) as hub:
        stopped = run([*args, "--max-steps", "2"], work, home, hub.url)
        assert stopped.returncode == 0 and "Stopped after 2/" in stopped.stderr, stopped.stdout + stopped.stderr
        res = run([*args, "--resume", "--push-to", REPO], work, home, hub.url)
        assert res.returncode == 0, res.stdout + res.stderr
        both = stopped.stderr + res.stderr
        assert "skipped unreadable image" in both and "/one/bad[/" in both  # printed as it is, markup and all
        pushed = hub.files(REPO)

    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert {"config.json", "report.json", "README.md", "train_log.jsonl", "teacher/config.json"} <= set(written)
    private = {str(tmp_path), str(home), os.path.realpath(tmp_path), os.path.realpath(home)}
    for where, files in (("written", written), ("pushed", pushed)):
        for name, content in files.items():
            for secret in private:
                assert secret.encode() not in content, (where, name, secret)

    report = json.loads(written["report.json"])
    # the command as typed, paths redacted (inside the working folder: relative; outside: the last component)
    expected = ["vitprune", "compress", "tiny", "--method", "evit", "--data", "digits", "--val-split", "0.25",
                "--output", "runs/evit", *args[10:], "--push-to", REPO]
    assert report["command"] == " ".join(expected)
    assert report["model"] == "tiny" and report["data"]["data"] == "digits"
    skipped = report["train"]["skipped_files"]
    assert skipped and all(f.startswith("digits/train/one/bad[/") and f.endswith("].png") for f in skipped), skipped
    assert "val = 0.25 of digits/train per class (seed 0)" in report["data"]["notes"]
    assert report["base_model"] == "vit_tiny_patch16_224 (local weights)"
    assert report["teacher"] == ("vit_tiny_patch16_224 (local weights) with a new 3-class head, fine-tuned on the "
                                 "data first")
    section = json.loads(written["config.json"])["vitprune"]
    assert section["base_model"] == report["base_model"] and section["metrics"]["dataset"] == "digits"

    card = pushed["README.md"].decode()
    meta = ModelCard(card).data.to_dict()
    assert "base_model" not in meta  # local weights: no Hub repo to name
    assert card.startswith("---") and "# vit_tiny_patch16_224 · EViT" in card
    assert_card_reproduces(card, report["command"])
    assert "--resume" not in card
    assert "teacher/" not in card  # nothing in the card points at the local teacher folder


# ------------------------------------------------------------------------------------------ the redaction rules


@pytest.fixture
def at(tmp_path, monkeypatch):
    """Work in ``tmp_path/home/alice/proj`` with ``tmp_path/home/alice`` as the home folder."""
    home = tmp_path / "home" / "alice"
    (home / "proj").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "proj")
    return home


def test_paths_are_relative_inside_the_working_folder_else_their_last_component(at):
    assert public_path(at / "proj" / "data" / "d") == "data/d" and public_path(at / "proj") == "."
    assert public_path(at / "elsewhere" / "d") == "d" and public_path("~/x/y") == "y"
    assert public_path("/srv/datasets/imagenet/") == "imagenet"


def test_a_working_folder_above_the_home_folder_gives_last_components(at, monkeypatch):
    monkeypatch.chdir(at.parent)  # .../home: relative names would spell alice's home folder out
    assert public_path(at / "proj" / "data") == "data"


def test_scrub_rewrites_every_mention_and_nothing_else(at):
    data = str(at / "datasets" / "digits")
    record = {"notes": [f"val = 0.1 of {data}/train per class"], "files": [f"{data}/train/3/a.png"],
              "other": f"{data}2/x", "log": f"{at}/secret/y", "here": f"{at}/proj/runs/a", "n": 3}
    assert scrub(record, [data]) == {"notes": ["val = 0.1 of digits/train per class"],
                                     "files": ["digits/train/3/a.png"], "other": "~/datasets/digits2/x",
                                     "log": "~/secret/y", "here": "runs/a", "n": 3}


def test_command_is_redacted_and_loses_resume_and_overwrite(at):
    data = at / "datasets" / "digits"
    data.mkdir(parents=True)
    cmd = (f"vitprune compress {at}/models/tiny -m evit --data={data} -o {at}/proj/out --resume --overwrite "
           "--teacher hf-hub:org/teacher --opt drop_loc=3,6 --push-to alice/x")
    assert public_command(cmd) == ("vitprune compress tiny -m evit --data=digits -o out --teacher hf-hub:org/teacher "
                                   "--opt drop_loc=3,6 --push-to alice/x")


def test_a_base_model_is_named_by_what_it_is(at, tmp_path):
    import shutil

    from vitprune.hub import demo_dir

    # a Hugging Face cache snapshot keeps its repo id
    snapshot = at / ".cache" / "huggingface" / "hub" / "models--org--vit-s" / "snapshots" / "0123abc"
    shutil.copytree(demo_dir(), snapshot)
    assert public_model(str(snapshot)) == "hf-hub:org/vit-s"
    # a folder saved by vitprune keeps the base it recorded when that base is public...
    recorded = at / "m"
    shutil.copytree(demo_dir(), recorded)
    cfg = json.loads((recorded / "config.json").read_text())
    cfg["vitprune"]["base_model"] = "deit_small_patch16_224"
    (recorded / "config.json").write_text(json.dumps(cfg))
    assert public_model(str(recorded)) == "deit_small_patch16_224"
    # ...and is otherwise its architecture, never its folder name
    cfg["vitprune"]["base_model"] = str(at / "private-folder")
    (recorded / "config.json").write_text(json.dumps(cfg))
    assert public_model(str(recorded)) == "vit_tiny_patch16_224 (local weights)"
    assert public_model("hf-hub:org/name@v2") == "hf-hub:org/name@v2" and public_model("demo") == "demo"


def test_the_library_save_of_a_model_loaded_from_a_folder_names_no_path(at, tmp_path):
    """``vitprune.save`` (not only ``compress``) records the base model as ``public_model`` names it: a model loaded
    from a local folder is saved with what that folder was made from, never the folder's path, in config.json and
    in the card's Reproduce block (both travel with ``vitprune push``)."""
    import shutil

    import vitprune
    from vitprune.hub import demo_dir

    folder = at / "private-folder"
    shutil.copytree(demo_dir(), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vitprune"]["base_model"] = str(at / "elsewhere")  # a local base: not publishable, the architecture is
    (folder / "config.json").write_text(json.dumps(cfg))
    model = vitprune.apply_method(vitprune.load_model(str(folder)), "evit", keep_rate=0.7)
    out = vitprune.save(model, tmp_path / "out")
    saved = (Path(out) / "config.json").read_text() + (Path(out) / "README.md").read_text()
    assert json.loads((Path(out) / "config.json").read_text())["vitprune"]["base_model"] == (
        "vit_tiny_patch16_224 (local weights)")
    assert "private-folder" not in saved and str(at) not in saved and str(tmp_path) not in saved
