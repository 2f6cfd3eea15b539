"""The trainer's data loader: one ``DataLoader`` per run whose worker processes persist across epochs, with the
same order and the same augmented images as a fresh loader per epoch.

What is proved, on real digit PNGs in a folder and as webdataset shards: a real 2-epoch training run with 2 loader
workers reads every epoch in the same 2 worker processes; the batches of each epoch (and of a resumed epoch from a
micro-batch in its middle) are those the sampler's definition gives (the permutation seeded by
``seed * 100_003 + epoch``, micro-batch ``j`` = ``perm[j*b:(j+1)*b]``), image for image with seeded random crops;
for shards, the persistent loader gives what a fresh loader (new workers) per epoch gives."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from vitprune.data import Prepared, collate, load_data, prepare
from vitprune.train.ddp import DistInfo
from vitprune.train.loop import RunSettings, Trainer, run_loader
from tests.test_train_utils import digits_folder, tiny_vit


class RecordingPrepared(Prepared):
    """``Prepared`` that appends ``epoch index pid`` to ``log`` for every sample it reads (in whichever process
    reads it; lines this short are appended whole)."""

    def __init__(self, *a, log: Path, **kw):
        super().__init__(*a, **kw)
        self.log = str(log)

    def __getitem__(self, key):
        epoch, i = key
        with open(self.log, "a") as f:
            f.write(f"{epoch} {i} {os.getpid()}\n")
        return super().__getitem__(key)


def expected_indices(n: int, batch: int, seed: int, epoch: int, micro: int) -> list[list[int]]:
    """One process's micro-batches of ``epoch`` as ``EpochBatches``'s docstring defines them (one process)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [perm[j * batch:(j + 1) * batch] for j in range(micro)]


def crops(model):
    from vitprune.data import train_transform

    return train_transform(model, {"scale": [0.5, 1.0], "ratio": [0.9, 1.1], "hflip": 0.5, "color_jitter": 0.0})


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("loader"), per_class=4, val_per_class=1)


def test_a_real_run_reads_every_epoch_in_the_same_worker_processes(digits, tmp_path):
    import vitprune
    from vitprune.train.recipe import build_recipe

    teacher = tiny_vit(depth=2)
    student = vitprune.apply_method(copy.deepcopy(teacher), "evit", keep_rate=0.7)
    src, idx = load_data(str(digits)).train
    log = tmp_path / "reads.txt"
    ds = RecordingPrepared(src, idx, crops(student), seed=5, random_transform=True, log=log)
    recipe, _ = build_recipe(student.vitprune_method.default_recipe(), {"epochs": 2}, demo=False, batch_size=8,
                             augment_hints={}, augment_default=True)
    summary = Trainer(student, teacher, ds, recipe, RunSettings(device=torch.device("cpu"), batch_size=8, workers=2,
                                                                seed=5)).run()
    assert summary.finished and summary.steps == 2 * (40 // 8)
    reads = [line.split() for line in log.read_text().splitlines()]
    pids = {e: {int(p) for ep, _, p in reads if int(ep) == e} for e in (0, 1)}
    assert len(pids[0]) == 2 and pids[0] == pids[1] and os.getpid() not in pids[0]
    for e in (0, 1):  # every sample of the epoch's micro-batches read once, nothing else
        got = sorted(int(i) for ep, i, _ in reads if int(ep) == e)
        assert got == sorted(sum(expected_indices(len(ds), 8, 5, e, 5), []))


def test_a_persistent_loader_gives_each_epoch_in_the_samplers_order_with_the_same_images(digits):
    src, idx = load_data(str(digits)).train
    ds = Prepared(src, idx, crops(tiny_vit(depth=2)), seed=3, random_transform=True)
    n, b, micro = len(ds), 6, 40 // 6

    def expected(epoch: int, start: int = 0) -> list[torch.Tensor]:
        return [collate([ds[(epoch, i)] for i in batch]).images
                for batch in expected_indices(n, b, 3, epoch, micro)[start:]]

    with run_loader(ds, b, DistInfo(), 3, micro, workers=2) as loader:
        worker_pids = []
        for epoch, start in ((0, 0), (1, 0), (2, 4), (3, 0)):  # (2, 4): an epoch resumed at micro-batch 4
            got = [batch.images for batch in loader.epoch(epoch, start)]
            worker_pids.append(tuple(w.pid for w in loader.loader._iterator._workers))
            want = expected(epoch, start)
            assert len(got) == len(want) == micro - start
            assert all(torch.equal(x, y) for x, y in zip(got, want)), epoch
        assert len(set(worker_pids)) == 1  # the same two processes for every epoch
        assert all(w.is_alive() for w in loader.loader._iterator._workers)
    assert loader.loader._iterator is None  # closed: the workers were ended


@pytest.mark.slow
def test_a_persistent_stream_loader_gives_what_a_fresh_loader_per_epoch_gives(tmp_path):
    pytest.importorskip("webdataset")
    import torchvision.transforms as T

    from tests.test_data_streams import digit_shards

    splits = load_data(str(digit_shards(tmp_path / "d")))
    tf = T.Compose([T.RandomResizedCrop(32, scale=(0.5, 1.0)), T.ToTensor()])
    ds = prepare(splits.train, tf, seed=3, random_transform=True)
    # process 1 of 2, batch 4: 80 // 8 = 10 micro-batches per process
    with ds.run_loader(4, rank=1, world_size=2, micro_batches=10, workers=2) as loader:
        for epoch, start in ((0, 0), (1, 3), (2, 0)):
            got = [x.images for x in loader.epoch(epoch, start)]
            with ds.run_loader(4, rank=1, world_size=2, micro_batches=10, workers=2) as fresh:  # new workers
                want = [x.images for x in fresh.epoch(epoch, start)]
            assert len(got) == len(want) == 10 - start
            assert all(torch.equal(x, y) for x, y in zip(got, want)), (epoch, start)
