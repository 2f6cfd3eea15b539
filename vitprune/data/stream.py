"""Datasets read as streams, shard by shard, in order: webdataset ``.tar`` shards (``shards.py``) and Hub datasets
loaded with ``--streaming`` (``hub.py``).

A stream source (``StreamSource``) knows how many samples each shard holds and every sample's label (from one
pass over the shards when the data is opened: tar headers and ``cls`` members, or the label column), and can read
samples ``skip .. skip + take - 1`` of a shard in order. ``StreamSet`` is what the trainer and ``evaluate`` get
in place of a map-style ``Prepared``; the trainer asks it for one loader for the whole run (``run_loader``, whose
workers persist across epochs), and plain iteration (what
``evaluate`` does) yields every sample once, in stored order.

One epoch of training, for ``W`` processes, batch ``b``, ``M`` micro-batches per process and ``K`` loader workers:

* the epoch's sequence is the shards in an order seeded by ``(seed, epoch)``, each shard's samples in stored
  order; process ``r`` takes positions ``r*M*b .. (r+1)*M*b - 1`` of it, so every process has exactly ``M``
  micro-batches whatever the shard sizes, and no sample is given to two processes. The last ``len % (W*b)``
  positions (fewer than one global batch) are left out of that epoch, as for folders; the shard order changes
  every epoch, so it is not always the same samples that wait;
* within a process, loader worker ``k`` takes micro-batches ``k, k+K, k+2K, ...`` (the order in which a
  ``DataLoader`` collects them) and reads one contiguous run of the process's positions for them: only the
  shards it needs, starting inside the first one (tar shards: by seeking to the sample's recorded offset);
* each worker shuffles its run through a buffer of ``SHUFFLE_BUFFER`` raw samples (webdataset's shuffle, with a
  random generator seeded by seed, epoch, process and worker); images are decoded and augmented after the
  buffer, with random state seeded by ``(seed, epoch, position)`` as for folders.

Resume is sample-exact: a run stopped after micro-batch ``s`` of an epoch continues with micro-batch ``s`` of that
epoch, each worker reading its run again from the start and dropping (without decoding) the samples it had
already given, and the loader's workers renumbered so the interleaving continues where it stopped. The batches
are the ones the uninterrupted run would have used, so the result is the same, as for folders; it needs the same
``--workers``, ``--batch-size`` and number of processes, and refuses others.
"""
from __future__ import annotations

import random
from itertools import islice
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .base import ImageSource, RunLoader, Unreadable, data_loader, make_item, sample_seed

#: raw (undecoded) samples each loader worker holds to shuffle its run of the epoch (webdataset's usual size)
SHUFFLE_BUFFER = 1000

#: what a missing sample is reported as (a shard that ended early or changed after it was indexed)
MISSING_REASON = "could not be read from its shard (it ended early or changed since the data was opened)"

_MISSING = object()


class StreamSource(ImageSource):
    """Labelled images stored in shards that are read in order.

    ``shard_sizes``: samples per shard; ``targets``: class index per sample (shards concatenated in stored order),
    -1 for a sample without a usable label (``label_problems`` says why; it is skipped like an unreadable image).
    Subclasses implement ``read`` (raw payloads of a run of one shard), ``decode`` (a payload to a PIL image) and
    ``where`` (how a sample is named in warnings). ``sequential``: reading sample ``j`` of a shard reads the
    ``j`` samples before it (no seeking), so random access is slow.
    """

    streams = True

    shard_sizes: list[int]
    targets: Any  # numpy int64 array
    label_problems: dict[int, str]
    sequential: bool = False

    def read(self, shard: int, skip: int, take: int) -> Iterator[Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, payload: Any) -> Image.Image:  # pragma: no cover - interface
        raise NotImplementedError

    def where(self, index: int, payload: Any = None) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def starts(self) -> np.ndarray:
        """Index of each shard's first sample."""
        return np.concatenate([[0], np.cumsum(self.shard_sizes)[:-1]]).astype(np.int64)

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, sample within the shard) of sample ``index``."""
        s = int(np.searchsorted(np.cumsum(self.shard_sizes), index, side="right"))
        return s, int(index - self.starts[s])

    def load(self, i: int) -> Image.Image:
        s, j = self.locate(i)
        for payload in self.read(s, j, 1):
            return self.decode(payload)
        raise OSError(MISSING_REASON)

    def describe(self, i: int) -> str:
        return self.where(i)

    def run(self, order: Sequence[int], lo: int, n: int) -> Iterator[tuple[int, int, Any]]:
        """``(index, position, payload)`` for positions ``lo .. lo+n-1`` of the shards concatenated in ``order``;
        always ``n`` items (a sample a shard no longer yields comes with a missing payload)."""
        sizes, starts = self.shard_sizes, self.starts
        pos = 0
        for s in order:
            size = sizes[s]
            a, b = max(lo - pos, 0), min(lo + n - pos, size)
            if a < b:
                got = 0
                for payload in _guarded(self.read(s, a, b - a)):
                    if got == b - a:
                        break
                    yield int(starts[s]) + a + got, pos + a + got, payload
                    got += 1
                for j in range(a + got, b):
                    yield int(starts[s]) + j, pos + j, _MISSING
            pos += size
            if pos >= lo + n:
                break


def _guarded(payloads: Iterator[Any]) -> Iterator[Any]:
    """The payloads until the reader fails (a truncated or changed shard): the rest count as missing."""
    try:
        yield from payloads
    except Exception:  # noqa: BLE001 - any reader failure ends this shard; the caller pads and counts
        return


def batches_per_worker(micro_batches: int, workers: int) -> list[int]:
    """Micro-batches each of ``workers`` loader workers gives: worker ``k`` gives ``k, k+K, k+2K, ...``."""
    return [(micro_batches - k + workers - 1) // workers for k in range(workers)]


def given_before(start: int, worker: int, workers: int) -> int:
    """How many of worker ``worker``'s micro-batches come before micro-batch ``start`` of the epoch."""
    return (start - worker + workers - 1) // workers if start > worker else 0


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_shards, generator=g).tolist()


class StreamSet(torch.utils.data.IterableDataset):
    """``source`` with ``transform``, for the trainer (``run_loader``) and for evaluation (plain iteration: every
    sample once, in stored order, the samples split into contiguous runs between loader workers). Items are
    ``(tensor, target)`` or ``Unreadable``, as from ``Prepared``; arguments as ``Prepared``'s."""

    def __init__(self, source: StreamSource, transform: Optional[Callable] = None, *, seed: int = 0,
                 random_transform: bool = False, target_map: Optional[Sequence[int]] = None,
                 shuffle_buffer: int = SHUFFLE_BUFFER):
        self.source = source
        self.transform = transform
        self.seed = seed
        self.random_transform = random_transform
        self.target_map = list(target_map) if target_map is not None else None
        self.shuffle_buffer = shuffle_buffer
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        k, K = (info.id, info.num_workers) if info is not None else (0, 1)
        n = len(self)
        lo, hi = k * n // K, (k + 1) * n // K
        yield from self._items(self.source.run(range(len(self.source.shard_sizes)), lo, hi - lo), 0)

    def run_loader(self, batch_size: int, *, rank: int = 0, world_size: int = 1,
                   micro_batches: Optional[int] = None, workers: int = 0, pin_memory: bool = False) -> RunLoader:
        """One loader for a whole run whose workers persist across epochs: ``.epoch(e, start)`` iterates this
        process's micro-batches ``start .. micro_batches-1`` of training epoch ``e`` (default ``micro_batches``:
        every whole global batch of the epoch), shuffled as the module docstring says; the workers read the epoch
        and start when it begins."""
        part = self._part(batch_size, rank, world_size, micro_batches, workers)
        return RunLoader(data_loader(part, batch_size=batch_size, workers=workers, pin_memory=pin_memory,
                                     persistent=True), part.seek)

    def _part(self, batch_size: int, rank: int, world_size: int, micro_batches: Optional[int],
              workers: int) -> "_EpochPart":
        if micro_batches is None:
            micro_batches = len(self) // (batch_size * world_size)
        if micro_batches * batch_size * world_size > len(self):
            raise ValueError(f"{micro_batches} micro-batches of {batch_size} x {world_size} exceed {len(self)} samples")
        return _EpochPart(self, batch_size, rank, micro_batches, max(1, workers))

    def _items(self, raw: Iterator[tuple[int, int, Any]], epoch: int) -> Iterator[Any]:
        src = self.source
        for i, pos, payload in raw:
            if payload is _MISSING:
                yield Unreadable(i, src.where(i), MISSING_REASON)
                continue
            target = int(src.targets[i])
            if target < 0:
                yield Unreadable(i, src.where(i, payload), src.label_problems.get(i, "no class label"))
                continue
            yield make_item(lambda p=payload: src.decode(p), target, i, lambda p=payload: src.where(i, p),
                            self.transform, self.target_map,
                            sample_seed(self.seed, epoch, pos) if self.random_transform else None)


class _EpochPart(torch.utils.data.IterableDataset):
    """One process's part of one training epoch (see the module docstring)."""

    def __init__(self, data: StreamSet, batch: int, rank: int, micro_batches: int, workers: int):
        self.data, self.batch, self.rank = data, batch, rank
        self.micro, self.workers = micro_batches, workers
        # (epoch, start) in shared memory: persistent workers read what the main process set before the epoch began
        self.position = torch.zeros(2, dtype=torch.int64).share_memory_()

    def seek(self, epoch: int, start: int = 0) -> None:
        self.position[0], self.position[1] = int(epoch), int(start)

    @property
    def epoch(self) -> int:
        return int(self.position[0])

    @property
    def start(self) -> int:
        return int(self.position[1])

    def __len__(self) -> int:
        return (self.micro - self.start) * self.batch

    def __iter__(self) -> Iterator[Any]:
        import webdataset  # optional extra

        info = torch.utils.data.get_worker_info()
        K = self.workers
        epoch, start = self.epoch, self.start  # read once: the main process may seek the next epoch
        # the loader starts collecting from its worker 0: after a resume at micro-batch `start`, worker 0 plays the
        # worker whose turn it is, so the batches come in the uninterrupted order
        k = ((info.id if info is not None else 0) + start) % K
        counts = batches_per_worker(self.micro, K)
        b = self.batch
        lo = self.rank * self.micro * b + b * sum(counts[:k])
        src, seed = self.data.source, self.data.seed
        raw = src.run(shard_order(len(src.shard_sizes), seed, epoch), lo, b * counts[k])
        buf = self.data.shuffle_buffer
        if buf > 1:
            state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, self.rank, k, K]).generate_state(1)[0]
            raw = webdataset.filters.shuffle(buf, buf, rng=random.Random(int(state)))(raw)
        raw = islice(raw, b * given_before(start, k, K), None)
        yield from self.data._items(raw, epoch)
