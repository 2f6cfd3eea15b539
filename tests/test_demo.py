"""The bundled demo: real digits data with a fixed split, and a demo teacher that is accurate on it."""
from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import vitprune
from vitprune.data.demo import DigitsDemo
from vitprune.hub import demo_dir


def test_demo_data_is_the_real_digits_with_a_fixed_split():
    train, val, test = DigitsDemo("train"), DigitsDemo("val"), DigitsDemo("test")
    # 1,797 digits: train 1,438 as always; the 359 held out are halved per class (see examples/make_demo_data.py)
    assert (len(train), len(val), len(test)) == (1438, 181, 178)
    img, label = test[0]
    assert img.size == (32, 32) and img.mode == "RGB" and 0 <= label <= 9
    assert sorted(set(val.targets)) == sorted(set(test.targets)) == list(range(10))  # every class in val and test
    # the same images every time (committed data, no randomness at read time)
    assert np.array_equal(np.asarray(DigitsDemo("val")[5][0]), np.asarray(val[5][0]))


def _old_held_out(labels: np.ndarray) -> np.ndarray:
    """The original two-way rule the asset was first made with (train = the rest): per class, in order 0..9, a
    permutation from one ``default_rng(0)``, its first ``round(0.2 * n)`` images held out."""
    rng = np.random.default_rng(0)
    held = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        held[idx[: round(0.2 * len(idx))]] = True
    return held


def test_demo_split_keeps_train_and_halves_the_old_val_stratified():
    from vitprune.data.demo import DEMO_SPLITS, _load_arrays

    images, labels, codes = _load_arrays()
    parts = {name: codes == code for name, code in DEMO_SPLITS.items()}
    assert sum(p.astype(int) for p in parts.values()).tolist() == [1] * len(labels) == [1] * 1797  # disjoint, cover
    held = _old_held_out(labels)
    assert np.array_equal(parts["train"], ~held)  # train: the same images as ever...
    # ...in the same order (DigitsDemo keeps the asset's order)
    assert np.array_equal(DigitsDemo("train").images, images[~held])
    assert np.array_equal(parts["val"] | parts["test"], held)  # val and test are the old val split
    n_test = int(parts["test"].sum())
    for c in range(10):
        share = (labels == c).sum() * n_test / len(labels)  # the class's proportional share of the test split
        assert abs(int((parts["test"] & (labels == c)).sum()) - share) <= 1, c
    # readers of the older two-way file see its meaning: is_val = held out (val or test)
    with resources.files("vitprune.assets").joinpath("digits.npz").open("rb") as f:
        assert np.array_equal(np.load(f)["is_val"], held)


@pytest.mark.slow
def test_make_demo_data_script_makes_the_bundled_asset(tmp_path):
    pytest.importorskip("sklearn")
    script = Path(__file__).resolve().parents[1] / "examples" / "make_demo_data.py"
    out = tmp_path / "digits.npz"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True)
    with resources.files("vitprune.assets").joinpath("digits.npz").open("rb") as f:
        bundled = dict(np.load(f))
    made = dict(np.load(out))
    assert made.keys() == bundled.keys() and all(np.array_equal(made[k], bundled[k]) for k in made)
    assert made["split"].dtype == bundled["split"].dtype


def test_demo_teacher_is_small_and_grid_divisible_by_four():
    weights = demo_dir() / "model.safetensors"
    assert weights.stat().st_size < 3 * 1024 * 1024
    model = vitprune.load_model("demo")
    assert tuple(model.patch_embed.grid_size) == (8, 8) and model.patch_embed.grid_size[0] % 4 == 0
    assert model.num_classes == 10


@pytest.mark.slow
def test_demo_teacher_accuracy_on_val_split():
    result = vitprune.evaluate("demo", "demo", split="val", device="cpu")
    assert result.images == 181
    assert result.top1 >= 97.0
    # the number recorded in its config is what it really scores
    recorded = vitprune.hub.read_vitprune_section(demo_dir())["metrics"]["val_top1"]
    assert result.top1 == pytest.approx(recorded, abs=0.01)
