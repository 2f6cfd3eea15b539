"""Helpers shared by the trainer, data and compress tests (no tests here): a tiny real timm ViT saved as a model
folder, and the demo digits written out as real PNG files (ImageFolder layout) or as a saved HF dataset."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from tests.conftest import make_vit

DIGIT_CFG = {"input_size": (3, 32, 32), "fixed_input_size": True, "crop_pct": 1.0, "crop_mode": "center",
             "interpolation": "bilinear", "mean": (0.3058,) * 3, "std": (0.3236,) * 3}


def tiny_vit(depth: int = 4, seed: int = 0, label_names: Optional[Sequence[str]] = None) -> torch.nn.Module:
    """A genuine timm ViT (32 px, patch 4, width 48) reading images like the demo teacher."""
    model = make_vit(depth=depth, embed_dim=48, num_heads=3, seed=seed)
    cfg = {**model.pretrained_cfg, **DIGIT_CFG, "num_classes": 10}
    if label_names is not None:
        cfg["label_names"] = list(label_names)
    model.pretrained_cfg = cfg
    return model


def save_tiny_vit(folder: Path, **kw) -> Path:
    import vitprune

    vitprune.save(tiny_vit(**kw), folder, base_model="tests: tiny random ViT")
    return folder


def digit_images(split: str = "train", per_class: int = 10, classes: Sequence[int] = range(10)):
    """``(PIL image, label)`` pairs: the first ``per_class`` demo digits of each class in ``classes``."""
    from vitprune.data.demo import DigitsDemo

    ds = DigitsDemo(split)
    out, counts = [], {c: 0 for c in classes}
    for i, t in enumerate(ds.targets):
        if t in counts and counts[t] < per_class:
            counts[t] += 1
            out.append((ds[i][0], t))
    return out


def write_folder(root: Path, items, names: Optional[dict[int, str]] = None) -> Path:
    """Write ``(image, label)`` pairs as ``root/<class>/<n>.png``."""
    for n, (img, label) in enumerate(items):
        d = root / (names[label] if names else str(label))
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{n:04d}.png")
    return root


def digits_folder(root: Path, per_class: int = 10, val_per_class: int = 4, classes: Sequence[int] = range(10),
                  names: Optional[dict[int, str]] = None) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` from the real digits."""
    write_folder(root / "train", digit_images("train", per_class, classes), names)
    write_folder(root / "val", digit_images("val", val_per_class, classes), names)
    return root


def corrupt_png(path: Path) -> Path:
    """A file with a .png name that is not a readable image (a truncated PNG)."""
    buf = io.BytesIO()
    from vitprune.data.demo import DigitsDemo

    DigitsDemo("train")[0][0].save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[:40])
    return path


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def hf_digits(folder: Path, per_class: int = 8, val_per_class: int = 3, image_col: str = "image",
              label_col: str = "label", corrupt_rows: Sequence[int] = (), single: bool = False) -> Path:
    """A ``save_to_disk`` dataset of the digits (Image + ClassLabel features), optionally with unreadable rows."""
    import datasets

    feats = datasets.Features({image_col: datasets.Image(), label_col: datasets.ClassLabel(
        names=[f"digit{i}" for i in range(10)])})

    def build(items, bad=()):
        rows = {image_col: [], label_col: []}
        for n, (img, t) in enumerate(items):
            data = png_bytes(img)
            rows[image_col].append({"bytes": data[:30] if n in bad else data, "path": None})
            rows[label_col].append(t)
        return datasets.Dataset.from_dict(rows, features=feats)

    train = build(digit_images("train", per_class), corrupt_rows)
    if single:
        train.save_to_disk(str(folder))
    else:
        datasets.DatasetDict({"train": train, "validation": build(digit_images("val", val_per_class))}).save_to_disk(
            str(folder))
    return folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


__all__ = ["np"]
