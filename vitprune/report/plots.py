"""Plots: which tokens each stage keeps (``visualize``) and the accuracy-speed curve of a sweep (``pareto.png``).

Both need matplotlib, the optional extra ``vitprune[plot]``; without it they raise one clear line. This module
only draws: the token maps are collected by ``vitprune.tokenmaps`` (which runs the model), the sweep's numbers by
``vitprune.sweep``.

A token map gives, per stage, every original patch's token or -1 (see ``vitprune.tokenmaps``). From that map alone
each panel draws:

* patches with -1: covered in hatched red, unlike any image's ink or the groups' colours (the legend says what became of them: dropped, or fused into one extra token);
* patches alone in their token: the image as is;
* several patches sharing one token: a coloured group. When every such group is an aligned square block of
  patches (region pooling, as DGE's router chooses per region) the colour says the granularity (2×2, 4×4... patches
  per token); otherwise (ToMe's merges) each group gets its own colour.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from PIL import Image

from ..errors import VitpruneError
from ..files import open_regular
from . import sweep_dense

if TYPE_CHECKING:
    from ..tokenmaps import TokenMaps

#: layout of the token-map figure, in inches at ``dpi`` (default 100 dpi: 200-pixel panels)
PANEL_IN = 2.0
LEFT_IN = 0.5
TOP_IN = 0.75
BOTTOM_IN = 0.5

#: pruned patches: a red tint under white hatching, which no grey ink (digits, photos) and no group colour
#: (viridis regions, tab20 merged groups' pale tones) is mistaken for
PRUNED = (0.78, 0.16, 0.18)
PRUNED_ALPHA = 0.8
PRUNED_HATCH = "////"
GROUP_ALPHA = 0.55


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or one clear line saying how to install it."""
    try:
        import matplotlib  # optional extra

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt  # optional extra
    except ImportError:
        raise VitpruneError(
            "plots need matplotlib, which is not installed; install the extra: pip install 'vitprune[plot]'."
        ) from None
    return plt


# ------------------------------------------------------------------------------------------ token maps


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
    import matplotlib  # optional extra

    cmap = matplotlib.colormaps["viridis"]
    order = sorted(sides)
    pos = order.index(side) / max(1, len(order) - 1) if len(order) > 1 else 0.35
    return cmap(0.15 + 0.7 * pos)[:3]


def _overlay(assign: np.ndarray, grid: tuple[int, int], region_sides: list[int]) -> tuple[np.ndarray, str, set]:
    """RGBA overlay (gh x gw x 4), the panel's style, and the region sides it shows."""
    import matplotlib  # optional extra

    gh, gw = grid
    rgba = np.zeros((gh * gw, 4))
    rgba[assign < 0] = (*PRUNED, PRUNED_ALPHA)
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


def _hatch_pruned(ax, assign: np.ndarray, grid: tuple[int, int], size: tuple[int, int], Rectangle) -> None:
    """White hatching over the pruned patches, one rectangle per run of them in a patch row."""
    gh, gw = grid
    ph, pw = size[0] / gh, size[1] / gw
    pruned = (assign < 0).reshape(gh, gw)
    for r in range(gh):
        c = 0
        while c < gw:
            if not pruned[r, c]:
                c += 1
                continue
            start = c
            while c < gw and pruned[r, c]:
                c += 1
            ax.add_patch(Rectangle((start * pw, r * ph), (c - start) * pw, ph, fill=False, hatch=PRUNED_HATCH,
                                   edgecolor="white", linewidth=0, alpha=0.9))


def figure_size(rows: int, cols: int, dpi: int = 100) -> tuple[int, int]:
    """Pixel size of a token-map figure with ``rows`` images and ``cols`` columns (input + stages)."""
    return (round((LEFT_IN + cols * PANEL_IN) * dpi), round((TOP_IN + rows * PANEL_IN + BOTTOM_IN) * dpi))


def draw_token_maps(maps: "TokenMaps", out: str | os.PathLike, *, dpi: int = 100) -> tuple[int, int]:
    """Write the token-map figure (PNG): one row per image, the input then one column per stage."""
    plt = require_matplotlib()
    from matplotlib.patches import Patch, Rectangle  # optional extra

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
            _hatch_pruned(ax, a, maps.grid, (H, W), Rectangle)
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
        handles.append(Patch(facecolor=(*PRUNED, PRUNED_ALPHA), edgecolor="white", hatch=PRUNED_HATCH,
                             label=f"pruned: {maps.removed}"))
    if "merged" in styles_seen:
        import matplotlib  # optional extra

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


# ------------------------------------------------------------------------------------------ pareto


#: the narrowest top-1 range a Pareto plot shows, in images of the val split and in points: a one-image
#: difference (0.55 pt on the 181 demo val digits) must not fill the whole axis
MIN_SPAN_IMAGES = 10
MIN_SPAN_PT = 1.0


def accuracy_limits(values: list[float], images: Optional[int]) -> tuple[float, float]:
    """y-axis limits (percent) for top-1 values measured on ``images`` images: the values' range widened to at
    least :data:`MIN_SPAN_IMAGES` images' worth (and :data:`MIN_SPAN_PT`), padded, kept within [0, 100]."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, MIN_SPAN_PT, MIN_SPAN_IMAGES * 100.0 / images if images else 0.0)
    mid, half = (lo + hi) / 2, span / 2 * 1.25
    bottom, top = mid - half, mid + half
    if top > 100.0:
        bottom, top = bottom - (top - 100.0), 100.0
    if bottom < 0.0:
        bottom, top = 0.0, min(100.0, top - bottom)
    return bottom, top


def pareto_plot(result: Any, out: str | os.PathLike, *, dpi: int = 120) -> tuple[int, int]:
    """``pareto.png`` of a sweep: top-1 vs throughput (or GMACs vs throughput without accuracy), dense marked.
    Returns the PNG's size in pixels."""
    plt = require_matplotlib()
    data = result if isinstance(result, dict) else result.to_dict()
    dense, points = data["dense"], data["points"]
    has_acc = dense.get("top1") is not None and all(p.get("top1") is not None for p in points)
    has_speed = dense.get("throughput") is not None and all(p.get("throughput") is not None for p in points)
    fig, ax = plt.subplots(figsize=(7.0, 5.0), dpi=dpi, layout="constrained")
    # accuracy vs throughput; without timings accuracy vs GMACs; without accuracy GMACs vs throughput
    x_key = "throughput" if has_speed else "gmacs"
    y_key = "top1" if has_acc else "gmacs"
    if x_key == y_key:  # neither accuracy nor timings: parameters vs GMACs says little, but still one picture
        y_key = "params"
    images = next((p.get("images") for p in points if p.get("images")), None)
    per_image = f", {images:,} images: 1 image = {100.0 / images:.2f} pt" if images else ""
    labels = {"throughput": f"throughput (images/s, batch {data.get('batch_size')}, {data.get('dtype')})",
              "gmacs": "GMACs per image (papers' GFLOPs)",
              "top1": f"top-1 (%) on {data.get('data')} val{per_image}", "params": "parameters"}
    xs = [p[x_key] for p in points]
    ys = [p[y_key] for p in points]
    option = data["option"]
    reference = sweep_dense(data.get("mode", "")).replace(" = ", ": ")
    ax.plot(xs, ys, "-o", color="tab:blue", label=f"{data['method']} ({data.get('mode', '')}), {option} swept",
            zorder=3)
    right = max(xs + [dense[x_key]])
    for p, x, y in zip(points, xs, ys):  # the rightmost label points left, so it stays inside the axes
        ax.annotate(f"{option}={p['value']}", (x, y), textcoords="offset points", fontsize=8,
                    xytext=(-6, 6) if x == right else (6, 6), ha="right" if x == right else "left")
    ax.plot([dense[x_key]], [dense[y_key]], marker="*", markersize=16, color="tab:red", linestyle="none",
            label=reference, zorder=4)
    ax.annotate("dense", (dense[x_key], dense[y_key]), textcoords="offset points", xytext=(6, -12), fontsize=8,
                color="tab:red")
    if x_key == "throughput":
        ax.axvline(dense[x_key], color="tab:red", linewidth=0.8, linestyle=":")
    if y_key == "top1":
        ax.axhline(dense[y_key], color="tab:red", linewidth=0.8, linestyle=":")
        ax.set_ylim(*accuracy_limits(ys + [dense[y_key]], images))
    ax.margins(x=0.08)
    ax.set_xlabel(labels[x_key])
    ax.set_ylabel(labels[y_key])
    short = {"throughput": "throughput", "gmacs": "GMACs", "top1": "top-1", "params": "parameters"}
    what = f"{short[y_key]} vs {short[x_key]}"
    ax.set_title(f"{data['model']} · {data['method']} · {what}\n{data.get('device_name') or data.get('device')}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.1)  # nothing clipped
    plt.close(fig)
    with open_regular(out) as f, Image.open(f) as im:
        return im.size


__all__ = ["draw_token_maps", "pareto_plot", "accuracy_limits", "figure_size", "require_matplotlib", "panel_style"]
