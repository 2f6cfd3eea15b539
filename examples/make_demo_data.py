"""Write vitprune/assets/digits.npz: scikit-learn's 1,797 handwritten digits (8x8, values 0..16).

The digits are real scans (UCI ML hand-written digits, BSD licence, shipped inside scikit-learn). vitprune keeps
them as raw 8x8 uint8 arrays plus a fixed train/val split, and upscales them to 32x32 RGB when they are read
(`vitprune.data.demo`). Run once; the output is committed:

    python examples/make_demo_data.py
"""
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # (1797, 8, 8), 0..16
    labels = digits.target.astype(np.int64)
    # Fixed, stratified 80/20 split: a seeded permutation inside each class.
    rng = np.random.default_rng(0)
    val = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        val[idx[: round(0.2 * len(idx))]] = True
    out = Path(__file__).resolve().parents[1] / "vitprune" / "assets" / "digits.npz"
    np.savez_compressed(out, images=images, labels=labels, is_val=val)
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB): {int((~val).sum())} train / {int(val.sum())} val")


if __name__ == "__main__":
    main()
