"""A config.json is checked against the memory available now (not the machine's total) and against a cap on patch
tokens per image, on its meta-device build, before anything is allocated; --allow-large lifts both."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vitprune
from vitprune.cli.main import app
from vitprune.errors import ModelNotFoundError
from vitprune.hub import load_model
from vitprune.hub.limits import MAX_TOKENS, allow_large, available_memory

from .conftest import make_vit

runner = CliRunner()


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return vitprune.save(make_vit(depth=2), tmp_path_factory.mktemp("good") / "model")


def folder_with(good: Path, dst: Path, **model_args) -> Path:
    """A copy of the tiny saved ViT whose config.json describes ``model_args`` (weights kept: never read, the
    checks come first)."""
    dst.mkdir()
    cfg = json.loads((good / "config.json").read_text())
    cfg["model_args"].update(model_args)
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    return dst


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="needs Linux's /proc/meminfo")
def test_available_memory_is_memavailable():
    memory, source = available_memory()
    info = _meminfo()
    assert source == "MemAvailable in /proc/meminfo"
    assert abs(memory - info["MemAvailable"]) < 2**30  # read a moment apart on a shared machine


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="needs Linux's /proc/meminfo")
def test_a_model_between_available_and_total_memory_is_refused(good, tmp_path):
    """Width 4096: a block is 12·d² float32 parameters (qkv 3d², proj d², mlp 8d²) = 768 MiB; the depth is chosen
    so the model lands halfway between MemAvailable and MemTotal. The old check (total memory) let it through."""
    info = _meminfo()
    total, avail = info["MemTotal"], info["MemAvailable"]
    if total - avail < 2 * 2**30:
        pytest.skip(f"only {(total - avail) / 2**30:.1f} GiB between available and total memory here")
    block = 12 * 4096**2 * 4
    depth = math.ceil((avail + total) / 2 / block)
    if depth > 256:
        pytest.skip("more memory than 256 blocks of width 4096 describe")
    folder = folder_with(good, tmp_path / "m", embed_dim=4096, depth=depth, num_heads=32)
    with pytest.raises(ModelNotFoundError, match=r"describes a model of [\d,.]+ GiB, more than the [\d,.]+ GiB of "
                       r"memory available \(MemAvailable in /proc/meminfo\); give --allow-large"):
        load_model(str(folder), pretrained=False)


def test_an_absurd_token_count_is_refused_before_building(good, tmp_path):
    """8192 px at patch 1: 8192² = 67,108,864 tokens per image."""
    folder = folder_with(good, tmp_path / "m", img_size=8192, patch_size=1)
    res = runner.invoke(app, ["eval", str(folder), "--data", "demo"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert "describes 67,108,864 patch tokens per image, more than 16,384; give --allow-large" in lines[0], res.output


def test_allow_large_lifts_the_token_cap(good, tmp_path):
    """Just over the cap (129² = 16,641 tokens at 129 px, patch 1) builds with allow_large; a tiny model still."""
    folder = folder_with(good, tmp_path / "m", img_size=129, patch_size=1)
    assert 129**2 > MAX_TOKENS
    with pytest.raises(ModelNotFoundError, match="16,641 patch tokens per image"):
        load_model(str(folder), pretrained=False)
    with allow_large():
        model = load_model(str(folder), pretrained=False)
    assert model.patch_embed.num_patches == 129**2
    with pytest.raises(ModelNotFoundError, match="16,641 patch tokens"):  # only inside the block
        load_model(str(folder), pretrained=False)


@pytest.mark.slow
def test_the_allow_large_flag_reaches_the_check(good, tmp_path):
    """`profile --allow-large --no-speed` on the same 16,641-token config counts it instead of refusing it."""
    folder = folder_with(good, tmp_path / "m", img_size=129, patch_size=1)
    refused = runner.invoke(app, ["profile", str(folder), "--no-speed", "--no-weights", "--device", "cpu"])
    assert refused.exit_code == 1 and "give --allow-large" in refused.output, refused.output
    res = runner.invoke(app, ["profile", str(folder), "--no-speed", "--no-weights", "--device", "cpu",
                              "--allow-large", "--json"])
    assert res.exit_code == 0, res.output
