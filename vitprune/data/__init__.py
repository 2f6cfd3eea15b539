"""Datasets: the bundled demo digits, ImageFolder-style folders, Hugging Face datasets saved with ``save_to_disk``
or loaded from the Hub, and webdataset shards.

``--data`` is ``demo``, a folder with ``train/`` and ``val/`` class folders (or one folder of class folders split
with ``--val-split``, stratified and seeded), a ``save_to_disk`` folder (image and label columns detected), a
folder with ``train/`` and ``val/`` webdataset ``.tar`` shards (``shards.py``), or ``hf:org/name``, a Hub dataset
(``hub.py``; ``streaming=True`` reads it as a stream).

Each kind may also have a test split, which training and ``compress`` never read (recipes are chosen on val) and
``eval --split test`` does: the demo's 178 test digits, a ``test/`` folder of class folders or of shards beside
``train/``, a ``test`` split of a saved or Hub dataset. It is opened only when asked for (``Splits.test_split``);
data without one says so in one line naming the splits it has. Shards and streamed Hub datasets become a ``StreamSet``
(``stream.py``), which the trainer asks for one loader per epoch; everything else a map-style ``Prepared``.

Preprocessing always comes from the model's own ``pretrained_cfg`` through timm's ``resolve_data_config`` and
``create_transform``, so a dataset is read exactly as the model expects; training adds timm's augmentation
(``create_transform(is_training=True)``) with the defaults in ``DEFAULT_AUGMENT``, which a dataset may adjust
and every flag may override. The demo digits train without augmentation by default (a few epochs of distillation
on centred digits do best on the plain images: EViT 98.33 % vs 97.49 % with crops, on the 359 held-out digits that
are today's val + test) and, when augmentation is asked for, without flips (digits are not mirror-symmetric) and
with gentle crops.

Labels and the model's head (``match_head``): when the data's class names are all among the head's label names
(``pretrained_cfg['label_names']``), labels are mapped by name; otherwise, when the counts are equal, class index
``i`` is head output ``i``; otherwise the head does not fit: ``compress`` replaces it (and first fine-tunes the
teacher, unless ``--teacher`` is given), ``eval`` refuses with a ``DataError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from timm.data import create_transform, resolve_data_config
from torch import nn

from ..errors import DataError
from .base import Batch, ImageSource, Prepared, Splits, Unreadable, collate, stratified_split, whole, worker_init
from .stream import StreamSet, StreamSource
from .demo import DigitsDemo
from .folder import load_folder
from .hf import is_saved_dataset, load_hf
from .hub import PREFIX, load_hub
from .shards import is_shard_folder, load_shards

#: timm training augmentation used unless the data or a flag says otherwise (timm's create_transform defaults)
DEFAULT_AUGMENT: dict[str, Any] = {
    "scale": [0.08, 1.0], "ratio": [0.75, 1.3333], "hflip": 0.5, "color_jitter": 0.4, "auto_augment": None,
    "re_prob": 0.0,
}

#: the digits are not mirror-symmetric and fill the frame: no flips, gentle crops, no colour changes
DEMO_AUGMENT: dict[str, Any] = {"scale": [0.8, 1.0], "ratio": [0.9, 1.1], "hflip": 0.0, "color_jitter": 0.0}


def eval_transform(model: nn.Module) -> Callable:
    """timm's evaluation transform for ``model`` (resize, center crop, normalise from its pretrained_cfg)."""
    return create_transform(**resolve_data_config(model=model), is_training=False)


def train_transform(model: nn.Module, augment: Optional[dict[str, Any]] = None) -> Callable:
    """timm's training transform for ``model`` with ``augment`` (keys of ``DEFAULT_AUGMENT``); ``None``: the
    evaluation transform (no augmentation)."""
    if augment is None:
        return eval_transform(model)
    cfg = resolve_data_config(model=model)
    a = {**DEFAULT_AUGMENT, **augment}
    return create_transform(
        input_size=cfg["input_size"], is_training=True, interpolation=cfg["interpolation"], mean=cfg["mean"],
        std=cfg["std"], scale=tuple(a["scale"]), ratio=tuple(a["ratio"]), hflip=float(a["hflip"]),
        color_jitter=float(a["color_jitter"]), auto_augment=a["auto_augment"] or None, re_prob=float(a["re_prob"]),
    )


class DemoImages(ImageSource):
    """The bundled digits of one split as an image source."""

    def __init__(self, split: str):
        self.ds = DigitsDemo(split)
        self.classes = list(DigitsDemo.classes)
        self.targets = list(self.ds.targets)

    def load(self, i: int):
        return self.ds[i][0]

    def describe(self, i: int) -> str:
        return f"demo digit {i}"


def load_data(spec: str, *, val_split: Optional[float] = None, split_seed: int = 0,
              streaming: bool = False) -> Splits:
    """Read dataset ``spec`` (``demo``, an ImageFolder-style folder, a ``save_to_disk`` folder, a folder of
    webdataset shards, or ``hf:org/name``); ``streaming``: read a Hub dataset as a stream."""
    if val_split is not None and not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1 (a fraction of the images), got {val_split}.")

    if spec.startswith(PREFIX):
        return load_hub(spec, streaming=streaming, val_split=val_split, split_seed=split_seed)
    if streaming:
        raise DataError("--streaming reads a Hub dataset (hf:org/name) as a stream; folders of webdataset shards are "
                        "always streamed, other data never.")
    if spec == "demo":
        if val_split is not None:
            raise DataError("the demo data has a fixed train/val/test split; --val-split does not apply to it.")
        train, val = DemoImages("train"), DemoImages("val")
        return Splits("demo", "demo", train.classes, whole(train), whole(val),
                      augment_hints=dict(DEMO_AUGMENT), augment_default=False,
                      open_test=lambda: whole(DemoImages("test")),
                      notes=[f"bundled scikit-learn digits, fixed split {len(train)}/{len(val)} (the test digits "
                             "are held back); no augmentation unless asked for (then without flips)"])
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data folder {path} does not exist; give an ImageFolder-style folder, a folder saved with "
                        "datasets' save_to_disk, a folder of webdataset shards, hf:org/name, or 'demo'.")
    if not path.is_dir():
        raise DataError(f"{path} is a file; --data takes a folder (class sub-folders, or a save_to_disk dataset) or "
                        "'demo'.")

    if is_saved_dataset(path):
        return load_hf(path, val_split=val_split, split_seed=split_seed)

    if is_shard_folder(path):
        return load_shards(path, val_split=val_split)

    return load_folder(path, val_split=val_split, split_seed=split_seed)


@dataclass
class HeadMatch:
    """How the data's classes land on a model head."""

    target_map: Optional[list[int]]  # data class -> head output (None: identity)
    fits: bool  # False: the head must be replaced (compress) or the data cannot be scored (eval)
    how: str

    @property
    def identity(self) -> bool:
        return self.fits and self.target_map is None


def match_head(classes: list[str], model: nn.Module) -> HeadMatch:
    """Map the data's classes onto ``model``'s head: by label name when every class is named there, else by index
    when the counts agree; otherwise it does not fit."""
    head = int(model.num_classes)
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if isinstance(names, dict):  # {index: name}
        names = [names.get(i, names.get(str(i))) for i in range(head)]
    if names and len(names) == head and all(c in names for c in classes):
        tmap = [list(names).index(c) for c in classes]
        if tmap == list(range(len(classes))) and len(classes) == head:
            return HeadMatch(None, True, "class names match the head's label names")
        return HeadMatch(tmap, True, "classes mapped onto the head by label name")
    if len(classes) == head:
        return HeadMatch(None, True, "class i is head output i")
    return HeadMatch(None, False, f"{len(classes)} classes vs a head of {head} outputs")


def head_error(classes: list[str], model: nn.Module, what: str = "the model") -> DataError:
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return DataError(
        f"the data has {len(classes)} classes ({shown}) but {what}'s head has {model.num_classes} outputs and its "
        "label names do not cover them: labels outside the head cannot be scored.")


def prepare(part: tuple[ImageSource, Any], transform: Optional[Callable] = None, **kw: Any) -> Prepared | StreamSet:
    """The dataset loaders read for one split ``part`` (``(source, indices)`` of a ``Splits``): a ``StreamSet``
    for a stream source, else a ``Prepared``; ``kw`` as ``Prepared``'s (seed, random_transform, target_map)."""
    src, indices = part
    if isinstance(src, StreamSource):
        return StreamSet(src, transform, **kw)
    return Prepared(src, indices, transform, **kw)


SPLITS = ("train", "val", "test")


def build_split(spec: Any, split: str, transform: Optional[Callable] = None, *, val_split: Optional[float] = None,
                model: Optional[nn.Module] = None, streaming: bool = False) -> Prepared | StreamSet:
    """The ``split`` ("train", "val" or "test") of dataset ``spec`` (a spec string or a loaded ``Splits``) with
    ``transform`` applied to each image; with ``model``, labels are mapped onto its head (``DataError`` when they
    do not fit). A missing test split is a ``DataError`` naming the splits the data has."""
    if split not in SPLITS:
        raise DataError(f"split must be 'train', 'val' or 'test', not {split!r}.")
    data = spec if isinstance(spec, Splits) else load_data(str(spec), val_split=val_split, streaming=streaming)
    tmap = None
    if model is not None:
        m = match_head(data.classes, model)
        if not m.fits:
            raise head_error(data.classes, model)
        tmap = m.target_map
    part = data.test_split() if split == "test" else data.train if split == "train" else data.val
    if part is None or not part[1]:
        raise DataError(f"{data.name} has no images in its {split} split.")
    return prepare(part, transform, target_map=tmap)


__all__ = [
    "Batch", "DEFAULT_AUGMENT", "DEMO_AUGMENT", "HeadMatch", "ImageSource", "Prepared", "SPLITS", "Splits", "StreamSet",
    "StreamSource", "Unreadable", "build_split", "collate", "eval_transform", "head_error", "load_data", "match_head",
    "prepare", "stratified_split", "train_transform", "worker_init",
]
