"""The bundled demo: real digits data with a fixed split, and a demo teacher that is accurate on it."""
from __future__ import annotations

import numpy as np
import pytest

import vitprune
from vitprune.data.demo import DigitsDemo
from vitprune.hub import demo_dir


def test_demo_data_is_the_real_digits_with_a_fixed_split():
    train, val = DigitsDemo("train"), DigitsDemo("val")
    assert (len(train), len(val)) == (1438, 359)
    img, label = val[0]
    assert img.size == (32, 32) and img.mode == "RGB" and 0 <= label <= 9
    assert sorted(set(val.targets)) == list(range(10))  # stratified: every class in val
    # the same images every time (committed data, no randomness at read time)
    assert np.array_equal(np.asarray(DigitsDemo("val")[5][0]), np.asarray(val[5][0]))


def test_demo_teacher_is_small_and_grid_divisible_by_four():
    weights = demo_dir() / "model.safetensors"
    assert weights.stat().st_size < 3 * 1024 * 1024
    model = vitprune.load_model("demo")
    assert tuple(model.patch_embed.grid_size) == (8, 8) and model.patch_embed.grid_size[0] % 4 == 0
    assert model.num_classes == 10


@pytest.mark.slow
def test_demo_teacher_accuracy_on_val_split():
    result = vitprune.evaluate("demo", "demo", split="val", device="cpu")
    assert result.images == 359
    assert result.top1 >= 97.0
    # the number recorded in its config is what it really scores
    recorded = vitprune.hub.read_vitprune_section(demo_dir())["metrics"]["val_top1"]
    assert result.top1 == pytest.approx(recorded, abs=0.01)
