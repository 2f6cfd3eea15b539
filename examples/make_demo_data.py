"""Write vitprune/assets/digits.npz: scikit-learn's 1,797 handwritten digits (8x8, values 0..16).

The digits are real scans (UCI ML hand-written digits, BSD licence, shipped inside scikit-learn). vitprune keeps
them as raw 8x8 uint8 arrays plus a fixed train/val/test split, and upscales them to 32x32 RGB when they are read
(`vitprune.data.demo`). Run once; the output is committed (a test checks that this script makes exactly it):

    python examples/make_demo_data.py [OUT.npz]

The split, stratified by class:

* held out: in each class, a seeded permutation (``default_rng(0)``, classes in order 0..9), its first
  ``round(0.2 * n)`` images; the rest is train (1,438 images; this rule is the original train/val split, so
  train is unchanged and every model trained on it stays valid);
* the held-out images of each class are split again with a second seeded permutation (``default_rng(1)``): its
  first ``k // 2`` of the class's ``k`` held-out images are test, the rest val (val 181, test 178).

Arrays: ``images`` (1797, 8, 8) uint8, ``labels`` int64, ``split`` uint8 (0 train, 1 val, 2 test) and, for
readers of the older two-way file, ``is_val`` = held out (val or test).
"""
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

TRAIN, VAL, TEST = 0, 1, 2


def make_split(labels: np.ndarray) -> np.ndarray:
    """The split code (0 train, 1 val, 2 test) of every image (see the module docstring)."""
    split = np.full(len(labels), TRAIN, dtype=np.uint8)
    rng = np.random.default_rng(0)
    held_out = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        held_out.append(idx[: round(0.2 * len(idx))])
    rng = np.random.default_rng(1)
    for idx in held_out:
        idx = rng.permutation(idx)
        split[idx] = VAL
        split[idx[: len(idx) // 2]] = TEST
    return split


def main(out: Path) -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # (1797, 8, 8), 0..16
    labels = digits.target.astype(np.int64)
    split = make_split(labels)
    np.savez_compressed(out, images=images, labels=labels, split=split, is_val=split != TRAIN)
    counts = [int((split == s).sum()) for s in (TRAIN, VAL, TEST)]
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB): {counts[0]} train / {counts[1]} val / {counts[2]} test")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else
         Path(__file__).resolve().parents[1] / "vitprune" / "assets" / "digits.npz")
