"""Which timm ViT families each method supports: apply, one forward, GMACs below dense, identity at no-op.

Seventeen families at tiny sizes (random weights, 4 blocks, width 64, 2 heads; each family's own patch size, pooling,
prefix tokens, LayerScale, norms, and its own patch grid or one with the same divisibility) x every method.
A cell is ``ok`` when the patched model runs, counts fewer GMACs than the dense model at the method's sparse
setting, and gives the dense model's logits exactly at its no-op setting; otherwise it holds the method's one-line
refusal (or the first check that failed). the table of docs/models.md is this script's output
(``python benchmarks/model_matrix.py --write-readme``; ``tests/test_model_matrix.py`` keeps them equal).

    python benchmarks/model_matrix.py                 # print the table
    python benchmarks/model_matrix.py --write  # regenerate the table in docs/models.md
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import timm
import torch

import vitprune
from vitprune.errors import VitpruneError
from vitprune.methods.registry import method_classes
from vitprune.measure import count_macs
from vitprune.measure.flops import model_input_size

PAGE = Path(__file__).resolve().parents[1] / "docs" / "models.md"  # the page whose table this script writes
BEGIN, END = "<!-- model-matrix:begin -->", "<!-- model-matrix:end -->"
_BLOCK = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.S)
#: the tiny backbone every family is shrunk to (timm keyword arguments)
TINY = dict(pretrained=False, depth=4, embed_dim=64, num_heads=2, num_classes=10)


@dataclass(frozen=True)
class Family:
    label: str  # the table's row
    arch: str  # the timm model it is shrunk from
    kwargs: tuple[tuple[str, Any], ...] = ()  # timm keyword arguments beyond TINY


#: eighteen families (six of them timm Eva models, with rotary position embeddings), at small inputs for speed: an 8 x 8 patch grid where the family's own grid is even
#: (224/256 px at patch 16 or 14), a 9 x 9 grid for DINOv2 (its 37 x 37 at 518 px) and 7 x 7 for FlexiViT (its
#: 15 x 15 at 240 px): odd grids that no region size divides, as theirs
FAMILIES = (
    Family("DeiT (class token)", "deit_tiny_patch16_224", (("img_size", 128),)),
    Family("DeiT distilled (class + distillation token)", "deit_tiny_distilled_patch16_224", (("img_size", 128),)),
    Family("ViT with qk-norm", "vit_tiny_patch16_224", (("img_size", 128), ("qk_norm", True))),
    Family("ViT gap (no class token, avg pool)", "vit_medium_patch16_gap_256", (("img_size", 128),)),
    Family("ViT registers + gap (no class token)", "vit_little_patch16_reg4_gap_256", (("img_size", 128),)),
    Family("SigLIP (no class token, attention pool)", "vit_base_patch16_siglip_224", (("img_size", 128),)),
    Family("SigLIP so400m-style (patch 14, attention pool)", "vit_so400m_patch14_siglip_224", (("img_size", 112),)),
    Family("DINOv2 (LayerScale, patch 14, odd grid as 37x37)", "vit_small_patch14_dinov2", (("img_size", 126),)),
    Family("DINOv2 + registers (odd grid)", "vit_small_patch14_reg4_dinov2", (("img_size", 126),)),
    Family("FlexiViT (odd grid as 15x15 at 240 px)", "flexivit_small", (("img_size", 112),)),
    Family("CLIP ViT (pre-norm)", "vit_base_patch16_clip_224", (("img_size", 128),)),
    Family("EVA02 (timm Eva: rotary embeddings, SwiGLU, class token + avg pool)", "eva02_tiny_patch14_224",
           (("img_size", 112),)),
    Family("ViT with rotary embeddings (timm Eva: AttentionRope, LayerScale, no absolute position)",
           "vit_small_patch16_rope_224", (("img_size", 128),)),
    Family("Perception Encoder (timm Eva: rotary embeddings, pre-norm, attention pool)",
           "vit_pe_core_tiny_patch16_384", (("img_size", 128),)),
    Family("ViT with a rotary embedding per block (timm Eva: rope_mixed)", "vit_small_patch16_rope_mixed_224",
           (("img_size", 128),)),
    Family("DINOv3 (timm Eva: rotary embeddings, LayerScale, class token + 4 registers)", "vit_small_patch16_dinov3",
           (("img_size", 128),)),
    Family("BEiT (relative position bias per block, LayerScale, avg pool)", "beit_base_patch16_224",
           (("img_size", 128),)),
    Family("NaFlexViT (registers, avg pool; at a fixed resolution)", "naflexvit_base_patch16_gap",
           (("img_size", 128), ("pretrained_cfg_overlay", (("input_size", (3, 128, 128)),)))),
)


#: every registered method, in registration order (the columns of docs/models.md's table), with its declared sparse and no-op settings
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    cls.name: (dict(cls.sparse_options), dict(cls.noop_options)) for cls in method_classes()}
METHODS = tuple(SETTINGS)


@lru_cache(maxsize=None)
def dense_model(family: Family) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {k: dict(v) if k == "pretrained_cfg_overlay" else v for k, v in family.kwargs}
    return timm.create_model(family.arch, **{**TINY, **kwargs}).eval()


@lru_cache(maxsize=None)
def dense_macs(family: Family) -> float:
    base = dense_model(family)
    return count_macs(base, images=_images(base)[:1]).macs


def _images(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, *model_input_size(model), generator=g)


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@lru_cache(maxsize=None)
def check(family: Family, method: str) -> str:
    """``"ok"``, or why the family x method cell is not supported (a refusal or the first failed check)."""
    base = dense_model(family)
    sparse, noop = SETTINGS[method]
    images = _images(base)
    try:
        model = vitprune.apply_method(copy.deepcopy(base), method, **sparse).eval()
        with torch.no_grad():
            out = model(images)
        if out.shape != (images.shape[0], base.num_classes) or not torch.isfinite(out).all():
            return "forward gives no finite logits"
        if not count_macs(model, images=images[:1]).macs < dense_macs(family):
            return "GMACs not below dense"
        ident = vitprune.apply_method(copy.deepcopy(base), method, **noop).eval()
        with torch.no_grad():
            if not torch.equal(ident(images), base(images)):
                return "no-op setting differs from the dense model"
    except VitpruneError as e:
        return _one_line(e)
    return "ok"


def matrix() -> dict[Family, dict[str, str]]:
    return {f: {m: check(f, m) for m in METHODS} for f in FAMILIES}


def render(results: dict[Family, dict[str, str]]) -> str:
    """The Markdown table: ✓ per supported cell, else a numbered reason listed under the table."""
    reasons: list[str] = []
    rows = []
    for fam, cells in results.items():
        row = [f"{fam.label} · `{fam.arch}`"]
        for m in METHODS:
            text = cells[m]
            if text == "ok":
                row.append("✓")
                continue
            if text not in reasons:
                reasons.append(text)
            row.append(f"✗ ({reasons.index(text) + 1})")
        rows.append(row)
    lines = ["| family · timm model | " + " | ".join(f"`{m}`" for m in METHODS) + " |",
             "|---|" + "---|" * len(METHODS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if reasons:
        lines += [""] + [f"{i}. {text}" for i, text in enumerate(reasons, 1)]
    return "\n".join(lines)


def readme_table(text: str) -> str:
    m = _BLOCK.search(text)
    if m is None:
        raise SystemExit(f"{PAGE.name} has no {BEGIN} ... {END} block")
    return m.group(1).rstrip("\n")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", "--write-readme", action="store_true",
                    help="replace the table in docs/models.md with the generated one")
    args = ap.parse_args(argv)
    table = render(matrix())
    if args.write:
        text = PAGE.read_text()
        readme_table(text)
        new = _BLOCK.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text)
        tmp = PAGE.with_suffix(".md.tmp")
        tmp.write_text(new)
        tmp.replace(PAGE)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
