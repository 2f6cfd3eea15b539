"""Datasets saved with Hugging Face ``datasets`` (``save_to_disk``): a DatasetDict with a train and a validation
split, or a single Dataset (or a DatasetDict without a validation split) split with ``val_split``. A ``test``
split is the test split (read only when asked for): it is never used as val, so a DatasetDict with only
``train`` and ``test`` holds val out of train (``val_split``, default 0.1).

Columns are detected: the image column is the first ``Image`` feature (else a column named image/img/...), the
label column the first ``ClassLabel`` feature (else label/labels/target/...). Class names come from the
``ClassLabel``; plain integer labels are named by their value. Images are decoded by vitprune (the column is read
with ``decode=False``) so one unreadable image is skipped instead of stopping the run.

A dataset is data someone else made: an image stored as a path (instead of bytes) is read only from inside the
dataset folder. Absolute paths, ``..``, symlinks that lead out of the folder and files that are not regular files
(FIFOs, devices) are refused per row without being opened, and counted like unreadable images.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Optional

from PIL import Image

from ..errors import DataError
from .base import ImageSource, Splits, confined, open_image, stratified_split, whole

IMAGE_NAMES = ("image", "img", "images", "picture", "photo", "pixel_values")
LABEL_NAMES = ("label", "labels", "target", "targets", "class", "category", "fine_label")
TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("validation", "val", "valid")
TEST_NAMES = ("test",)


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file())


def columns(ds: Any, where: str) -> tuple[str, str]:
    import datasets  # optional extra

    feats = ds.features
    image = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
    image = image or next((k for k in IMAGE_NAMES if k in feats), None)
    label = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((k for k in LABEL_NAMES if k in feats), None)
    if image is None or label is None:
        missing = "an image column" if image is None else "a label column"
        raise DataError(f"the dataset in {where} has no {missing} (its columns: {', '.join(feats)}); vitprune reads an "
                        "Image feature (or a column named image) and a ClassLabel (or a column named label).")
    return image, label


def undecoded(ds: Any, image_col: str) -> Any:
    """``ds`` with its Image column read as ``{"bytes", "path"}`` (vitprune decodes, so one bad image is skipped)."""
    import datasets  # optional extra

    if isinstance(ds.features[image_col], datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    return ds


def check_labels(targets: list, classes: list[str], label_col: str, where: str) -> None:
    bad = [t for t in targets if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < len(classes)]
    if bad:
        raise DataError(
            f"label {bad[0]!r} in column '{label_col}' of {where} is outside the classes 0..{len(classes) - 1} "
            f"({len(bad)} such rows); unlabelled rows (-1) must be removed first.")


def decode_value(value: Any, resolve: Callable[[str], Path]) -> Image.Image:
    """An image cell (``{"bytes", "path"}`` or a PIL image) as a PIL image; a path is opened only as ``resolve``
    allows it (``RefusedFile`` otherwise), and never through a final symlink."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return open_image(resolve(str(value["path"])), follow_symlinks=False)
    raise ValueError(f"no image data ({type(value).__name__})")


class HFImages(ImageSource):
    """The rows of one split; ``resolve`` turns an image stored as a path into the file to open (confined)."""

    def __init__(self, ds: Any, image_col: str, label_col: str, classes: list[str], where: str,
                 resolve: Callable[[str], Path]):
        self.where = where
        self.resolve = resolve
        self.image_col = image_col
        self.ds = undecoded(ds, image_col)
        self.classes = classes
        targets = ds[label_col]
        if hasattr(targets, "to_pylist"):  # datasets >= 4 returns a Column
            targets = targets.to_pylist()
        check_labels(targets, classes, label_col, where)
        self.targets = list(targets)

    def load(self, i: int) -> Image.Image:
        return decode_value(self.ds[i][self.image_col], self.resolve)

    def describe(self, i: int) -> str:
        return f"{self.where} row {i}"


def _classes(splits: list[Any], label_col: str) -> list[str]:
    import datasets  # optional extra

    feat = splits[0].features[label_col]
    if isinstance(feat, datasets.ClassLabel):
        return list(feat.names)
    values = set()
    for ds in splits:
        col = ds[label_col]
        values.update(col.to_pylist() if hasattr(col, "to_pylist") else col)
    return numeric_classes(values, label_col)


def numeric_classes(values: set, label_col: str) -> list[str]:
    """Class names ``"0" .. str(max)`` for the plain integer labels ``values`` (one line when one is not)."""
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
    if len(ints) != len(values):
        bad = next(v for v in values if v not in ints)
        raise DataError(f"label {bad!r} in column '{label_col}' is not a class index (an integer >= 0); cast the "
                        "column to a ClassLabel first.")
    return [str(i) for i in range(max(ints) + 1)] if ints else []


def load_hf(path: Path, *, val_split: Optional[float] = None, split_seed: int = 0) -> Splits:
    import datasets  # optional extra

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError... for a broken folder
        raise DataError(f"{path} looks like a saved dataset but cannot be read: {str(e).splitlines()[0]}") from None
    return dataset_splits(loaded, str(path), lambda name: confined(path, name), val_split=val_split,
                          split_seed=split_seed)


def pick_splits(loaded: Any, where: str) -> tuple[str, Optional[str], Any, Any]:
    """(train name, val name or None, train split, val split or None) of a loaded Dataset or DatasetDict."""
    if isinstance(loaded, dict):  # DatasetDict, IterableDatasetDict
        train_key = next((k for k in TRAIN_NAMES if k in loaded), None)
        val_key = next((k for k in VAL_NAMES if k in loaded), None)
        if train_key is None:
            raise DataError(f"the dataset in {where} has splits {', '.join(loaded)} but no 'train' split.")
        return train_key, val_key, loaded[train_key], (loaded[val_key] if val_key else None)
    return "train", None, loaded, None


def pick_test(loaded: Any) -> tuple[Optional[str], str]:
    """(name of the test split or None, one line naming the splits there are)."""
    if isinstance(loaded, dict):
        key = next((k for k in TEST_NAMES if k in loaded), None)
        return key, f"its splits are {', '.join(loaded)}; a test split is named 'test'."
    return None, "it is a single split (train, with val held out of it); a test split is named 'test'."


def dataset_splits(loaded: Any, where: str, resolve: Callable[[str], Path], *, val_split: Optional[float] = None,
                   split_seed: int = 0, name: Optional[str] = None, kind: str = "hf") -> Splits:
    """``Splits`` of a loaded (map-style) Dataset or DatasetDict; image paths are opened through ``resolve``."""
    train_key, val_key, train_ds, val_ds = pick_splits(loaded, where)
    if len(train_ds) == 0:
        raise DataError(f"the train split of {where} is empty.")
    image_col, label_col = columns(train_ds, where)
    classes = _classes([d for d in (train_ds, val_ds) if d is not None], label_col)
    train = HFImages(train_ds, image_col, label_col, classes, f"{where}[{train_key}]", resolve)
    name = name or where
    test_key, no_test = pick_test(loaded)
    test = dict(no_test=no_test, open_test=None if test_key is None else lambda: whole(
        HFImages(loaded[test_key], image_col, label_col, classes, f"{where}[{test_key}]", resolve)))
    if val_ds is not None and val_split is None:
        val = HFImages(val_ds, image_col, label_col, classes, f"{where}[{val_key}]", resolve)
        return Splits(name, kind, classes, whole(train), whole(val), **test,
                      notes=[f"columns: image={image_col!r}, label={label_col!r}; val = split {val_key!r}"])
    frac = 0.1 if val_split is None else val_split
    tr, va = stratified_split(train.targets, frac, split_seed)
    notes = [f"columns: image={image_col!r}, label={label_col!r}; val = {frac:g} of {train_key!r} per class "
             f"(seed {split_seed})"]
    return Splits(name, kind, classes, (train, tr), (train, va), val_split=frac, notes=notes, **test)
