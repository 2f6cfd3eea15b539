"""Images named on the command line: files, ``demo:N`` (the N-th bundled demo val digit) or PIL images, as PIL RGB
images with a label each (``vitprune visualize``, the images ``vitprune export`` checks its graph on)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..files import open_regular
from .demo import DigitsDemo


def _demo_image(spec: str):
    ds = DigitsDemo("val")
    try:
        i = int(spec.split(":", 1)[1])
    except ValueError:
        raise DataError(f"{spec!r}: write demo:N with N a number (an image of the demo val split).") from None
    if not 0 <= i < len(ds):
        raise DataError(f"{spec!r}: the demo val split has images 0..{len(ds) - 1}.")
    img, label = ds[i]
    return img, f"demo:{i} (a {label})"


def load_images(images: Sequence[Any]):
    """PIL RGB images and labels from files, ``demo:N`` (the N-th demo val digit) or PIL images."""
    out, labels = [], []
    if not images:
        raise DataError("give at least one image (a file, or demo:N for a bundled digit).")
    for item in images:
        if isinstance(item, Image.Image):
            out.append(item.convert("RGB"))
            labels.append(f"image {len(out)}")
            continue
        spec = str(item)
        if spec.startswith("demo:") and not Path(spec).exists():
            img, label = _demo_image(spec)
            out.append(img)
            labels.append(label)
            continue
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"image {spec} does not exist" + (" (it is a folder)" if path.is_dir() else "") + ".")
        try:
            with open_regular(path) as f, Image.open(f) as im:
                out.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{spec} is not an image vitprune can read ({type(e).__name__}).") from None
        labels.append(path.name)
    return out, labels
