"""webdataset shards: ``PATH/train/*.tar`` and ``PATH/val/*.tar`` (or ``valid/``, ``validation/``) and, optionally,
``PATH/test/*.tar`` (indexed only when the test split is asked for), each sample an
image file (``KEY.jpg``, ``.png``, ...) and its class index as text (``KEY.cls``), webdataset's usual layout (as
``webdataset.TarWriter`` / ``ShardWriter`` write it). Read with the ``webdataset`` library (the
``vitprune[streams]`` extra).

Class names come from ``classes.txt`` (one name per line, line ``i`` is class ``i``) or ``classes.json`` (a list,
or an object ``{"name": index}`` or ``{"index": "name"}``) in ``PATH`` or beside the train shards; without one the
classes are the numbers ``0 .. max label``, which must all occur (a stray label past a gap, ``cls`` 99 among 0..9,
would make a 100-class head). A label outside the named classes is a one-line error; a sample
without a ``cls`` (or whose ``cls`` is not a number >= 0) or whose image cannot be decoded is skipped with a
warning and counted, as an unreadable image in a folder is.

Opening the data makes one pass over each shard's tar headers (the image bytes are skipped over, not read) that
counts the samples, grouped into samples by webdataset's own rules, and reads each ``cls``; it records where each
sample starts, so a reader can start inside a shard and the trainer knows every epoch's length.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from PIL import Image

from ..errors import DataError
from ..files import RefusedPath, open_regular, read_text
from .base import Splits
from .folder import TEST_NAMES, VAL_NAMES, first_dir
from .stream import StreamSource

EXTRA = 'pip install "vitprune[streams]"'

#: a sample's image is its first member with one of these extensions (webdataset's image extensions)
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "pbm", "pnm", "tif", "tiff", "gif")
CLASS_FILES = ("classes.txt", "classes.json")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: members it never reads


def require_webdataset(what: str = "reading webdataset shards"):
    """The webdataset module, or one line naming the extra."""
    try:
        import webdataset  # optional extra
    except ImportError:
        raise DataError(f"{what} needs the webdataset package; install the extra: {EXTRA}.") from None
    return webdataset


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tar") and not p.name.startswith("."))


def is_shard_folder(path: Path) -> bool:
    """A folder whose ``train/`` holds ``.tar`` files and no class folders."""
    train = path / "train"
    return train.is_dir() and bool(shard_files(train)) and not any(
        e.is_dir() and not e.name.startswith(".") for e in os.scandir(train))


def _open_shard(path: Path):
    """The shard opened through the file gate: a FIFO or a device is refused before it is opened."""
    try:
        return open_regular(path)
    except RefusedPath:
        raise DataError(f"shard {path} is not a regular file (a FIFO or a device is not read).") from None


def _parse_cls(data: Optional[bytes]) -> tuple[int, Optional[str]]:
    if data is None:
        return -1, "no class label (KEY.cls) in the sample"
    try:
        text = data.decode("utf-8").strip()
        value = int(text)
    except (UnicodeDecodeError, ValueError):
        return -1, f"class label {data[:20]!r} is not a number"
    if value < 0:
        return -1, f"class label {value} is negative"
    return value, None


class TarShards(StreamSource):
    """The samples of some ``.tar`` shards (one split), indexed once when made."""

    def __init__(self, paths: list[Path]):
        from webdataset.tariterators import base_plus_ext, group_by_keys  # optional extra

        self.paths = paths
        self.classes: list[str] = []  # set by load_shards
        self.shard_sizes, self.offsets, targets, self.label_problems = [], [], [], {}
        n = 0
        for path in paths:
            try:
                with _open_shard(path) as f:
                    tf = tarfile.open(fileobj=f, mode="r:")
                    samples = list(group_by_keys(self._headers(tf, str(path), base_plus_ext)))
            except DataError:
                raise
            except (OSError, tarfile.TarError, ValueError, EOFError) as e:
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise DataError(f"{path} is not a readable tar shard ({why}).") from None
            offsets = np.empty(len(samples), dtype=np.int64)
            tg = np.empty(len(samples), dtype=np.int64)
            for j, sample in enumerate(samples):
                members = [v for k, v in sample.items() if not k.startswith("__")]
                offsets[j] = min(off for off, _ in members)
                tg[j], problem = _parse_cls(sample["cls"][1] if "cls" in sample else None)
                if problem:
                    self.label_problems[n + j] = problem
            self.shard_sizes.append(len(samples))
            self.offsets.append(offsets)
            targets.append(tg)
            n += len(samples)
        self.targets = np.concatenate(targets) if targets else np.empty(0, dtype=np.int64)

    @staticmethod
    def _headers(tf: tarfile.TarFile, url: str, base_plus_ext) -> Iterator[dict[str, Any]]:
        """The members webdataset would read, as its file dicts, with (header offset, cls text) as the data."""
        for ti in tf:
            name = ti.name
            if not ti.isreg() or name is None or _META.match(name) or (
                    "/" not in name and name.startswith("__") and name.endswith("__")):
                continue
            _, suffix = base_plus_ext(name)
            payload = tf.extractfile(ti).read(64) if suffix is not None and suffix.lower() == "cls" else None
            yield {"fname": name, "data": (ti.offset, payload), "__url__": url}

    def read(self, shard: int, skip: int, take: int) -> Iterator[tuple[str, Optional[str], Optional[bytes]]]:
        from webdataset.tariterators import group_by_keys, tar_file_expander  # optional extra

        if take <= 0 or skip >= self.shard_sizes[shard]:
            return
        path = self.paths[shard]
        with _open_shard(path) as f:
            f.seek(int(self.offsets[shard][skip]))
            files = tar_file_expander([{"url": str(path), "stream": f}])
            for n, sample in enumerate(group_by_keys(files)):
                ext = next((e for e in IMAGE_SUFFIXES if e in sample), None)
                yield sample["__key__"], ext, sample.get(ext) if ext else None
                if n + 1 == take:
                    return

    def decode(self, payload: tuple[str, Optional[str], Optional[bytes]]) -> Image.Image:
        key, ext, data = payload
        if data is None:
            raise ValueError(f"no image file in the sample ({', '.join('.' + e for e in IMAGE_SUFFIXES[:4])}, ...)")
        return Image.open(BytesIO(data))

    def where(self, index: int, payload: Any = None) -> str:
        s, j = self.locate(index)
        return f"{self.paths[s]}:{payload[0]}" if payload is not None else f"{self.paths[s]} sample {j}"


def _class_names(path: Path) -> tuple[Optional[list[str]], Optional[Path]]:
    for folder in (path, path / "train"):
        for name in CLASS_FILES:
            f = folder / name
            if os.path.lexists(f):
                return _read_classes(f), f
    return None, None


def _read_classes(f: Path) -> list[str]:
    try:
        text = read_text(f, limit=64 * 2**20)
        if f.suffix == ".txt":
            names = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            if isinstance(data, list):
                names = [str(x) for x in data]
            elif isinstance(data, dict) and data and all(isinstance(v, int) for v in data.values()):
                names = [None] * len(data)
                for name, i in data.items():
                    names[i] = str(name)
            elif isinstance(data, dict) and data:
                names = [str(data[str(i)]) for i in range(len(data))]
            else:
                raise ValueError("expected a list of names or an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"{f} cannot be read as class names ({str(e).splitlines()[0] or type(e).__name__}): give a "
                        "list of names, or an object mapping names to indices 0..N-1.") from None
    if not names or None in names or len(set(names)) != len(names):
        raise DataError(f"{f} must name each class once, indices 0..N-1 without gaps.")
    return names


def load_shards(path: Path, *, val_split: Optional[float] = None) -> Splits:
    require_webdataset()
    if val_split is not None:
        raise DataError(f"{path} holds webdataset shards, which are streamed: --val-split does not apply; put the "
                        "val shards in PATH/val/.")
    val_dir = first_dir(path, VAL_NAMES)
    if val_dir is None or not shard_files(val_dir):
        raise DataError(f"{path} has train/ shards but no val/ shards; add PATH/val/*.tar.")
    train = TarShards(shard_files(path / "train"))
    val = TarShards(shard_files(val_dir))
    if not len(train):
        raise DataError(f"the shards in {path / 'train'} hold no samples.")
    names, names_file = _class_names(path)
    labels = np.concatenate([train.targets, val.targets])
    if names is None:
        _check_contiguous(train, val, labels, path)
        names = [str(i) for i in range(int(labels.max()) + 1)] if (labels >= 0).any() else []
        how = "classes are the label numbers (no classes.txt or classes.json)"
    else:
        how = f"class names from {names_file.name}"
    train.classes = val.classes = names
    for part in (train, val):
        _check_classes(part, names, names_file, path)
    notes = [f"webdataset shards: {len(train.paths)} train ({len(train)} samples), {len(val.paths)} val "
             f"({len(val)} samples); {how}"]
    test_dir = first_dir(path, TEST_NAMES)

    def open_test() -> tuple[TarShards, range]:
        test = TarShards(shard_files(test_dir))
        test.classes = names
        _check_classes(test, names, names_file, path)
        return test, range(len(test))

    has_test = test_dir is not None and bool(shard_files(test_dir))
    return Splits(str(path), "shards", names, (train, range(len(train))), (val, range(len(val))), notes=notes,
                  open_test=open_test if has_test else None,
                  no_test=f"it has train/ and {val_dir.name}/ shards but no test/ shards; add PATH/test/*.tar.")


def _check_contiguous(train: TarShards, val: TarShards, labels: np.ndarray, path: Path) -> None:
    """Without a classes file the classes are the label numbers ``0 .. max``: one line, naming the shard, sample and
    label, when a label lies past a number no sample has (a stray ``cls`` 99 among 0..9 would make a 100-class
    head)."""
    present = np.unique(labels[labels >= 0])
    if not present.size or present.size == int(present[-1]) + 1:
        return
    first_gap = int(np.flatnonzero(present != np.arange(present.size))[0])  # the smallest number no sample has
    for part in (train, val):
        past = np.flatnonzero(part.targets > first_gap)
        if past.size:
            label = int(part.targets[past[0]])
            raise DataError(f"label {label} in {part.where(int(past[0]))} is outside the classes 0..{first_gap - 1} "
                            f"the other labels of {path} form (no sample has {first_gap}); declare the classes in "
                            "classes.txt (one name per line, line i is class i) or classes.json beside the train "
                            "shards, or fix the label.")


def _check_classes(part: TarShards, names: list[str], names_file: Optional[Path], path: Path) -> None:
    """One line when a label of ``part`` is outside the classes (named in ``names_file``, else the train and val
    label numbers)."""
    outside = part.targets[part.targets >= len(names)]
    if outside.size:
        where = names_file.name if names_file else "the train and val shards"
        raise DataError(f"label {int(outside[0])} in the shards of {path} is outside the {len(names)} classes of "
                        f"{where} ({outside.size} such samples).")
