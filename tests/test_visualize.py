"""`vitprune visualize`: a PNG of the expected pixel size from real images through real patched models, stages as
the method's schedule says, ToMe groups and DGE regions read from the assignment maps, and a one-line error when
matplotlib is missing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vitprune.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def figure_px(rows: int, cols: int, dpi: int = 100) -> tuple[int, int]:
    """The documented layout: 2-inch panels, a 0.5-inch label margin, 0.75 in of titles, 0.5 in of legend."""
    return (round((0.5 + 2.0 * cols) * dpi), round((0.75 + 2.0 * rows + 0.5) * dpi))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """scikit-image's sample photos written as ordinary image files."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, ext in (("chelsea", "png"), ("coffee", "jpg")):
        p = folder / f"{name}.{ext}"
        Image.fromarray(getattr(skimage.data, name)()).save(p)
        paths.append(p)
    return paths


def test_evit_on_demo_digits_png_size_and_schedule(tmp_path):
    import vitprune

    out = tmp_path / "evit.png"
    res = runner.invoke(app, ["visualize", "demo", "demo:0", "demo:7", "--method", "evit", "--keep-rate", "0.5",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    with Image.open(out) as im:
        assert im.format == "PNG"
        # 2 rows; input + one column per EViT drop location (blocks 1, 3, 4 of the 6-block demo)
        assert im.size == figure_px(rows=2, cols=4) == (850, 525)
        assert np.asarray(im.convert("L")).std() > 10  # a drawing, not a blank canvas
    assert [s["block"] for s in info["stages"]] == [1, 3, 4]
    model = vitprune.apply_method(vitprune.load_model("demo"), "evit", keep_rate=0.5)
    sched = model.vitprune_method.token_schedule(model)  # tokens entering each block: cls + patches (+ 1 fused)
    for k, s in enumerate(info["stages"]):
        after = sched[s["block"] + 1] - 1  # patch tokens after the stage, the fused token included
        for kept in s["patch_tokens"]:
            # real patches kept: the stage's fused token is not a patch, nor is the fused token of an earlier stage
            # when it is among the most attended and survives (one per earlier stage at most; demo:0 keeps the
            # first stage's at block 3)
            assert after - 1 - k <= kept <= after
        assert all(d == 64 - k for d, k in zip(s["dropped_patches"], s["patch_tokens"]))
    assert info["stages"][0]["patch_tokens"] == [32, 32]  # ceil(0.5 x 64) at the first location, exactly


@pytest.mark.slow
def test_tome_on_photos_with_deit_small_shape(photos, tmp_path):
    """Real photos through DeiT-S/16 at 224 px (random weights: no pretrained weights can be downloaded here)."""
    out = tmp_path / "tome.png"
    res = runner.invoke(app, ["visualize", "deit_small_patch16_224", *map(str, photos), "--method", "tome",
                              "--r", "16", "--no-weights", "--blocks", "3,7,11", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    with Image.open(out) as im:
        assert im.size == figure_px(rows=2, cols=4)
    assert info["grid"] == [14, 14]
    # ToMe merges r tokens per block, clipped to half the patches left (spec table, r = 16: 197, 181, ..., 21, 11)
    import timm

    import vitprune

    model = vitprune.apply_method(timm.create_model("deit_small_patch16_224", pretrained=False), "tome", r=16)
    merged = model.vitprune_method.effective_r(model)
    assert merged == [16] * 11 + [10]
    for s in info["stages"]:
        assert s["patch_tokens"] == [196 - sum(merged[: s["block"] + 1])] * 2
        assert s["dropped_patches"] == [0, 0]  # merged, never dropped
    assert info["stages"][-1]["patch_tokens"] == [10, 10]


def test_tome_groups_and_dge_regions_come_from_the_assignment_maps(photos):
    import vitprune
    from vitprune.report.plots import panel_style
    from vitprune.tokenmaps import collect_token_maps

    tome = vitprune.apply_method(vitprune.load_model("demo"), "tome", r=8)
    maps = collect_token_maps(tome, ["demo:1", "demo:2"], name="demo")
    assert [s.block for s in maps.stages] == list(range(6))  # ToMe merges in every block
    styles = {panel_style(s.assignment[i], maps.grid)[0] for s in maps.stages for i in range(2)}
    assert styles == {"merged"}

    dge = vitprune.apply_method(vitprune.load_model("demo"), "dge", budget=0.4, router_init="budget")
    maps = collect_token_maps(dge, ["demo:1", "demo:2"], name="demo")
    seen = set()
    for s in maps.stages:
        for i in range(2):
            style, groups, sides = panel_style(s.assignment[i], maps.grid)
            assert style in ("plain", "regions")
            if style == "regions":
                seen |= set(sides.values())
                assert maps.kept(s, i) == sum(1 for _ in groups) + int((np.bincount(
                    s.assignment[i][s.assignment[i] >= 0]) == 1).sum())
    assert seen and seen <= {2, 4}  # pooled 2x2 / 4x4 regions of the 8x8 digit grid


def test_dense_model_without_method_and_unknown_blocks_are_one_line_errors(tmp_path):
    res = runner.invoke(app, ["visualize", "demo", "demo:0", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 1 and "is a dense model: give --method" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["visualize", "demo", "demo:0", "--method", "evit", "--blocks", "2",
                              "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 1 and "records token maps after blocks 1,3,4" in res.output
    res = runner.invoke(app, ["visualize", "demo", str(tmp_path / "missing.png"), "--method", "evit",
                              "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 1 and "does not exist" in res.output
    assert not (tmp_path / "x.png").exists()


_NO_MATPLOTLIB = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
sys.argv = ["vitprune"] + sys.argv[1:]
from vitprune.cli.main import main
main()
"""


def run_without_matplotlib(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where importing matplotlib fails, as on an install without vitprune[plot]."""
    return subprocess.run([sys.executable, "-c", _NO_MATPLOTLIB, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_missing_matplotlib_is_one_clear_line(tmp_path):
    res = run_without_matplotlib(["visualize", "demo", "demo:0", "--method", "evit", "--out", str(tmp_path / "x.png")])
    assert res.returncode == 1, res.stdout + res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "plots need matplotlib" in lines[0] and "pip install 'vitprune[plot]'" in lines[0]
    assert not any(tmp_path.iterdir())  # failed before writing anything


def test_the_map_says_the_mode_and_what_became_of_the_pruned_patches():
    import vitprune
    from vitprune.tokenmaps import collect_token_maps

    def maps(method, **options):
        return collect_token_maps(vitprune.apply_method(vitprune.load_model("demo"), method, **options), ["demo:1"])

    assert maps("evit", keep_rate=0.7).removed == "fused into one extra token"  # EViT's default: fuse
    assert maps("evit", keep_rate=0.7, fuse=False).removed == "dropped"
    sait = maps("sait", mode="fixed", keep_rate=0.5)
    assert sait.method == "sait(mode=fixed, keep_rate=0.5)" and sait.removed == "dropped"
    assert maps("sait", mode="adaptive").method.startswith("sait(mode=adaptive")  # the default mode is named too
    assert maps("evovit").removed == "carried along, not processed"


def test_token_maps_are_collected_outside_report():
    """report/ renders; running the model lives in vitprune.tokenmaps, which vitprune.visualize is."""
    import vitprune
    import vitprune.report.plots as plots
    import vitprune.tokenmaps as tokenmaps

    assert vitprune.visualize is tokenmaps.visualize
    assert not hasattr(plots, "collect_token_maps") and not hasattr(plots, "visualize")
