"""The bundled demo data: scikit-learn's handwritten digits, upscaled to 32x32 RGB.

1,797 real 8x8 scans (values 0..16) are stored raw in ``vitprune/assets/digits.npz`` with a fixed, stratified
train/val/test split (1,438 / 181 / 178; made by ``examples/make_demo_data.py``: val and test are the two halves
of what used to be the 359-image val split, train is unchanged). Each image is turned into a 32x32 RGB PIL
image by one fixed bilinear upscale, so that the model's own timm preprocessing (from its ``pretrained_cfg``)
applies to it like to any image folder.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Callable, Optional

import numpy as np
from PIL import Image

DEMO_CLASSES = [str(i) for i in range(10)]
DEMO_IMAGE_SIZE = 32
#: split name -> the code stored in the asset's ``split`` array
DEMO_SPLITS = {"train": 0, "val": 1, "test": 2}


@lru_cache(maxsize=1)
def _load_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with resources.files("vitprune.assets").joinpath("digits.npz").open("rb") as f:
        data = np.load(f)
        return data["images"], data["labels"], data["split"]


def digit_to_image(digit: np.ndarray) -> Image.Image:
    """An 8x8 array with values 0..16 as a 32x32 RGB image (white strokes on black)."""
    gray = Image.fromarray((digit.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
    return gray.resize((DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), Image.BILINEAR).convert("RGB")


class DigitsDemo:
    """A map-style dataset of ``(image, label)`` pairs; ``split`` is ``"train"``, ``"val"`` or ``"test"``."""

    classes = DEMO_CLASSES

    def __init__(self, split: str = "train", transform: Optional[Callable] = None):
        if split not in DEMO_SPLITS:
            raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
        images, labels, codes = _load_arrays()
        keep = codes == DEMO_SPLITS[split]
        self.images = images[keep]
        self.targets = [int(t) for t in labels[keep]]
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = digit_to_image(self.images[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]
