"""Data-loading throughput: decoded + augmented images/s per loader worker, vitprune's loader next to timm's.

    python benchmarks/data.py                 # 384 JPEGs at ImageNet-like sizes, 1 worker, 5 interleaved rounds
    python benchmarks/data.py --workers 2 --rounds 7 --out data.json
    python benchmarks/data.py --timm-fresh-workers   # timm's workers restarted each epoch too
    python benchmarks/data.py --smoke         # tiny run, as the tests do

The images are scikit-image's sample photos (astronaut, chelsea, coffee, rocket, ...) cut and resized at random to
ImageNet-like sizes (short side 333-500 px, 4:3 and 3:4 mostly) and saved as JPEG (quality 90) into a temporary
ImageFolder of 8 classes; the same files are also written as webdataset shards. Every loader applies the same
training transform, timm's ``create_transform(is_training=True)`` at 224 px with timm's default augmentation
(random-resized crop 0.08-1, flip 0.5, colour jitter 0.4, bicubic, ImageNet mean/std), and collates batches:

* ``vitprune``: what the trainer reads a folder with (``Prepared`` with per-sample seeded augmentation,
  ``EpochBatches`` sampler, vitprune's collate, one ``DataLoader`` for the run whose workers persist across
  epochs: ``train.loop.run_loader``);
* ``timm``: ``timm.data.create_loader`` over ``timm.data.ImageDataset`` of the same folder (no prefetcher: that
  one normalises on a CUDA device), persistent workers (``--timm-fresh-workers``: started afresh every epoch,
  which shows what the worker start-up costs);
* ``shards``: vitprune's stream reader over the same images as ``.tar`` shards (``StreamSet.run_loader``:
  webdataset reading, shuffle buffer, seeded augmentation, persistent workers); the one-off pass that counts the
  shards is timed too.

Each round runs one epoch of every loader in turn (order rotated between rounds); a loader's images/s counts the
images after its first batch (worker start-up left out) and is divided by the number of workers. Reported:
medians over rounds and the median of the per-round ratios to timm (both measured in the same round).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

#: photos shipped inside scikit-image (the others need a download, which skimage turns into a skip under pytest)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat",
          "horse")
SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (400, 300))  # width, height


def _photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            a = getattr(skimage.data, name)()
        except (AttributeError, OSError, ImportError):  # not in this scikit-image version: left out
            continue
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
        out.append(a[..., :3])
    return out


def make_images(root: Path, n: int, classes: int = 8, scale: float = 1.0, seed: int = 0) -> Path:
    """``n`` JPEGs in ``root/<class>/``: random crops of the sample photos resized to ImageNet-like sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = a.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = SIZES[int(rng.integers(len(SIZES)))]
        img = Image.fromarray(a[y:y + ch, x:x + cw]).resize((max(8, int(size[0] * scale)), max(8, int(size[1] * scale))),
                                                            Image.BICUBIC)
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{i:05d}.jpg", quality=90)
    return root


def make_shards(folder: Path, out: Path, per_shard: int = 64) -> Path:
    """The same files (bytes as they are) as webdataset shards ``out/train/`` (and a copy as ``out/val/``)."""
    import webdataset as wds

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = sorted((p, classes.index(p.parent.name)) for p in folder.glob("*/*.jpg"))
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
        with wds.ShardWriter(str(out / split / "shard-%05d.tar"), maxcount=per_shard, verbose=0) as w:
            for p, label in files:
                w.write({"__key__": p.stem, "jpg": p.read_bytes(), "cls": str(label)})
    return out


def _transform_args(model) -> dict:
    from timm.data import resolve_data_config

    from vitprune.data import DEFAULT_AUGMENT

    cfg = resolve_data_config(model=model)
    a = DEFAULT_AUGMENT
    return {"input_size": cfg["input_size"], "interpolation": cfg["interpolation"], "mean": cfg["mean"],
            "std": cfg["std"], "scale": tuple(a["scale"]), "ratio": tuple(a["ratio"]), "hflip": a["hflip"],
            "color_jitter": a["color_jitter"]}


def vitprune_epochs(folder: Path, model, batch: int, workers: int):
    from vitprune.data import load_data, prepare, train_transform
    from vitprune.train.ddp import DistInfo
    from vitprune.train.loop import run_loader

    src = load_data(str(folder), val_split=0.01).train[0]  # the folder's images, every one of them as timm reads
    ds = prepare((src, list(range(len(src)))), train_transform(model, {}), seed=0, random_transform=True)
    with run_loader(ds, batch, DistInfo(), 0, len(ds) // batch, workers) as loader:
        yield from _epochs(loader)


def _epochs(loader):
    epoch = 0
    while True:
        yield loader.epoch(epoch)
        epoch += 1


def timm_epochs(folder: Path, model, batch: int, workers: int, persistent: bool = True):
    from timm.data import ImageDataset, create_loader

    a = _transform_args(model)
    ds = ImageDataset(str(folder))
    loader = create_loader(ds, a["input_size"], batch, is_training=True, scale=a["scale"], ratio=a["ratio"],
                           hflip=a["hflip"], color_jitter=a["color_jitter"], interpolation=a["interpolation"],
                           mean=a["mean"], std=a["std"], num_workers=workers, use_prefetcher=False,
                           device=torch.device("cpu"), persistent_workers=persistent and workers > 0)
    while True:
        yield loader


def shard_epochs(shards: Path, model, batch: int, workers: int, index_seconds: list):
    from vitprune.data import load_data, prepare, train_transform

    t0 = time.perf_counter()
    splits = load_data(str(shards))
    index_seconds.append(time.perf_counter() - t0)
    ds = prepare(splits.train, train_transform(model, {}), seed=0, random_transform=True)
    with ds.run_loader(batch, workers=workers) as loader:
        yield from _epochs(loader)


def one_epoch(loader) -> tuple[int, float]:
    """Images after the first batch, and the seconds they took."""
    it = iter(loader)
    first = next(it)
    n, t0 = 0, time.perf_counter()
    for b in it:
        images = b[0] if isinstance(b, (tuple, list)) else b.images
        n += images.shape[0]
    del first
    return n, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--timm-fresh-workers", action="store_true",
                   help="start timm's workers afresh every epoch (default: persistent, as vitprune's)")
    p.add_argument("--smoke", action="store_true", help="48 small images, 2 rounds (checks that it works)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.batch_size, args.rounds = 48, 8, 2
    torch.set_num_threads(1)
    import timm

    model = timm.create_model("deit_small_patch16_224", pretrained=False)  # its data config: 224 px, bicubic
    index_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vitprune-data-bench-") as tmp:
        folder = make_images(Path(tmp) / "folder", args.images, scale=0.25 if args.smoke else 1.0)
        shards = make_shards(folder, Path(tmp) / "shards")
        w = max(1, args.workers)
        loaders = {"vitprune": vitprune_epochs(folder, model, args.batch_size, args.workers),
                   "timm": timm_epochs(folder, model, args.batch_size, args.workers, not args.timm_fresh_workers),
                   "shards": shard_epochs(shards, model, args.batch_size, args.workers, index_seconds)}
        names = list(loaders)
        rates: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                n, s = one_epoch(next(loaders[name]))
                rates[name].append(n / s / w)
            print(f"round {r + 1}: " + "  ".join(f"{k} {rates[k][-1]:.1f}" for k in names), flush=True)
        for epochs in loaders.values():  # ends the persistent workers before their folder goes
            epochs.close()
    ratios = {k: statistics.median(a / b for a, b in zip(rates[k], rates["timm"])) for k in names if k != "timm"}
    res = {
        "date": date.today().isoformat(), "command": "python benchmarks/data.py " + " ".join(argv or sys.argv[1:]),
        "images": args.images, "batch_size": args.batch_size, "workers": args.workers, "rounds": args.rounds,
        "timm_workers": "fresh each epoch" if args.timm_fresh_workers else "persistent",
        "unit": "decoded + augmented images/s per worker (after the first batch), median over rounds",
        "median": {k: statistics.median(v) for k, v in rates.items()}, "ratio_to_timm": ratios, "rounds_data": rates,
        "shard_index_seconds": statistics.median(index_seconds) if index_seconds else None,
        "versions": {"torch": torch.__version__, "timm": timm.__version__,
                     "webdataset": __import__("importlib.metadata").metadata.version("webdataset")},
    }
    print(f"\n{args.images} JPEGs, batch {args.batch_size}, {args.workers} worker(s), {args.rounds} rounds "
          "(images/s per worker, median):")
    for k in names:
        extra = "" if k == "timm" else f"   {ratios[k]:.2f}× timm"
        print(f"  {k:9s} {res['median'][k]:8.1f}{extra}")
    if index_seconds:
        print(f"  counting the shards once: {res['shard_index_seconds'] * 1000:.0f} ms for {args.images} samples")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
