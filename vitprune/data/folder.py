"""ImageFolder-style datasets: ``PATH/train/<class>/*.jpg`` + ``PATH/val/<class>/*.jpg`` (and, optionally, a test
split in ``PATH/test/<class>/*.jpg``, read only when asked for), or ``PATH/<class>/*.jpg`` split into train and val
with ``val_split`` (stratified, seeded; such a folder has no test split).

Files are listed with torchvision's ImageFolder machinery (``make_dataset``, its image extensions); class folders
are the non-hidden sub-folders, sorted, and the class index is the position in that order (the train folder's
order; a val or test folder may lack classes but not add any). Images are opened lazily; unreadable ones are skipped by
``Prepared``, and so are names that are not regular files (a FIFO or a device called ``x.png``), unopened.
Symlinks are followed, also out of the folder, as torchvision's ImageFolder does (class folders made of links
into a shared image store are common); ``save_to_disk`` datasets, whose paths are strings inside the data, are
confined to their folder instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from PIL import Image

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from ..errors import DataError
from .base import ImageSource, Splits, open_image, stratified_split, whole

VAL_NAMES = ("val", "validation", "valid")
TEST_NAMES = ("test",)


def _extensions() -> tuple[str, ...]:
    return IMG_EXTENSIONS


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


class FolderImages(ImageSource):
    """The images of one folder of class sub-folders, indexed with ``classes`` (possibly a larger class list)."""

    def __init__(self, root: Path, classes: Optional[list[str]] = None):
        self.root = root
        present = _class_dirs(root)
        if not present:
            _no_classes(root)
        self.classes = list(classes) if classes is not None else present
        unknown = [c for c in present if c not in self.classes]
        if unknown:
            raise DataError(
                f"{root} has class folder(s) {', '.join(unknown[:5])} that the train folder does not have; "
                "every val and test class must also be a train class.")
        class_to_idx = {c: self.classes.index(c) for c in present}
        samples = make_dataset(str(root), class_to_idx, extensions=_extensions(), allow_empty=True)
        found = {t for _, t in samples}
        empty = [c for c in present if class_to_idx[c] not in found]
        if empty:
            raise DataError(
                f"class folder {root / empty[0]} has no images ({', '.join(_extensions())}); add images or remove "
                "the folder" + (f" (also empty: {', '.join(empty[1:4])})" if len(empty) > 1 else "") + ".")
        self.paths = [p for p, _ in samples]
        self.targets = [t for _, t in samples]

    def load(self, i: int) -> Image.Image:
        return open_image(self.paths[i])

    def describe(self, i: int) -> str:
        return self.paths[i]


def _no_classes(root: Path) -> None:
    exts = _extensions()
    loose = [f for f in os.listdir(root) if f.lower().endswith(exts)]
    if loose:
        raise DataError(
            f"{root} holds images but no class folders; put each class's images in {root}/<class>/ "
            "(or PATH/train/<class>/ and PATH/val/<class>/).")
    raise DataError(
        f"data folder {root} is empty: expected class folders (PATH/<class>/*.jpg, or PATH/train/<class>/ and "
        "PATH/val/<class>/), or a dataset saved with datasets' save_to_disk.")


def first_dir(path: Path, names: tuple[str, ...]) -> Optional[Path]:
    """The first ``path/name`` that is a folder, or None."""
    return next((path / n for n in names if (path / n).is_dir()), None)


def load_folder(path: Path, *, val_split: Optional[float] = None, split_seed: int = 0) -> Splits:
    train_dir = path / "train"
    if train_dir.is_dir():
        train = FolderImages(train_dir)
        val_dir = first_dir(path, VAL_NAMES)
        test_dir = first_dir(path, TEST_NAMES)
        test = dict(open_test=(lambda: whole(FolderImages(test_dir, classes=train.classes))) if test_dir else None,
                    no_test=f"it has {train_dir.name}/ and " + (f"{val_dir.name}/" if val_dir else "no val folder")
                    + " but no test/ folder; add PATH/test/<class>/ images.")
        if val_dir is not None and val_split is None:
            val = FolderImages(val_dir, classes=train.classes)
            return Splits(str(path), "folder", train.classes, whole(train), whole(val), **test)
        if val_split is None:
            raise DataError(
                f"{path} has train/ but no val/ folder; add PATH/val/<class>/ images or give --val-split 0.1 to hold "
                "out part of train/.")
        tr, va = stratified_split(train.targets, val_split, split_seed)
        return Splits(str(path), "folder", train.classes, (train, tr), (train, va), val_split=val_split,
                      notes=[f"val = {val_split:g} of {train_dir} per class (seed {split_seed})"], **test)
    src = FolderImages(path)
    frac = 0.1 if val_split is None else val_split
    tr, va = stratified_split(src.targets, frac, split_seed)
    notes = [f"val = {frac:g} of the images of each class (seed {split_seed})"
             + ("; set --val-split to change it" if val_split is None else "")]
    no_test = (f"it is one folder of class folders, split into train and val ({frac:g} per class); a test split "
               "needs PATH/train/<class>/, PATH/val/<class>/ and PATH/test/<class>/.")
    return Splits(str(path), "folder", src.classes, (src, tr), (src, va), val_split=frac, notes=notes,
                  no_test=no_test)
