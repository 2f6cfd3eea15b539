"""The test split: every kind of data can have one (the demo's test digits, a ``test/`` folder of class folders or
of shards, a ``test`` split of a saved dataset), ``eval --split test`` and ``vitprune.evaluate(split="test")``
read it, data without one says so in one line naming what it has, and ``compress`` never opens it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vitprune
from vitprune.cli.main import app
from vitprune.data import load_data
from vitprune.data.demo import DigitsDemo
from vitprune.errors import DataError
from tests.test_train_utils import digit_images, digits_folder, png_bytes, save_tiny_vit, tiny_vit, write_folder

runner = CliRunner()


def _eval_json(*args: str) -> dict:
    res = runner.invoke(app, ["eval", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.slow
def test_demo_test_split_from_the_cli_and_the_library():
    info = _eval_json("demo", "--data", "demo", "--split", "test")
    assert info["split"] == "test" and info["images"] == len(DigitsDemo("test")) == 178  # make_demo_data.py
    lib = vitprune.evaluate("demo", "demo", split="test", device="cpu")
    assert lib.images == 178 and lib.top1 == pytest.approx(info["top1"])
    val = vitprune.evaluate("demo", "demo", split="val", device="cpu")
    # val and test are different digits: 181 of them in val, and the scores are of their own images
    assert val.images == 181
    splits = load_data("demo")
    assert not splits._test  # loading the data does not open the test split
    test_src, test_idx = splits.test_split()
    assert [test_src.targets[i] for i in test_idx] == DigitsDemo("test").targets


@pytest.fixture
def folder_with_test(tmp_path) -> Path:
    """Real PNG digits: train/ (6 per class), val/ (2 per class) and test/ (3 per class, the demo's test digits)."""
    root = digits_folder(tmp_path / "digits", per_class=6, val_per_class=2)
    write_folder(root / "test", digit_images("test", 3))
    return root


def test_image_folder_test_subfolder_is_read_by_eval(folder_with_test, tmp_path):
    data = load_data(str(folder_with_test))
    assert data.has_test and len(data.train[1]) == 60 and len(data.val[1]) == 20
    src, idx = data.test_split()
    assert len(idx) == 30 and all(p.startswith(str(folder_with_test / "test")) for p in src.paths)
    assert [src.targets[i] for i in idx] == sorted(t for _, t in digit_images("test", 3))  # as written, by class
    model = tiny_vit(depth=1)
    res = vitprune.evaluate(model, data, split="test", device="cpu")
    assert res.images == 30 and res.skipped == 0
    # the same through the CLI on a saved model
    info = _eval_json(str(save_tiny_vit(tmp_path / "tiny", depth=1)), "--data", str(folder_with_test),
                      "--split", "test")
    assert info["images"] == 30 and info["split"] == "test"


@pytest.mark.parametrize("layout, message", [
    ("train-val", "has no test split: it has train/ and val/ but no test/ folder; add PATH/test/<class>/ images."),
    ("one-folder", "has no test split: it is one folder of class folders, split into train and val (0.1 per class)"),
])
def test_missing_test_split_is_one_line_naming_what_exists(tmp_path, layout, message):
    if layout == "train-val":
        root = digits_folder(tmp_path / "d", per_class=2, val_per_class=1)
    else:
        root = write_folder(tmp_path / "d", digit_images("train", 2))
    res = runner.invoke(app, ["eval", str(save_tiny_vit(tmp_path / "tiny", depth=1)), "--data", str(root),
                              "--split", "test"])
    assert res.exit_code == 1 and message in res.output
    assert res.output.strip().count("\n") == 0 and "Traceback" not in res.output
    with pytest.raises(DataError, match="no test split"):
        vitprune.evaluate(tiny_vit(depth=1), str(root), split="test", device="cpu")


def test_test_folder_with_a_class_train_lacks_is_refused_when_read(folder_with_test):
    write_folder(folder_with_test / "test", [(digit_images("test", 1)[0][0], 0)], names={0: "eleven"})
    data = load_data(str(folder_with_test))  # loading for training does not look at test/
    with pytest.raises(DataError, match="eleven that the train folder does not have"):
        data.test_split()


def _hf(folder: Path, parts: dict[str, list]) -> Path:
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(
        names=[f"digit{i}" for i in range(10)])})
    datasets.DatasetDict({name: datasets.Dataset.from_dict(
        {"image": [{"bytes": png_bytes(im), "path": None} for im, _ in items], "label": [t for _, t in items]},
        features=feats) for name, items in parts.items()}).save_to_disk(str(folder))
    return folder


@pytest.mark.slow
def test_saved_dataset_test_split_is_never_val(tmp_path):
    pytest.importorskip("datasets")
    train, val, test = digit_images("train", 5), digit_images("val", 2), digit_images("test", 3)
    full = load_data(str(_hf(tmp_path / "full", {"train": train, "validation": val, "test": test})))
    assert len(full.val[1]) == 20 and len(full.test_split()[1]) == 30
    assert full.test_split()[0].targets == [t for _, t in test]
    # only train and test: val is held out of train (0.1 per class by default), test stays the test split
    two = load_data(str(_hf(tmp_path / "two", {"train": train, "test": test})))
    assert two.val[0] is two.train[0] and len(two.val[1]) == 10 and len(two.test_split()[1]) == 30  # round(5 * 0.1)=1
    none = load_data(str(_hf(tmp_path / "none", {"train": train, "validation": val})))
    with pytest.raises(DataError, match=r"has no test split: its splits are train, validation; a test split is "
                                        r"named 'test'\.$"):
        none.test_split()


def test_shards_test_folder(tmp_path):
    pytest.importorskip("webdataset")
    from tests.test_data_streams import digit_shards, write_shards

    root = digit_shards(tmp_path / "s", per_class=2, val_per_class=1, maxcount=7)
    data = load_data(str(root))
    with pytest.raises(DataError, match=r"has no test split: it has train/ and val/ shards but no test/ shards"):
        data.test_split()
    write_shards(root / "test", digit_images("test", 2), 7)
    data = load_data(str(root))
    src, idx = data.test_split()
    assert len(idx) == 20 and src.shard_sizes == [7, 7, 6] and list(src.targets) == [t for _, t in
                                                                                  digit_images("test", 2)]
    info = _eval_json(str(save_tiny_vit(tmp_path / "tiny", depth=1)), "--data", str(root), "--split", "test")
    assert info["images"] == 20
    # a label the classes do not have is one line when the test split is opened (not before)
    (root / "classes.txt").write_text("\n".join(f"digit-{i}" for i in range(10)) + "\n")
    write_shards(root / "test", [(digit_images("test", 1)[0][0], 12)], 7)
    data = load_data(str(root))
    with pytest.raises(DataError, match="label 12 in the shards of .* is outside the 10 classes of classes.txt"):
        data.test_split()


@pytest.mark.slow
def test_compress_never_opens_the_test_split(folder_with_test, tmp_path):
    # a test/ folder that fails when it is read: a class the train folder does not have
    write_folder(folder_with_test / "test", [(digit_images("test", 1)[0][0], 0)], names={0: "eleven"})
    out = tmp_path / "out"
    res = runner.invoke(app, ["compress", str(save_tiny_vit(tmp_path / "tiny", depth=2)), "-m", "evit",
                              "--data", str(folder_with_test), "-o", str(out), "--epochs", "0.2",
                              "--batch-size", "16", "--no-speed", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["compressed"]["images"] == 20  # scored on val/ (2 per class), not test/
    card = (out / "README.md").read_text()
    assert "val (20 images)" in card and "test" not in card.lower()  # no test split is named anywhere
