"""What every data source shares: a list of labelled images, a seeded stratified split, and the dataset the
trainer and ``evaluate`` read (transforms, per-sample seeding, unreadable images skipped).

A source (``ImageSource``) only knows how to open image ``i`` as a PIL image and its label. ``Prepared`` wraps a
source (or a subset of it) for a DataLoader:

* the transform is applied with random state derived from ``(seed, epoch, index)`` only, so augmentation is the
  same whatever the number of workers or processes, and a run resumed in the middle of an epoch sees exactly the
  images an uninterrupted run would have seen; the global random state of the process is left untouched (a
  DataLoader worker's, which nothing else uses, is left seeded by the last sample);
* an image that cannot be read is not fatal: the sample comes back as ``Unreadable`` and ``collate`` drops it from
  the batch, reporting it in ``Batch.bad`` so the caller can warn once per file and count them; files that are not
  regular files (FIFOs, devices, sockets: opening them could block or have side effects) and, for sources that
  confine their paths, names that lead out of the dataset folder are refused the same way, without being opened;
* labels can be re-mapped onto a model head (``target_map``: data class index -> head output).
"""
from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..files import RefusedPath, inside, open_regular
from ..errors import DataError

#: exceptions that mean "this file is not a readable image" (PIL, truncated files, decoders)
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, RuntimeError)


#: a file vitprune does not open: outside the dataset folder, or not a regular file (``vitprune.files``)
RefusedFile = RefusedPath


def confined(root: Path, name: str) -> Path:
    """``root/name`` with symlinks resolved, if it stays inside ``root``; absolute names, ``..`` and symlinks that
    lead out of ``root`` raise ``RefusedFile`` (``vitprune.files.inside``)."""
    try:
        return inside(root, name, what="image path")
    except RefusedPath as e:
        raise RefusedFile(str(e).replace("the folder", "the dataset folder")) from None


def open_image(path: str | os.PathLike, *, follow_symlinks: bool = True) -> Image.Image:
    """Open and decode the image file at ``path``, refusing (``RefusedFile``, unopened) anything that is not a
    regular file: a FIFO would block the loader forever, a device could be endless or have side effects."""
    with open_regular(path, follow_symlinks=follow_symlinks) as f:
        img = Image.open(f)
        img.load()
    return img


class ImageSource:
    """A labelled image collection: ``classes``, ``targets`` (class index per image), ``load(i)``, ``describe(i)``."""

    classes: list[str]
    targets: list[int]
    streams = False  # True for a source read in order, shard by shard (``vitprune.data.stream.StreamSource``)

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> Image.Image:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self, i: int) -> str:
        return f"image {i}"


@dataclass(frozen=True)
class Unreadable:
    """A sample whose image could not be read (dropped by ``collate``)."""

    index: int
    where: str
    reason: str


class Batch(NamedTuple):
    images: torch.Tensor
    targets: torch.Tensor
    bad: list  # Unreadable samples dropped from this batch


def collate(samples: list) -> Batch:
    """Stack the readable samples; unreadable ones go to ``Batch.bad``."""
    good = [s for s in samples if not isinstance(s, Unreadable)]
    bad = [s for s in samples if isinstance(s, Unreadable)]
    if good:
        # torch's default_collate stacks straight into shared memory in a loader worker (one copy less per batch)
        images = torch.utils.data.default_collate([s[0] for s in good])
        targets = torch.tensor([s[1] for s in good], dtype=torch.long)
    else:
        images, targets = torch.empty(0), torch.empty(0, dtype=torch.long)
    return Batch(images, targets, bad)


def worker_init(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM: a Ctrl-C in the terminal or a scheduler's SIGTERM to every
    process of the job reaches the main process, which finishes its step and saves; workers end with it."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


class RunLoader:
    """One ``DataLoader`` for a whole training run: its worker processes start once and stay for every epoch
    (``persistent_workers``, as timm's loaders keep them), instead of being started afresh each epoch.

    ``epoch(e, start)`` points the loader's order at micro-batch ``start`` of epoch ``e`` (``seek``: a sampler in
    this process, or a position the workers read when an epoch begins) and returns the iterator over its batches;
    the order and the augmentation are the same as with a fresh loader per epoch. ``close()`` (or leaving a
    ``with`` block) ends the workers.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, seek: Callable[[int, int], None]):
        self.loader = loader
        self._seek = seek

    def epoch(self, epoch: int, start: int = 0):
        self._seek(epoch, start)
        return iter(self.loader)

    def close(self) -> None:
        # persistent workers live in the loader's one iterator; torch ends them when it is collected, which a
        # traceback holding this frame would delay
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None

    def __enter__(self) -> "RunLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def data_loader(dataset: torch.utils.data.Dataset, *, workers: int, pin_memory: bool = False,
                persistent: bool = False, **kw: Any) -> torch.utils.data.DataLoader:
    """A DataLoader as vitprune's trainer reads with: vitprune's ``collate``, workers that ignore SIGINT/SIGTERM
    (``worker_init``), kept for the whole run with ``persistent`` (when there are workers)."""
    return torch.utils.data.DataLoader(dataset, num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                                       worker_init_fn=worker_init, persistent_workers=persistent and workers > 0,
                                       **kw)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (SeedSequence mixes the three numbers)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint64)[0] >> 1)


class Prepared(torch.utils.data.Dataset):
    """``source`` (restricted to ``indices``) with ``transform``; items are ``(tensor, target)`` or ``Unreadable``.

    Keys may be an index or an ``(epoch, index)`` pair (the trainer's sampler passes pairs so the augmentation of
    each sample is a pure function of the seed, the epoch and the index).
    """

    def __init__(self, source: ImageSource, indices: Optional[Sequence[int]] = None,
                 transform: Optional[Callable] = None, *, seed: int = 0, random_transform: bool = False,
                 target_map: Optional[Sequence[int]] = None):
        self.source = source
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self.transform = transform
        self.seed = seed
        self.random_transform = random_transform
        self.target_map = list(target_map) if target_map is not None else None
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> list[int]:
        t = [self.source.targets[i] for i in self.indices]
        return [self.target_map[v] for v in t] if self.target_map is not None else t

    def __getitem__(self, key: Any):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        j = self.indices[i]
        return make_item(lambda: self.source.load(j), self.source.targets[j], i, lambda: self.source.describe(j),
                         self.transform, self.target_map,
                         sample_seed(self.seed, epoch, i) if self.random_transform else None)


def make_item(load: Callable[[], Image.Image], target: int, index: int, where: Callable[[], str],
              transform: Optional[Callable], target_map: Optional[Sequence[int]], seed: Optional[int]):
    """One sample as the loaders give it: ``(transform(image), target)``, or ``Unreadable`` when ``load`` fails
    with a read error. ``seed``: apply the (random) transform with its own random state seeded so (the
    process's random state is put back afterwards, except in a DataLoader worker); None: apply it as is."""
    try:
        img = load()
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
    except READ_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return Unreadable(index, where(), reason)
    if target_map is not None:
        target = target_map[target]
    if transform is None:
        return img, target
    if seed is None:
        return transform(img), target
    # in a loader worker nothing else draws from the process's random state: it is seeded and left so (saving and
    # restoring it cost about a tenth of a worker's time per image); elsewhere it is put back afterwards
    keep = torch.utils.data.get_worker_info() is None
    py_state, torch_state = (random.getstate(), torch.get_rng_state()) if keep else (None, None)
    random.seed(seed)
    # the CPU generator only: transforms draw from it, and torch.manual_seed would also seed (lazily, recording a
    # stack trace each time) every accelerator backend, which costs more than decoding a small image
    torch.default_generator.manual_seed(seed)
    try:
        return transform(img), target
    finally:
        if keep:
            random.setstate(py_state)
            torch.set_rng_state(torch_state)


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, val) indices: in every class, ``round(n * val_fraction)`` images (at least 1 when the class has 2 or
    more) go to val, chosen with a generator seeded by ``seed``; both lists sorted."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train, val = [], []
    for c in sorted(by_class):
        idx = by_class[c]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        perm = torch.randperm(len(idx), generator=g).tolist()
        val += [idx[p] for p in perm[:n_val]]
        train += [idx[p] for p in perm[n_val:]]
    return sorted(train), sorted(val)


def whole(src: ImageSource) -> tuple[ImageSource, list[int]]:
    """``(src, every index)``: a split that is all of ``src``."""
    return src, list(range(len(src)))


@dataclass
class Splits:
    """A loaded dataset: the source(s) and the image indices of each split.

    The test split is not read when the data is loaded (training and ``compress`` never touch it): ``open_test``
    reads it when ``test_split()`` is first asked for; ``no_test`` is the one line that says what the data has
    instead when there is none.
    """

    name: str  # what the user gave (for reports)
    kind: str  # demo | folder | hf | shards
    classes: list[str]
    train: Optional[tuple[ImageSource, list[int]]]
    val: Optional[tuple[ImageSource, list[int]]]
    #: augmentation defaults this data asks for (e.g. no horizontal flips for digits)
    augment_hints: dict[str, Any] = field(default_factory=dict)
    #: False: train without augmentation unless the user asks for some (the demo digits)
    augment_default: bool = True
    notes: list[str] = field(default_factory=list)
    val_split: Optional[float] = None
    open_test: Optional[Callable[[], tuple[ImageSource, Sequence[int]]]] = field(default=None, repr=False)
    no_test: str = "it has train and val splits only."
    _test: Optional[tuple[ImageSource, Sequence[int]]] = field(default=None, init=False, repr=False)

    @property
    def has_test(self) -> bool:
        return self.open_test is not None

    def test_split(self) -> tuple[ImageSource, Sequence[int]]:
        """``(source, indices)`` of the test split, read on first use; ``DataError`` (one line naming the splits
        the data has) when there is none."""
        if self.open_test is None:
            raise DataError(f"{self.name} has no test split: {self.no_test}")
        if self._test is None:
            self._test = self.open_test()
        return self._test

    @property
    def streamed(self) -> bool:
        """True when the training images are read as a stream (``vitprune.data.stream``), not by index."""
        return self.train is not None and getattr(self.train[0], "streams", False)

    def describe(self) -> dict[str, Any]:
        return {
            "data": self.name, "kind": self.kind, "classes": len(self.classes),
            "train_images": len(self.train[1]) if self.train else 0,
            "val_images": len(self.val[1]) if self.val else 0,
            "val_split": self.val_split, **({"streamed": True} if self.streamed else {}),
        }
