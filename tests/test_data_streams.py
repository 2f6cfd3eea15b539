"""Streamed data: webdataset shards (written with webdataset's own ShardWriter from the real digits) and Hub datasets
read with ``hf:org/name`` (offline, from a Hugging Face datasets cache laid out as ``load_dataset`` leaves it).

What is proved: samples are split across 2 Gloo processes x 2 loader workers with every sample once per epoch and
exact counts on shards of uneven sizes; a corrupt image and a sample without a label are skipped and counted; a
run stopped mid-epoch resumes sample-exactly (bit-identical weights); ``eval`` reads val shards; the missing extra
is one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vitprune.cli.main import app
from vitprune.data import load_data, prepare
from tests.test_train_utils import digit_images, max_diff, png_bytes, same_weights, save_tiny_vit, weights

pytest.importorskip("webdataset")
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def write_shards(folder: Path, items, maxcount: int, corrupt: dict[int, bytes] | None = None,
                 no_label: tuple[int, ...] = ()) -> Path:
    """``items`` as webdataset shards ``folder/shard-NNNN.tar`` of ``maxcount`` samples (``KEY.png`` +
    ``KEY.cls``); ``corrupt``: sample number -> bytes stored instead of its PNG; ``no_label``: samples without
    ``cls``."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "shard-%04d.tar"), maxcount=maxcount, verbose=0) as w:
        for n, (img, label) in enumerate(items):
            sample = {"__key__": f"s{n:05d}", "png": (corrupt or {}).get(n, png_bytes(img))}
            if n not in no_label:
                sample["cls"] = str(label)
            w.write(sample)
    return folder


def digit_shards(root: Path, *, per_class: int = 8, val_per_class: int = 2, maxcount: int = 23, **train_kw) -> Path:
    """80 train digits in shards of 23, 23, 23, 11 (uneven on purpose) and 20 val digits in shards of 7."""
    write_shards(root / "train", digit_images("train", per_class), maxcount, **train_kw)
    write_shards(root / "val", digit_images("val", val_per_class), 7)
    return root


def truncated_png() -> bytes:
    img = digit_images("train", 1)[0][0]
    return png_bytes(img)[:40]


def to_tensor(img):
    import torchvision.transforms.functional as TF

    return TF.to_tensor(img)


# ------------------------------------------------------------------------------------------ reading


def test_shards_with_class_names_a_corrupt_image_and_a_sample_without_label(tmp_path):
    data = digit_shards(tmp_path / "d", corrupt={5: truncated_png()}, no_label=(9,))
    (data / "classes.txt").write_text("\n".join(f"digit-{i}" for i in range(10)) + "\n")
    splits = load_data(str(data))
    assert splits.kind == "shards" and splits.streamed
    assert splits.classes == [f"digit-{i}" for i in range(10)]
    train = splits.train[0]
    assert train.shard_sizes == [23, 23, 23, 11] and len(train) == 80  # ShardWriter maxcount=23 over 80 samples
    items = list(prepare(splits.train, to_tensor))
    bad = [x for x in items if not isinstance(x, tuple)]
    assert len(items) == 80 and [b.index for b in bad] == [5, 9]
    assert bad[0].where.endswith("shard-0000.tar:s00005") and "no class label" in bad[1].reason
    # the readable samples are the digits as written, with their labels, in stored order
    written = digit_images("train", 8)
    good = [(i, x) for i, x in enumerate(items) if isinstance(x, tuple)]
    assert all(torch.equal(x[0], to_tensor(written[i][0].convert("RGB"))) and x[1] == written[i][1] for i, x in good)


@pytest.mark.slow
def test_labels_outside_classes_txt_and_other_mistakes_are_one_line(tmp_path):
    data = digit_shards(tmp_path / "d")
    (data / "classes.txt").write_text("a\nb\nc\n")
    res = runner.invoke(app, ["eval", "demo", "--data", str(data)])
    assert res.exit_code == 1 and "outside the 3 classes of classes.txt" in res.output
    (data / "classes.txt").unlink()
    res = runner.invoke(app, ["eval", "demo", "--data", str(data), "--val-split", "0.2"])
    assert res.exit_code == 1 and "--val-split does not apply" in res.output
    res = runner.invoke(app, ["eval", "demo", "--data", str(data), "--streaming"])
    assert res.exit_code == 1 and "--streaming reads a Hub dataset" in res.output
    (data / "train" / "shard-0001.tar").write_bytes(b"not a tar" * 100)
    res = runner.invoke(app, ["eval", "demo", "--data", str(data)])
    assert res.exit_code == 1 and "shard-0001.tar is not a readable tar shard" in res.output
    assert "Traceback" not in res.output


@pytest.mark.slow
def test_eval_reads_the_val_shards_and_counts_a_corrupt_image(tmp_path):
    data = tmp_path / "d"
    write_shards(data / "train", digit_images("train", 2), 10)
    write_shards(data / "val", digit_images("val", 2), 7, corrupt={3: truncated_png()})
    model = save_tiny_vit(tmp_path / "tiny", depth=2)
    res = runner.invoke(app, ["eval", str(model), "--data", str(data), "--json", "--workers", "2",
                              "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output[res.output.index("{"):])
    assert info["images"] == 19 and info["skipped"] == 1  # 20 val digits, one corrupt
    # the library call (one process, no workers) reads the same images
    from vitprune import evaluate
    from vitprune.hub import load_model

    net = load_model(str(model))
    streamed = evaluate(net, str(data), batch_size=4)
    assert (streamed.images, streamed.skipped) == (19, 1)
    assert streamed.top1 == pytest.approx(info["top1"]) and streamed.loss == pytest.approx(info["loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------ splitting


@pytest.mark.slow
def test_a_resumed_epoch_gives_the_remaining_batches_of_the_uninterrupted_one(tmp_path):
    """Sample-exact resume at the loader level: for 0, 2 and 3 workers, starting at micro-batch s gives batches
    s.. of the same epoch, bit for bit (random crops seeded per sample)."""
    import torchvision.transforms as T

    splits = load_data(str(digit_shards(tmp_path / "d")))
    tf = T.Compose([T.RandomResizedCrop(32, scale=(0.5, 1.0)), T.ToTensor()])
    ds = prepare(splits.train, tf, seed=3, random_transform=True)

    def batches(workers: int, start: int) -> list[torch.Tensor]:
        # process 1 of 2, batch 4: 80 // 8 = 10 micro-batches per process
        with ds.run_loader(4, rank=1, world_size=2, micro_batches=10, workers=workers) as loader:
            return [b.images for b in loader.epoch(2, start)]

    for workers in (0, 2, 3):
        full = batches(workers, 0)
        assert len(full) == 10
        for start in (1, 4, 7):
            rest = batches(workers, start)
            assert len(rest) == 10 - start and all(torch.equal(a, b) for a, b in zip(rest, full[start:]))


def _gloo_worker(rank: int, world: int, init: str, data: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    splits = load_data(data)
    ds = prepare(splits.train, to_tensor, seed=0)
    ref = [x[0] for x in prepare(splits.train, to_tensor)]  # every sample in stored order
    seen = {}
    # as the trainer asks (one loader for the run, its workers kept): batch 3, 2 processes -> 80 // 6 = 13
    # micro-batches each, 78 of 80 samples used
    with ds.run_loader(3, rank=rank, world_size=world, micro_batches=13, workers=2) as loader:
        for epoch in range(3):
            ids = []
            for batch in loader.epoch(epoch):
                assert batch.images.shape[0] == 3
                ids += [next(i for i, r in enumerate(ref) if torch.equal(r, x)) for x in batch.images]
            seen[epoch] = ids
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_with_two_workers_see_every_sample_once_per_epoch(tmp_path):
    """Shards of 23, 23, 23, 11 samples over 2 processes x 2 workers: in each epoch the two processes get 39
    samples each, no sample twice; the 2 left out (fewer than one global batch of 6) change with the epoch."""
    import torch.multiprocessing as mp

    data = digit_shards(tmp_path / "d")
    refs = [x[0] for x in prepare(load_data(str(data)).train, to_tensor)]
    assert len({r.numpy().tobytes() for r in refs}) == 80  # the 80 digits are distinct images: ids are exact
    out = tmp_path / "seen.json"
    mp.spawn(_gloo_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(data), str(out)), nprocs=2)
    per_rank = json.loads(out.read_text())
    left_out = []
    for epoch in ("0", "1", "2"):
        a, b = per_rank[0][epoch], per_rank[1][epoch]
        assert len(a) == len(b) == 39  # 13 micro-batches x 3 images
        assert len(set(a + b)) == 78  # no duplicates within or across processes
        left_out.append(sorted(set(range(80)) - set(a + b)))
    assert len({tuple(x) for x in left_out}) > 1, left_out  # not always the same samples wait


# ------------------------------------------------------------------------------------------ training


def compress_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # 80 train samples (one corrupt) / batch 8 = 10 steps per epoch, 2 epochs = 20 steps; random crops on; the
    # backbone trains from the first step (DynamicViT's recipe would keep it frozen for longer than 2 epochs)
    return ["compress", str(model), "-m", "dynamicvit", "--keep-rate", "0.7", "--data", str(data), "-o", str(out),
            "--epochs", "2", "--batch-size", "8", "--scale", "0.6,1", "--no-speed", "--quiet", "--eval-every", "0",
            "--workers", "2", "--freeze-backbone-epochs", "0", *extra]


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shardrun")
    model = save_tiny_vit(root / "tiny", depth=2)
    data = digit_shards(root / "d", corrupt={30: truncated_png()})
    res = runner.invoke(app, compress_args(model, data, root / "ref"))
    assert res.exit_code == 0, res.output
    return root, model, data


@pytest.mark.slow
def test_compress_on_shards_end_to_end(shard_run):
    root, model, data = shard_run
    report = json.loads((root / "ref" / "report.json").read_text())
    assert report["data"]["kind"] == "shards" and report["data"]["streamed"] is True
    assert report["data"]["train_images"] == 80 and report["data"]["val_images"] == 20
    assert report["train"]["steps"] == 20 and report["train"]["skipped_images"] == 1
    assert report["train"]["skipped_files"][0].endswith("shard-0001.tar:s00030")
    assert report["compressed"]["images"] == 20
    trained, dense = weights(root / "ref"), weights(model)  # the compressed model adds the method's modules
    # the backbone trained: any change (at its lr scale and warm-up 20 steps move it by ~1e-6; untrained: exactly 0)
    assert max_diff({k: trained[k] for k in dense}, dense) > 0


@pytest.mark.slow
def test_resume_on_shards_mid_epoch_is_sample_exact(shard_run):
    """Stopped at step 13 (mid epoch 2), resumed: the weights of the uninterrupted run, bit for bit; resuming with
    another --workers is refused (a stream's batches depend on it)."""
    root, model, data = shard_run
    out = root / "stopped"
    res = runner.invoke(app, compress_args(model, data, out, "--max-steps", "13"))
    assert res.exit_code == 0 and "Stopped after 13/20 steps" in res.output, res.output
    args = compress_args(model, data, out, "--resume")
    args[args.index("--workers") + 1] = "1"
    other = runner.invoke(app, args)
    assert other.exit_code == 1 and "workers" in other.output and "other settings" in other.output
    res = runner.invoke(app, compress_args(model, data, out, "--resume"))
    assert res.exit_code == 0, res.output
    assert same_weights(weights(out), weights(root / "ref")), max_diff(weights(out), weights(root / "ref"))


# ------------------------------------------------------------------------------------------ Hub datasets


def hub_cache(root: Path, repo_id: str = "org/name") -> Path:
    """A datasets cache holding Hub dataset ``repo_id`` as an earlier online ``load_dataset(repo_id)`` leaves it:
    ``CACHE/org___name/default/0.0.0/<hash>/`` with datasets' Arrow shards and ``dataset_info.json``.

    Nothing can be downloaded here, so the folder is made by datasets' own builder: the digits are written with
    ``Dataset.to_parquet`` (an Image and a ClassLabel column, row groups of 12) in a folder named like the repo,
    ``load_dataset_builder`` prepares it (a shard per row group: 80 rows in 7 train shards of 12, 12, ..., 8; 20
    validation rows; 30 test rows, the demo's first 3 test digits per class), and
    the prepared folder is put where the Hub's loader would have put it (only the namespace part of the path
    differs: datasets adds ``org___`` when it knows the repo id)."""
    import datasets

    org, name = repo_id.split("/")
    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=[f"digit{i}" for i in range(10)])})
    src = root / "work" / name / "data"
    src.mkdir(parents=True)
    for split, items in (("train", digit_images("train", 8)), ("validation", digit_images("val", 2)),
                         ("test", digit_images("test", 3))):
        ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(im), "path": None} for im, _ in items],
                                         "label": [t for _, t in items]}, features=feats)
        ds.to_parquet(str(src / f"{split}-00000-of-00001.parquet"), batch_size=12)
    builder = datasets.load_dataset_builder(str(src.parent), cache_dir=str(root / "work" / "cache"))
    builder.download_and_prepare(max_shard_size=1)
    cache = root / "datasets"
    cache.mkdir()
    shutil.move(str(root / "work" / "cache" / name), str(cache / f"{org}___{name}"))
    return cache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    cache = hub_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    # fixed at import from the user's cache: the tests write there, so it must be the temporary one too
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", Path(cache) / "downloads")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return cache


@pytest.mark.slow
def test_hub_dataset_offline_from_the_cache_as_a_table_and_as_a_stream(offline_hub, tmp_path):
    table = load_data("hf:org/name")
    stream = load_data("hf:org/name", streaming=True)
    assert table.kind == stream.kind == "hub" and not table.streamed and stream.streamed
    assert table.classes == stream.classes == [f"digit{i}" for i in range(10)]
    src = stream.train[0]
    assert src.shard_sizes == [12] * 6 + [8] and len(stream.val[0]) == 20  # see hub_cache
    a = [x for x in prepare(table.train, to_tensor)]
    b = [x for x in prepare(stream.train, to_tensor)]
    assert len(a) == len(b) == 80 and all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    # every sample once across 2 processes x 2 workers, read from the dataset's own shards
    seen = []
    for rank in (0, 1):
        with prepare(stream.train, to_tensor).run_loader(4, rank=rank, world_size=2, workers=2) as loader:
            for batch in loader.epoch(0):
                seen += [next(i for i, x in enumerate(a) if torch.equal(x[0], y)) for y in batch.images]
    assert sorted(seen) == list(range(80))
    # a model evaluated on both agrees
    model = save_tiny_vit(tmp_path / "tiny", depth=2)
    r1 = runner.invoke(app, ["eval", str(model), "--data", "hf:org/name", "--json"])
    r2 = runner.invoke(app, ["eval", str(model), "--data", "hf:org/name", "--streaming", "--json", "--workers", "2"])
    assert r1.exit_code == r2.exit_code == 0, r1.output + r2.output
    j1, j2 = (json.loads(r.output[r.output.index("{"):]) for r in (r1, r2))
    assert j1["images"] == j2["images"] == 20 and j1["top1"] == pytest.approx(j2["top1"])
    # the 'test' split is the test split (never val), as a table and as a stream
    labels = [t for _, t in digit_images("test", 3)]
    assert list(table.test_split()[0].targets) == list(stream.test_split()[0].targets) == labels
    r3 = runner.invoke(app, ["eval", str(model), "--data", "hf:org/name", "--split", "test", "--json"])
    r4 = runner.invoke(app, ["eval", str(model), "--data", "hf:org/name", "--streaming", "--split", "test", "--json"])
    j3, j4 = (json.loads(r.output[r.output.index("{"):]) for r in (r3, r4))
    assert j3["images"] == j4["images"] == 30 and j3["top1"] == pytest.approx(j4["top1"])


@pytest.mark.slow
def test_hub_dataset_mistakes_are_one_line(offline_hub):
    res = runner.invoke(app, ["eval", "demo", "--data", "hf:org/missing"])
    assert res.exit_code == 1 and "hf:org/missing cannot be loaded (offline" in res.output
    res = runner.invoke(app, ["eval", "demo", "--data", "hf:org/name", "--streaming", "--val-split", "0.1"])
    assert res.exit_code == 1 and "with --streaming the dataset needs a validation split" in res.output
    res = runner.invoke(app, ["eval", "demo", "--data", "hf:../x"])
    assert res.exit_code == 1 and "give a Hub dataset as hf:org/name" in res.output


def test_hub_image_paths_are_read_only_inside_the_datasets_cache_folders(offline_hub, tmp_path):
    from vitprune.data.base import RefusedFile
    from vitprune.data.hub import cache_resolver

    import datasets

    resolve = cache_resolver("org/name")
    inside = Path(datasets.config.DOWNLOADED_DATASETS_PATH) / "extracted" / "a.png"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(png_bytes(digit_images("train", 1)[0][0]))
    assert resolve(str(inside)) == inside.resolve()
    outside = tmp_path / "secret.png"
    outside.write_bytes(inside.read_bytes())
    for name in (str(outside), "../../secret.png", str(inside.parent / ".." / ".." / ".." / "secret.png")):
        with pytest.raises(RefusedFile):
            resolve(name)
    link = inside.parent / "link.png"
    link.symlink_to(outside)
    with pytest.raises(RefusedFile):
        resolve(str(link))


# ------------------------------------------------------------------------------------------ the extra


@pytest.mark.slow
@pytest.mark.parametrize("data, what", [("shards", "reading webdataset shards"),
                                        ("hf:org/name --streaming", "--streaming")])
def test_without_webdataset_the_error_names_the_extra(tmp_path, data, what):
    """A real process in which ``import webdataset`` fails, as it does without the extra."""
    folder = digit_shards(tmp_path / "d")
    args = [str(folder)] if data == "shards" else data.split()
    code = ("import sys; sys.modules['webdataset'] = None; sys.argv = ['vitprune'] + sys.argv[1:]; "
            "from vitprune.cli.main import main; main()")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, "eval", "demo", "--data", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    assert lines == [f'Error: {what} needs the webdataset package; install the extra: pip install '
                     '"vitprune[streams]".'], lines
