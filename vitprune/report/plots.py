"""Plots: which tokens each stage keeps (``visualize``) and the accuracy-speed curve of a sweep (``pareto.png``).

Both need matplotlib, the optional extra ``vitprune[plot]``; without it they raise one clear line.

Token maps come from the method contract, never from method names: under ``vitprune.methods.tracking(model)`` a
forward pass records, after each step that changes the token set, ``(block, assignment)`` where ``assignment``
(``B x num_patches``) gives for every original patch the index of the token representing it, or -1 when it was
dropped or fused into a catch-all token. From that map alone each panel draws:

* patches with -1: greyed out (pruned, or fused into the one "rest" token as EViT does);
* patches alone in their token: the image as is;
* several patches sharing one token: a coloured group. When every such group is an aligned square block of
  patches (region pooling, as DGE's router chooses per region) the colour says the granularity (2×2, 4×4... patches
  per token); otherwise (ToMe's merges) each group gets its own colour.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import DataError, MethodOptionError, VitpruneError

#: layout of the token-map figure, in inches at ``dpi`` (default 100 dpi: 200-pixel panels)
PANEL_IN = 2.0
LEFT_IN = 0.5
TOP_IN = 0.75
BOTTOM_IN = 0.5

GREY = (0.55, 0.55, 0.55)
GREY_ALPHA = 0.88
GROUP_ALPHA = 0.55


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or one clear line saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise VitpruneError(
            "plots need matplotlib, which is not installed; install the extra: pip install 'vitprune[plot]'."
        ) from None
    return plt


# ------------------------------------------------------------------------------------------ token maps


@dataclass
class Stage:
    block: int
    assignment: np.ndarray  # B x P (token index per original patch, -1 = dropped/fused)


@dataclass
class TokenMaps:
    """Everything a token-map figure shows."""

    images: np.ndarray  # B x H x W x 3 in [0, 1]: what the model sees (after its eval transform)
    labels: list[str]
    grid: tuple[int, int]
    stages: list[Stage]
    method: str
    model: str
    predictions: list[Optional[str]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # tokens entering each block (batch, padded where adaptive)

    def kept(self, stage: Stage, i: int) -> int:
        a = stage.assignment[i]
        return int(np.unique(a[a >= 0]).size)

    def to_dict(self) -> dict[str, Any]:
        P = self.grid[0] * self.grid[1]
        return {"model": self.model, "method": self.method, "grid": list(self.grid), "images": self.labels,
                "predictions": self.predictions, "tokens_entering_blocks": self.counts,
                "stages": [{"block": s.block, "patch_tokens": [self.kept(s, i) for i in range(len(self.labels))],
                            "dropped_patches": [int((s.assignment[i] < 0).sum()) for i in range(len(self.labels))],
                            "of": P} for s in self.stages]}


def _demo_image(spec: str):
    from ..data.demo import DigitsDemo

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
    from PIL import Image, UnidentifiedImageError

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
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{spec} is not an image vitprune can read ({type(e).__name__}).") from None
        labels.append(path.name)
    return out, labels


def collect_token_maps(model, images: Sequence[Any], *, name: str = "model",
                       blocks: Optional[Sequence[int]] = None) -> TokenMaps:
    """Run ``model`` (patched) on ``images`` with tracking on and collect the recorded token maps."""
    import torch
    from timm.data import resolve_data_config

    from ..data import eval_transform
    from ..methods import get_method, tracking

    method = get_method(model)
    if method is None:
        raise MethodOptionError(f"{name} is a dense model: give --method (and its options) to see what a method "
                                "keeps, or a compressed model folder.")
    pil, labels = load_images(images)
    transform = eval_transform(model)
    batch = torch.stack([transform(im) for im in pil])
    cfg = resolve_data_config(model=model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    shown = (batch * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    model = model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode(), tracking(model):
        logits = model(batch.to(device))
    state = model.vitprune_state
    grid = tuple(int(g) for g in state.grid)
    stages = [Stage(int(b), a.detach().cpu().numpy().astype(np.int64)) for b, a in state.stages]
    if blocks is not None:
        wanted = set(int(b) for b in blocks)
        recorded = sorted({s.block for s in stages})
        missing = sorted(wanted - set(recorded))
        if missing:
            raise MethodOptionError(
                f"--blocks {','.join(map(str, missing))}: {method.name} records token maps after blocks "
                f"{','.join(map(str, recorded)) or 'none'} for this model.")
        stages = [s for s in stages if s.block in wanted]
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    probs = logits.float().softmax(-1).cpu()
    preds: list[Optional[str]] = []
    for p in probs:
        if names:
            k = int(p.argmax())
            preds.append(f"{names[k] if k < len(names) else k} ({100 * float(p[k]):.0f} %)")
        else:
            preds.append(None)
    from .card import short_method

    return TokenMaps(images=shown, labels=labels, grid=grid, stages=stages,
                     method=short_method(method.name, method.options_dict()), model=name,
                     predictions=preds, counts=list(state.counts))


def _groups(assign: np.ndarray) -> dict[int, np.ndarray]:
    """token index -> patch indices, for tokens standing for more than one patch."""
    out: dict[int, np.ndarray] = {}
    valid = assign[assign >= 0]
    if valid.size == 0:
        return out
    ids, counts = np.unique(valid, return_counts=True)
    for t in ids[counts > 1]:
        out[int(t)] = np.flatnonzero(assign == t)
    return out


def _square_side(patches: np.ndarray, gw: int) -> Optional[int]:
    """k when ``patches`` is an aligned k×k block of the grid (region pooling), else None."""
    n = patches.size
    k = int(round(math.sqrt(n)))
    if k * k != n:
        return None
    rows, cols = patches // gw, patches % gw
    r0, c0 = rows.min(), cols.min()
    if rows.max() - r0 + 1 != k or cols.max() - c0 + 1 != k or r0 % k or c0 % k:
        return None
    return k


def panel_style(assign: np.ndarray, grid: tuple[int, int]) -> tuple[str, dict[int, np.ndarray], dict[int, int]]:
    """("plain" | "regions" | "merged", groups, token -> square side for regions)."""
    groups = _groups(assign)
    if not groups:
        return "plain", groups, {}
    sides = {t: _square_side(p, grid[1]) for t, p in groups.items()}
    if all(s is not None for s in sides.values()):
        return "regions", groups, {t: int(s) for t, s in sides.items()}
    return "merged", groups, {}


def _region_colour(side: int, sides: list[int]):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    order = sorted(sides)
    pos = order.index(side) / max(1, len(order) - 1) if len(order) > 1 else 0.35
    return cmap(0.15 + 0.7 * pos)[:3]


def _overlay(assign: np.ndarray, grid: tuple[int, int], region_sides: list[int]) -> tuple[np.ndarray, str, set]:
    """RGBA overlay (gh x gw x 4), the panel's style, and the region sides it shows."""
    import matplotlib

    gh, gw = grid
    rgba = np.zeros((gh * gw, 4))
    rgba[assign < 0] = (*GREY, GREY_ALPHA)
    style, groups, sides = panel_style(assign, grid)
    if style == "merged":
        cmap = matplotlib.colormaps["tab20"]
        # colours follow the group's first patch, so a group keeps its colour from one stage to the next
        for t, patches in groups.items():
            rgba[patches] = (*cmap(int(patches.min() * 7919) % 20)[:3], GROUP_ALPHA)
    elif style == "regions":
        for t, patches in groups.items():
            rgba[patches] = (*_region_colour(sides[t], region_sides), GROUP_ALPHA)
    return rgba.reshape(gh, gw, 4), style, set(sides.values())


def figure_size(rows: int, cols: int, dpi: int = 100) -> tuple[int, int]:
    """Pixel size of a token-map figure with ``rows`` images and ``cols`` columns (input + stages)."""
    return (round((LEFT_IN + cols * PANEL_IN) * dpi), round((TOP_IN + rows * PANEL_IN + BOTTOM_IN) * dpi))


def draw_token_maps(maps: TokenMaps, out: str | os.PathLike, *, dpi: int = 100) -> tuple[int, int]:
    """Write the token-map figure (PNG): one row per image, the input then one column per stage."""
    plt = require_matplotlib()
    from matplotlib.patches import Patch, Rectangle

    rows, cols = len(maps.labels), 1 + len(maps.stages)
    width_in, height_in = LEFT_IN + cols * PANEL_IN, TOP_IN + rows * PANEL_IN + BOTTOM_IN
    fig = plt.figure(figsize=(width_in, height_in), dpi=dpi)
    gh, gw = maps.grid
    H, W = maps.images.shape[1:3]
    all_sides: set[int] = set()
    for s in maps.stages:
        for i in range(rows):
            style, _, sides = panel_style(s.assignment[i], maps.grid)
            if style == "regions":
                all_sides |= set(sides.values())
    region_sides = sorted(all_sides)
    styles_seen: set[str] = set()
    any_dropped = False
    P = gh * gw
    for r in range(rows):
        for c in range(cols):
            left = (LEFT_IN + c * PANEL_IN + 0.04) / width_in
            bottom = (BOTTOM_IN + (rows - 1 - r) * PANEL_IN + 0.04) / height_in
            ax = fig.add_axes((left, bottom, (PANEL_IN - 0.08) / width_in, (PANEL_IN - 0.08) / height_in))
            ax.imshow(maps.images[r], extent=(0, W, H, 0), interpolation="lanczos" if H > 100 else "nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                label = maps.labels[r]
                if maps.predictions and maps.predictions[r]:
                    label += f"\npred {maps.predictions[r]}"
                ax.set_ylabel(label, fontsize=8)
                if r == 0:
                    ax.set_title(f"input ({H}×{W}, {P} patches)", fontsize=9)
                continue
            stage = maps.stages[c - 1]
            a = stage.assignment[r]
            rgba, style, _ = _overlay(a, maps.grid, region_sides)
            styles_seen.add(style)
            any_dropped = any_dropped or bool((a < 0).any())
            ax.imshow(rgba, extent=(0, W, H, 0), interpolation="nearest")
            if style == "regions":  # outline each pooled region so equal granularities stay readable
                ph, pw = H / gh, W / gw
                for patches in _groups(a).values():
                    r0, c0 = (patches // gw).min(), (patches % gw).min()
                    k = int(round(math.sqrt(patches.size)))
                    ax.add_patch(Rectangle((c0 * pw, r0 * ph), k * pw, k * ph, fill=False, edgecolor="white",
                                           linewidth=0.7, alpha=0.9))
            if r == 0:
                ax.set_title(f"after block {stage.block}", fontsize=9)
            kept = maps.kept(stage, r)
            ax.text(0.03, 0.03, f"{kept}/{P} tokens", transform=ax.transAxes, fontsize=7, color="white",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0})
    fig.suptitle(f"{maps.model} · {maps.method}", fontsize=10, y=1 - 0.12 / height_in, va="top")
    handles = [Patch(facecolor="white", edgecolor="0.3", label="patch kept as its own token")]
    if any_dropped:
        handles.append(Patch(facecolor=GREY, edgecolor="0.3", label="pruned (or fused into one rest token)"))
    if "merged" in styles_seen:
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        handles.append(Patch(facecolor=cmap(2), edgecolor=cmap(6), label="merged group = one token (colours)"))
    for side in region_sides:
        handles.append(Patch(facecolor=_region_colour(side, region_sides), edgecolor="0.3",
                             label=f"{side}×{side} region = one token"))
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0), bbox_transform=fig.transFigure)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png", pil_kwargs={"optimize": True})
    size = fig.canvas.get_width_height()
    plt.close(fig)
    return size


@dataclass
class VisualizeResult:
    path: Path
    size: tuple[int, int]
    maps: TokenMaps


def visualize(
    model: Any,
    images: Sequence[Any],
    out: str | os.PathLike = "tokens.png",
    *,
    method: Optional[str] = None,
    blocks: Optional[Sequence[int]] = None,
    dpi: int = 100,
    pretrained: bool = True,
    **method_options: Any,
) -> VisualizeResult:
    """Draw which tokens each stage keeps for ``images`` (files, ``demo:N`` or PIL images) into ``out`` (PNG).

    ``model`` is a compressed model (folder, ``hf-hub:`` repo or module), or a dense one with ``method`` and its
    options to try the method on it.
    """
    require_matplotlib()  # fail before loading anything
    if not str(out).lower().endswith(".png"):
        raise MethodOptionError(f"--out {out}: visualize writes a PNG; give a file name ending in .png.")
    if dpi < 20 or dpi > 600:
        raise MethodOptionError(f"--dpi must be between 20 and 600, got {dpi}.")
    from ..api import resolve_models

    name, _, compressed = resolve_models(model, method, method_options, pretrained=pretrained)
    if compressed is None:
        raise MethodOptionError(f"{name} is a dense model: give --method (and its options) to see what a method "
                                "keeps, or a compressed model folder.")
    if not pretrained:
        name += " (random weights)"
    maps = collect_token_maps(compressed, images, name=name, blocks=blocks)
    size = draw_token_maps(maps, out, dpi=dpi)
    return VisualizeResult(Path(out), size, maps)


# ------------------------------------------------------------------------------------------ pareto


def pareto_plot(result: Any, out: str | os.PathLike, *, dpi: int = 120) -> tuple[int, int]:
    """``pareto.png`` of a sweep: top-1 vs throughput (or GMACs vs throughput without accuracy), dense marked."""
    plt = require_matplotlib()
    data = result if isinstance(result, dict) else result.to_dict()
    dense, points = data["dense"], data["points"]
    has_acc = dense.get("top1") is not None and all(p.get("top1") is not None for p in points)
    has_speed = dense.get("throughput") is not None and all(p.get("throughput") is not None for p in points)
    fig, ax = plt.subplots(figsize=(7.0, 5.0), dpi=dpi)
    # accuracy vs throughput; without timings accuracy vs GMACs; without accuracy GMACs vs throughput
    x_key = "throughput" if has_speed else "gmacs"
    y_key = "top1" if has_acc else "gmacs"
    if x_key == y_key:  # neither accuracy nor timings: parameters vs GMACs says little, but still one picture
        y_key = "params"
    labels = {"throughput": f"throughput (images/s, batch {data.get('batch_size')}, {data.get('dtype')})",
              "gmacs": "GMACs per image (papers' GFLOPs)", "top1": f"top-1 accuracy (%) on {data.get('data')}",
              "params": "parameters"}
    xs = [p[x_key] for p in points]
    ys = [p[y_key] for p in points]
    option = data["option"]
    ax.plot(xs, ys, "-o", color="tab:blue", label=f"{data['method']} ({data.get('mode', '')}), {option} swept",
            zorder=3)
    for p, x, y in zip(points, xs, ys):
        ax.annotate(f"{option}={p['value']}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.plot([dense[x_key]], [dense[y_key]], marker="*", markersize=16, color="tab:red", linestyle="none",
            label="dense (reference)", zorder=4)
    ax.annotate("dense", (dense[x_key], dense[y_key]), textcoords="offset points", xytext=(6, -12), fontsize=8,
                color="tab:red")
    if x_key == "throughput":
        ax.axvline(dense[x_key], color="tab:red", linewidth=0.8, linestyle=":")
    if y_key == "top1":
        ax.axhline(dense[y_key], color="tab:red", linewidth=0.8, linestyle=":")
    ax.set_xlabel(labels[x_key])
    ax.set_ylabel(labels[y_key])
    short = {"throughput": "throughput", "gmacs": "GMACs", "top1": "top-1", "params": "parameters"}
    what = f"{short[y_key]} vs {short[x_key]}"
    ax.set_title(f"{data['model']} · {data['method']} · {what}\n{data.get('device_name') or data.get('device')}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    size = fig.canvas.get_width_height()
    plt.close(fig)
    return size


__all__ = ["visualize", "collect_token_maps", "draw_token_maps", "pareto_plot", "figure_size", "require_matplotlib",
           "TokenMaps", "VisualizeResult", "load_images", "panel_style"]
