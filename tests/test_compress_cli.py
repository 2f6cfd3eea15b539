"""`vitprune compress` and `vitprune eval` as a user meets them: one short epoch end to end on the demo teacher, the
saved folder reloads and scores what the report says, head replacement with a teacher stage, unreadable images
skipped and counted, and every bad input as one line with exit 1 that leaves what was saved untouched."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vitprune
from vitprune.cli.main import app
from vitprune.hub import demo_dir, read_vitprune_section
from tests.test_train_utils import corrupt_png, digit_images, digits_folder, save_tiny_vit, write_folder

runner = CliRunner()
#: the demo teacher's top-1 on the demo val split, as recorded in its config (measured: tests/test_demo.py)
DEMO_VAL_TOP1 = read_vitprune_section(demo_dir())["metrics"]["val_top1"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "evit-demo"
    res = runner.invoke(app, ["compress", "demo", "-m", "evit", "--keep-rate", "0.7", "--epochs", "1", "-o", str(out),
                              "--profile-batch-size", "8", "--quiet"])
    assert res.exit_code == 0, res.output
    return out, res


@pytest.mark.slow
def test_one_epoch_on_the_demo_end_to_end(demo_run):
    out, res = demo_run
    assert "top-1 (%)" in res.stdout and "GMACs (papers' GFLOPs)" in res.stdout and "throughput" in res.stdout
    assert f"Saved {out}" in res.stdout
    assert "epoch 1" in res.output and "val top-1" in res.output  # the --quiet log lines
    # each stage and epoch has a start line and an end line
    assert "epoch 1/1: " in res.output and "distilling " in res.output and "evaluating dense and compressed on the " \
        "val split: done in " in res.output and f"saving {out}: done in " in res.output
    for name in ("model.safetensors", "config.json", "README.md", "report.json", "train_log.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    card = (out / "README.md").read_text()  # the card says which split its accuracy is on: val, never test
    assert "accuracy on demo val (181 images)" in card and "demo test" not in card and "test top-1" not in card
    assert "the test digits are held back" in card  # the data note says the test split was not used

    section = read_vitprune_section(out)
    assert section["method"] == "evit" and section["options"]["keep_rate"] == 0.7 and section["base_model"] == "demo"
    recipe = section["recipe"]
    assert recipe["epochs"] == 1 and recipe["lr"] == pytest.approx(2e-5 * 4) and recipe["augment"] is None
    assert recipe["train_mode_eval"] is True and recipe["global_batch"] == 64 and recipe["peak_lr"] > 0
    metrics = section["metrics"]
    # the teacher's val top-1 is the one recorded in its config (97.79 %, README)
    assert metrics["top1"] > 90 and metrics["dense_top1"] == pytest.approx(DEMO_VAL_TOP1, abs=0.01)
    assert metrics["gmacs"] < metrics["dense_gmacs"]

    report = json.loads((out / "report.json").read_text())
    for side in ("dense", "compressed"):
        for key in ("top1", "top5", "loss", "gmacs", "params", "throughput", "latency_ms", "tokens"):
            assert report[side][key] is not None, (side, key)
    assert report["measure"]["device"] == "cpu" and report["measure"]["dtype"] == "fp32"
    assert report["measure"]["batch_size"] == 8 and report["measure"]["latency_batch_size"] == 1
    assert report["recipe"] == recipe and report["recipe_sources"]["epochs"] == "user"
    assert report["recipe_sources"]["lr"] == "demo" and report["recipe_sources"]["train_mode_eval"] == "method"
    assert report["delta_top1"] == pytest.approx(metrics["top1"] - metrics["dense_top1"], abs=1e-3)

    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["epoch"] == 1 and log[0]["steps"] == 22
    assert {"loss", "cls", "kd", "lr", "img_per_s", "val_top1"} <= set(log[0])
    assert log[0]["val_top1"] == pytest.approx(metrics["top1"])

    # the saved folder is the model that was measured: reload it and score it again
    model = vitprune.load(out)
    again = vitprune.evaluate(model, "demo", device="cpu")
    assert again.top1 == pytest.approx(metrics["top1"]) and again.loss == pytest.approx(metrics["loss"], abs=1e-5)


@pytest.mark.slow
def test_eval_json_schema_and_runtime_option(demo_run):
    out, _ = demo_run
    res = runner.invoke(app, ["eval", str(out), "--data", "demo", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"model", "data", "split", "top1", "top5", "loss", "images", "skipped", "method", "options",
                         "device", "batch_size"}
    assert data["images"] == 181 and data["skipped"] == 0 and data["method"] == "evit"  # the demo's val digits
    assert data["top1"] == pytest.approx(read_vitprune_section(out)["metrics"]["top1"])
    lower = json.loads(runner.invoke(app, ["eval", str(out), "--keep-rate", "0.5", "--json"]).stdout)
    assert lower["options"]["keep_rate"] == 0.5 and 0 <= lower["top1"] <= 100
    table = runner.invoke(app, ["eval", "demo"])
    assert table.exit_code == 0 and f"{DEMO_VAL_TOP1:.2f}" in table.stdout


@pytest.mark.slow
def test_new_head_fine_tunes_a_teacher_first_and_skips_an_unreadable_image(tmp_path):
    model = save_tiny_vit(tmp_path / "tiny", depth=2)
    data = digits_folder(tmp_path / "abc", per_class=8, val_per_class=2, classes=(0, 1, 2),
                         names={0: "zero", 1: "one", 2: "two"})
    corrupt_png(data / "train" / "one" / "broken.png")
    out = tmp_path / "out"
    res = runner.invoke(app, ["compress", str(model), "-m", "evit", "--data", str(data), "-o", str(out),
                              "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "8", "--no-speed", "-q"])
    assert res.exit_code == 0, res.output
    assert "head replaced" in res.output and "teacher epoch 1" in res.output
    assert "skipped unreadable image" in res.output and "broken.png" in res.output
    teacher = vitprune.load(out / "teacher")
    student = vitprune.load(out)
    assert teacher.num_classes == student.num_classes == 3
    assert student.pretrained_cfg["label_names"] == ["one", "two", "zero"]
    report = json.loads((out / "report.json").read_text())
    # published names: what the teacher was, not where it lies; the data by its own name (it is outside the
    # working folder), never the absolute path
    assert report["teacher"] == ("vit_tiny_patch16_224 (local weights) with a new 3-class head, fine-tuned on the "
                                 "data first")
    assert report["train"]["skipped_images"] == 1 and report["train"]["skipped_files"] == ["abc/train/one/broken.png"]
    assert report["teacher_stage"]["recipe"]["kd_weight"] == 0.0
    # the reported accuracy is the saved model's, on the held-out val images
    assert vitprune.evaluate(student, str(data), device="cpu").top1 == pytest.approx(report["compressed"]["top1"])


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".vitprune" not in p.parts}  # (its lock file)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An output folder that already holds a saved model (and a file of the user's)."""
    folder = tmp_path_factory.mktemp("saved") / "out"
    shutil.copytree(demo_dir(), folder)
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("case, extra, message", [
    ("missing", ["--data", "/no/such/data"], "does not exist"),
    ("empty", ["--data", "{empty}"], "is empty"),
    ("empty_class", ["--data", "{empty_class}"], "has no images"),
    ("outside_head", ["--data", "{twelve}", "--teacher", "demo"], "labels outside the head"),
    ("resume_nothing", ["--resume"], "no checkpoint"),
    ("fp16_cpu", ["--precision", "fp16", "--device", "cpu"], "fp16 training needs a GPU"),
    ("bad_scale", ["--scale", "0.9,0.1"], "scale takes two numbers"),
    ("bad_option", ["-m", "evit", "--r", "4"], "not an option of evit"),
    ("bad_recipe", ["--kd-temperature", "0"], "kd-temperature must be > 0"),
])
def test_bad_input_is_one_line_exit_1_and_nothing_saved_is_lost(tmp_path, saved, case, extra, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    empty_class = write_folder(tmp_path / "ec", digit_images("train", 2, classes=(0, 1)))
    (empty_class / "5").mkdir()
    digits = digit_images("train", 2)
    twelve = write_folder(tmp_path / "twelve", digits + [(digits[0][0], 10), (digits[1][0], 11)])
    extra = [e.format(empty=empty, empty_class=empty_class, twelve=twelve) for e in extra]
    before = _digest(saved)
    res = runner.invoke(app, ["compress", "demo", "-o", str(saved), "--no-speed", *extra])
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert _digest(saved) == before


def test_eval_errors_are_one_line(tmp_path):
    digits = digit_images("train", 2)
    twelve = write_folder(tmp_path / "twelve", digits + [(digits[0][0], 10), (digits[1][0], 11)])
    for args, message in ((["eval", "demo", "--data", str(twelve)], "labels outside the head"),
                          (["eval", "demo", "--keep-rate", "0.5"], "dense model"),
                          (["eval", "demo", "--data", str(tmp_path / "none")], "does not exist")):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_mode_flag_sets_sait_inference_mode_and_skips_calibration(tmp_path):
    """`--mode fixed --keep-rate 0.7` reaches SaiT's options, is saved as the default, and (a run-time option the
    user chose) stops the post-training threshold calibration."""
    out = tmp_path / "sait"
    res = runner.invoke(app, ["compress", "demo", "-m", "sait", "--mode", "fixed", "--keep-rate", "0.7",
                              "--epochs", "0.1", "--no-speed", "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    section = read_vitprune_section(out)
    assert section["options"]["mode"] == "fixed" and section["options"]["keep_rate"] == 0.7
    assert "calibration" not in json.loads((out / "report.json").read_text())
    model = vitprune.load(out)
    assert model.vitprune_method.options.mode == "fixed"
    bad = runner.invoke(app, ["compress", "demo", "-m", "sait", "--mode", "sparse", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--mode must be one of dense, fixed, adaptive" in bad.output
