"""Hub datasets: ``--data hf:org/name`` loads the dataset with ``datasets.load_dataset`` (the ``vitprune[datasets]``
extra). Without network access (``HF_HUB_OFFLINE=1``, or the Hub unreachable, as for models) it is read from the
local Hugging Face cache, where an earlier ``load_dataset`` left it; with ``--streaming`` it is read as a stream
(``load_dataset(..., streaming=True)``; needs ``vitprune[streams]``), shard by shard, as webdataset shards are.

Splits and columns are found as for ``save_to_disk`` folders (``hf.py``): a train split and a validation split
(``validation``/``val``/``valid``; or ``--val-split`` when there is none, not with ``--streaming``), a ``test``
split (never used as val; read only when asked for), the
first ``Image`` and ``ClassLabel`` features (else columns named image/label...). Images are decoded by vitprune,
so one unreadable image is skipped and counted. An image stored as a path instead of bytes is read only from inside
the dataset's own cache folders (its repo folder in the Hub cache, the files ``datasets`` downloaded), with the
rules of ``save_to_disk`` folders otherwise: ``..``, links that lead out and files that are not regular files are
refused per row, unopened.

A streamed dataset is counted once when it is opened: one pass over the label column of every shard (which also
checks the labels), so each epoch's length is known.
"""
from __future__ import annotations

import inspect
import os
import re
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
from PIL import Image

from huggingface_hub import constants

from ..errors import DataError
from ..offline import ensure_offline_if_unreachable
from .base import RefusedFile, Splits, confined
from .hf import check_labels, columns, dataset_splits, decode_value, numeric_classes, pick_splits, pick_test, undecoded
from .stream import MISSING_REASON, StreamSource
from .shards import require_webdataset

PREFIX = "hf:"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _datasets():
    try:
        import datasets  # optional extra
    except ImportError:
        raise DataError('hf: datasets need the datasets package; install the extra: pip install "vitprune[datasets]".') \
            from None
    return datasets


def cache_resolver(repo_id: str) -> Callable[[str], Path]:
    """Where an image path of Hub dataset ``repo_id`` may be read: inside its repo folder in the Hub cache or the
    folder of files ``datasets`` downloaded (absolute paths allowed there only; relative ones are taken inside the
    repo folder)."""
    import datasets  # optional extra

    roots = [Path(constants.HF_HUB_CACHE) / ("datasets--" + repo_id.replace("/", "--")),
             Path(datasets.config.DOWNLOADED_DATASETS_PATH)]

    def resolve(name: str) -> Path:
        if not os.path.isabs(name):
            return confined(roots[0], name)
        for root in roots:
            rel = os.path.relpath(name, root)
            if not rel.startswith(".."):
                return confined(root, rel)
        raise RefusedFile("image path outside the dataset's Hugging Face cache folders")

    return resolve


def load_kwargs(load: Callable[..., Any]) -> dict[str, Any]:
    """``trust_remote_code=False`` when ``load`` (``datasets.load_dataset``) takes it by name: datasets 2.16-3.x do
    (and may otherwise ask to run a dataset's script); 4.0 removed scripts and the argument (passed there, it would
    become a builder option and fail)."""
    return {"trust_remote_code": False} if "trust_remote_code" in inspect.signature(load).parameters else {}


def load_hub(spec: str, *, streaming: bool = False, val_split: Optional[float] = None,
             split_seed: int = 0) -> Splits:
    repo_id = spec[len(PREFIX):]
    if not _REPO.match(repo_id):
        raise DataError(f"{spec}: give a Hub dataset as hf:org/name.")
    local = next((p for p in (repo_id, repo_id + ".py") if os.path.lexists(p)), None)
    if local is not None:  # datasets would read it instead of the Hub
        raise DataError(f"{spec} means the Hub dataset {repo_id}, but {local!r} in the working folder would be read "
                        f"instead; give a local folder by its path (./{repo_id}), or run from another folder.")
    datasets = _datasets()
    if streaming:
        require_webdataset("--streaming")
        if val_split is not None:
            raise DataError("--val-split needs the whole train split at hand; with --streaming the dataset needs a "
                            "validation split of its own.")
    offline = ensure_offline_if_unreachable()
    if offline:
        datasets.config.HF_HUB_OFFLINE = True
    try:
        loaded = datasets.load_dataset(repo_id, streaming=streaming, **load_kwargs(datasets.load_dataset))
    except Exception as e:  # datasets raises ConnectionError, DatasetNotFoundError, FileNotFoundError, ValueError...
        where = " (offline: it must be in the local Hugging Face cache from an earlier load)" if offline else ""
        raise DataError(f"{spec} cannot be loaded{where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    resolve = cache_resolver(repo_id)
    if not streaming:
        return dataset_splits(loaded, spec, resolve, val_split=val_split, split_seed=split_seed, kind="hub")
    train_key, val_key, train_ds, val_ds = pick_splits(loaded, spec)
    if val_ds is None:
        raise DataError(f"{spec} has no validation split (validation, val or valid; a test split is never used as "
                        "val); with --streaming it needs one (or leave out --streaming and give --val-split).")
    if train_ds.features is None:
        raise DataError(f"{spec} does not say its columns' types when streamed; leave out --streaming.")
    image_col, label_col = columns(train_ds, spec)
    feat = train_ds.features[label_col]
    train = HubStream(train_ds, image_col, label_col, f"{spec}[{train_key}]", resolve)
    val = HubStream(val_ds, image_col, label_col, f"{spec}[{val_key}]", resolve)
    if isinstance(feat, datasets.ClassLabel):
        classes = list(feat.names)
    else:
        classes = numeric_classes(set(train.values) | set(val.values), label_col)
    for part in (train, val):
        part.settle(classes, label_col)
    if not len(train):
        raise DataError(f"the train split of {spec} is empty.")
    notes = [f"streamed: columns image={image_col!r}, label={label_col!r}; {train.n_shards} train shard(s) "
             f"({len(train)} rows), val = split {val_key!r} ({len(val)} rows)"]
    test_key, no_test = pick_test(loaded)

    def open_test() -> tuple[HubStream, range]:
        test = HubStream(loaded[test_key], image_col, label_col, f"{spec}[{test_key}]", resolve)
        test.settle(classes, label_col)
        return test, range(len(test))

    return Splits(spec, "hub", classes, (train, range(len(train))), (val, range(len(val))), notes=notes,
                  open_test=open_test if test_key else None, no_test=no_test)


def _rows(ds: Any, batch: int = 64) -> Iterator[dict[str, Any]]:
    """The rows of an IterableDataset, read through ``iter`` (plain iteration inside a DataLoader worker would
    hand this worker only some of the dataset's shards: vitprune splits the work itself)."""
    for b in ds.iter(batch_size=batch):
        cols = list(b)
        for i in range(len(b[cols[0]]) if cols else 0):
            yield {c: b[c][i] for c in cols}


class HubStream(StreamSource):
    """One split of a Hub dataset loaded with ``streaming=True``, read shard by shard (the dataset's own shards:
    its data files)."""

    sequential = True

    def __init__(self, ds: Any, image_col: str, label_col: str, name: str, resolve: Callable[[str], Path]):
        self.ds = undecoded(ds, image_col)
        self.image_col, self.name, self.resolve = image_col, name, resolve
        self.n_shards = ds.num_shards
        self.values, self.shard_sizes = [], []
        labels = ds.select_columns([label_col])
        for s in range(self.n_shards):
            part = [row[label_col] for row in _rows(labels.shard(num_shards=self.n_shards, index=s))]
            self.values += part
            self.shard_sizes.append(len(part))
        self.label_problems: dict[int, str] = {}
        self.classes: list[str] = []  # set with the targets once the labels are checked (settle)
        self.targets = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return sum(self.shard_sizes)

    def settle(self, classes: list[str], label_col: str) -> None:
        """Check the labels read when opened against ``classes`` (one line if one is outside) and keep them as
        the targets."""
        check_labels(self.values, classes, label_col, self.name)
        self.classes, self.targets, self.values = classes, np.asarray(self.values, dtype=np.int64), []

    def read(self, shard: int, skip: int, take: int) -> Iterator[Any]:
        rows = _rows(self.ds.shard(num_shards=self.n_shards, index=shard))
        for row in islice(rows, skip, skip + take):
            yield row[self.image_col]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cursor"}  # an open reader does not travel

    def load(self, i: int) -> Image.Image:
        """Sample ``i``; reading forward from the last one loaded when it is further on in the same shard (a
        run of increasing indices reads each shard once)."""
        s, j = self.locate(i)
        cursor = getattr(self, "_cursor", None)
        if cursor is None or cursor[0] != s or cursor[1] > j:
            cursor = [s, 0, _rows(self.ds.shard(num_shards=self.n_shards, index=s))]
        for _ in range(j - cursor[1]):
            next(cursor[2], None)
        row = next(cursor[2], None)
        cursor[1] = j + 1
        self._cursor = cursor
        if row is None:
            raise OSError(MISSING_REASON)
        return self.decode(row[self.image_col])

    def decode(self, payload: Any) -> Image.Image:
        return decode_value(payload, self.resolve)

    def where(self, index: int, payload: Any = None) -> str:
        return f"{self.name} row {index}"
