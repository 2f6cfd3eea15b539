"""Datasets from real images: ImageFolder layouts and saved HF datasets built from the demo digits as PNG files,
seeded splits and augmentation, unreadable images skipped and counted, and every bad input as one DataError."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

import vitprune
from vitprune.data import (
    DEMO_AUGMENT, Prepared, Unreadable, collate, eval_transform, load_data, match_head, train_transform,
)
from vitprune.errors import DataError
from tests.test_train_utils import corrupt_png, digits_folder, hf_digits, tiny_vit, write_folder, digit_images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = digits_folder(tmp_path_factory.mktemp("digits"), per_class=6, val_per_class=3)
    corrupt_png(root / "train" / "3" / "zz-broken.png")
    return root


def test_image_folder_train_val_layout_reads_real_pngs(folder):
    data = load_data(str(folder))
    assert data.kind == "folder" and data.classes == [str(i) for i in range(10)]
    src, idx = data.train
    assert len(idx) == 61 and len(data.val[1]) == 30  # 60 digits + the broken file
    model = tiny_vit()
    ds = Prepared(src, idx, eval_transform(model))
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0
    # the digit really is the digit: same pixels as the demo image it was written from
    ref = eval_transform(model)(digit_images("train", 6)[0][0])
    assert torch.allclose(x, ref)


def test_unreadable_image_is_skipped_with_its_name_and_counted(folder):
    data = load_data(str(folder))
    src, idx = data.train
    ds = Prepared(src, idx, eval_transform(tiny_vit()))
    broken = [i for i in range(len(ds)) if isinstance(ds[i], Unreadable)]
    assert len(broken) == 1 and ds[broken[0]].where.endswith("zz-broken.png")
    batch = collate([ds[i] for i in range(broken[0] - 2, broken[0] + 2)])
    assert batch.images.shape[0] == 3 and len(batch.bad) == 1  # the batch goes on without it
    # evaluate() on the train split counts it and scores the rest
    res = vitprune.evaluate(tiny_vit(), data, split="train", device="cpu", batch_size=16)
    assert res.images == 60 and res.skipped == 1


def test_single_folder_split_is_stratified_and_seeded(tmp_path):
    root = write_folder(tmp_path / "flat", digit_images("train", 10))
    a, b = load_data(str(root), val_split=0.2), load_data(str(root), val_split=0.2)
    assert a.val[1] == b.val[1] and a.train[1] == b.train[1]  # same split every time
    assert not set(a.val[1]) & set(a.train[1]) and len(a.val[1]) + len(a.train[1]) == 100
    val_labels = [a.val[0].targets[i] for i in a.val[1]]
    assert sorted(set(val_labels)) == list(range(10)) and len(val_labels) == 20  # 2 per class
    default = load_data(str(root))  # one folder without --val-split: 0.1 held out, said in the notes
    assert len(default.val[1]) == 10 and "0.1" in default.notes[0]


@pytest.mark.slow
def test_saved_hf_dataset_with_detected_columns_and_a_corrupt_row(tmp_path):
    path = hf_digits(tmp_path / "hf", image_col="picture", label_col="digit", corrupt_rows=(5,))
    data = load_data(str(path))
    assert data.kind == "hf" and data.classes == [f"digit{i}" for i in range(10)]
    assert len(data.train[1]) == 80 and len(data.val[1]) == 30
    model = tiny_vit()
    ds = Prepared(*data.train, eval_transform(model))
    assert isinstance(ds[5], Unreadable) and "row 5" in ds[5].where
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0
    res = vitprune.evaluate(model, data, split="train", device="cpu")
    assert (res.images, res.skipped) == (79, 1)


def test_saved_hf_single_dataset_is_split(tmp_path):
    path = hf_digits(tmp_path / "hf1", single=True)
    data = load_data(str(path), val_split=0.25)
    assert len(data.val[1]) == 20 and len(data.train[1]) == 60


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("file", "is a file"),
    ("empty", "is empty"),
    ("loose", "no class folders"),
    ("empty_class", "has no images"),
    ("no_val", "no val/ folder"),
    ("extra_val_class", "that the train folder does not have"),
    ("bad_split", "--val-split must be between 0 and 1"),
])
def test_bad_folders_are_one_line_data_errors(tmp_path, case, message):
    root = tmp_path / "data"
    kw = {}
    if case == "file":
        root.write_text("not a folder")
    elif case == "empty":
        root.mkdir()
    elif case == "loose":
        root.mkdir()
        digit_images("train", 1)[0][0].save(root / "a.png")
    elif case == "empty_class":
        write_folder(root, digit_images("train", 2, classes=(0, 1)))
        (root / "7").mkdir()
    elif case == "no_val":
        write_folder(root / "train", digit_images("train", 2, classes=(0, 1)))
    elif case == "extra_val_class":
        write_folder(root / "train", digit_images("train", 2, classes=(0, 1)))
        write_folder(root / "val", digit_images("val", 2, classes=(0, 2)))
    elif case == "bad_split":
        write_folder(root, digit_images("train", 2, classes=(0, 1)))
        kw["val_split"] = 1.5
    with pytest.raises(DataError) as e:
        load_data(str(root), **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_hf_labels_outside_the_classes(tmp_path):
    import datasets

    from tests.test_train_utils import png_bytes

    img = digit_images("train", 1)[0][0]
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(img), "path": None}] * 3, "label": [0, 1, -1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "neg"))
    with pytest.raises(DataError, match="not a class index"):
        load_data(str(tmp_path / "neg"))


def test_match_head_by_name_index_or_not_at_all():
    named = tiny_vit(label_names=[str(i) for i in range(10)])
    assert match_head([str(i) for i in range(10)], named).identity
    sub = match_head(["3", "7"], named)
    assert sub.fits and sub.target_map == [3, 7]
    assert match_head([f"c{i}" for i in range(10)], tiny_vit()).identity  # same count, no names: by index
    assert not match_head(["a", "b", "c"], tiny_vit()).fits


def test_eval_refuses_labels_outside_the_head(tmp_path):
    digits = digit_images("train", 2)
    root = write_folder(tmp_path / "twelve", digits + [(digits[0][0], 10), (digits[1][0], 11)])
    with pytest.raises(DataError, match="labels outside the head"):
        vitprune.evaluate(tiny_vit(), str(root), device="cpu", val_split=0.5)


def test_augmentation_is_a_function_of_seed_epoch_and_index_and_leaves_global_rng_alone():
    model = tiny_vit()
    data = load_data("demo")
    tf = train_transform(model, {**DEMO_AUGMENT, "scale": [0.5, 1.0]})
    ds = Prepared(*data.train, tf, seed=3, random_transform=True)
    torch.manual_seed(123)
    random.seed(5)
    before = (torch.get_rng_state().clone(), random.getstate())
    a, b, c = ds[(0, 7)][0], ds[(0, 7)][0], ds[(1, 7)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    other_seed = Prepared(*data.train, tf, seed=4, random_transform=True)
    assert not torch.equal(other_seed[(0, 7)][0], a)


def test_demo_data_carries_no_flip_hint():
    data = load_data("demo")
    assert data.augment_hints["hflip"] == 0.0
    tf = train_transform(tiny_vit(), data.augment_hints)
    assert "RandomHorizontalFlip" not in repr(tf)
    assert "RandomHorizontalFlip" in repr(train_transform(tiny_vit(), {}))  # the general default flips
    assert np.isclose(train_transform(tiny_vit(), None)(digit_images("val", 1)[0][0]).mean().item(),
                      eval_transform(tiny_vit())(digit_images("val", 1)[0][0]).mean().item())


# ------------------------------------------------------------------------- data made by someone else


def _read_every_image(root, fifo, timeout: float = 60.0) -> tuple[Prepared, list]:
    """Every image of dataset ``root`` (all of its train source) as ``Prepared`` items, read in a thread so that a
    loader blocked on ``fifo`` fails the test instead of hanging it (the FIFO then gets a writer, so a blocked
    reader ends)."""
    import os
    import threading

    src = load_data(str(root), val_split=0.5).train[0]
    ds = Prepared(src, range(len(src)), eval_transform(tiny_vit()))
    items: list = []
    reader = threading.Thread(target=lambda: items.extend(ds[i] for i in range(len(ds))), daemon=True)
    reader.start()
    reader.join(timeout)
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader waiting on it
        pass
    assert not reader.is_alive(), "reading the data blocked (on the FIFO)"
    return ds, items


def _hf_with_paths(folder, paths: list[str]):
    """A save_to_disk dataset whose image column holds file paths instead of bytes, as a dataset written by
    another program can (``{"bytes": None, "path": ...}`` rows)."""
    import datasets

    feats = datasets.Features({"image": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                               "label": datasets.ClassLabel(names=["zero", "one"])})
    rows = {"image": [{"bytes": None, "path": p} for p in paths], "label": [i % 2 for i in range(len(paths))]}
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(folder))
    return folder


def test_hf_image_paths_are_confined_to_the_dataset_folder(tmp_path):
    import os

    secret = tmp_path / "elsewhere" / "private.png"  # a real image outside the dataset: must not be read
    secret.parent.mkdir()
    digit_images("train", 1)[0][0].save(secret)
    names = ["imgs/ok.png", str(secret), "../elsewhere/private.png", "imgs/out-link.png", "imgs/fifo.png",
             "imgs/in-link.png", "imgs/../imgs/ok.png"]
    root = _hf_with_paths(tmp_path / "ds", names)
    (root / "imgs").mkdir()
    digit_images("train", 1)[0][0].save(root / "imgs" / "ok.png")
    os.symlink(secret, root / "imgs" / "out-link.png")
    os.symlink("ok.png", root / "imgs" / "in-link.png")  # a link that stays inside is fine
    os.mkfifo(root / "imgs" / "fifo.png")
    ds, items = _read_every_image(root, root / "imgs" / "fifo.png")
    readable = [i for i, it in enumerate(items) if not isinstance(it, Unreadable)]
    assert readable == [0, 5]  # ok.png and the link inside the folder
    reasons = {i: it.reason for i, it in enumerate(items) if isinstance(it, Unreadable)}
    assert "absolute" in reasons[1] and "'..'" in reasons[2] and "'..'" in reasons[6]
    assert "out of the dataset folder" in reasons[3] and "not a regular file" in reasons[4]
    # the trainer's and evaluate's counting: refused rows are skipped like unreadable images
    res = vitprune.evaluate(tiny_vit(), ds, device="cpu", batch_size=4)
    assert (res.images, res.skipped) == (2, 5)


def test_image_folder_refuses_fifos_and_devices_and_follows_links_to_images(tmp_path):
    import os

    root = write_folder(tmp_path / "digits", digit_images("train", 2, classes=(0, 1)))
    shared = tmp_path / "store" / "digit.png"  # class folders made of links into an image store
    shared.parent.mkdir()
    digit_images("val", 1)[0][0].save(shared)
    os.symlink(shared, root / "1" / "linked.png")
    os.mkfifo(root / "0" / "fifo.png")
    os.symlink("/dev/zero", root / "1" / "zero.png")
    _, items = _read_every_image(root, root / "0" / "fifo.png")
    bad = {Path(it.where).name: it.reason for it in items if isinstance(it, Unreadable)}
    assert bad == {"fifo.png": "not a regular file", "zero.png": "not a regular file"}
    assert len(items) - len(bad) == 5  # the four digits and the linked one
