"""Shared fixtures: tiny real timm ViTs (pretrained=False) and real images (the bundled digits, scikit-image photos).

Every model here is a genuine timm VisionTransformer built at a small size so the suite runs on 2 CPU cores.
"""
from __future__ import annotations

import os
import sys

import pytest
import timm
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
# a step's start line waits this long when output is not a terminal: the tests' one-line error checks stay
# independent of the machine's load (tests/test_cli_progress.py sets its own)
os.environ.setdefault("VITPRUNE_PROGRESS_AFTER", "600")
# 2 threads on a quiet 2-core CI machine; VITPRUNE_TEST_THREADS=1 when the machine is shared and loaded
torch.set_num_threads(int(os.environ.get("VITPRUNE_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


def make_vit(
    depth: int = 12,
    embed_dim: int = 48,
    num_heads: int = 3,
    img_size: int = 32,
    patch_size: int = 4,
    arch: str = "vit_tiny_patch16_224",
    seed: int = 0,
    **kwargs,
) -> torch.nn.Module:
    """A small timm ViT (random init, eval mode). ``arch`` may be a deit/distilled/register variant."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, img_size=img_size, patch_size=patch_size, depth=depth,
                              embed_dim=embed_dim, num_heads=num_heads, num_classes=10, **kwargs)
    return model.eval()


def digits_batch(n: int = 8, size: int = 32) -> torch.Tensor:
    """``n`` real handwritten digits from the demo data as a normalised ``n x 3 x size x size`` batch: the first
    held-out digits (val or test) in the data's order, the batch the tests were written with (when the held-out
    digits were all val), so numerical checks keep their inputs."""
    import torch.nn.functional as F
    import torchvision.transforms.functional as TF

    from vitprune.data.demo import DEMO_SPLITS, _load_arrays, digit_to_image

    images, _, codes = _load_arrays()
    held_out = images[codes != DEMO_SPLITS["train"]]
    x = torch.stack([TF.to_tensor(digit_to_image(d)) for d in held_out[:n]])
    x = (x - 0.3058) / 0.3236
    if size != 32:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def photo_batch(size: int = 224, names: tuple[str, ...] = ("astronaut", "chelsea", "coffee")) -> torch.Tensor:
    """Real photos from scikit-image, resized and ImageNet-normalised."""
    import numpy as np
    import skimage.data
    import torch.nn.functional as F

    imgs = []
    for name in names:
        a = getattr(skimage.data, name)()
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0
        imgs.append(F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    x = torch.stack(imgs)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


@pytest.fixture
def tiny_vit():
    return make_vit()


@pytest.fixture
def digits():
    return digits_batch()


@pytest.fixture(scope="session")
def photos():
    """scikit-image's astronaut, chelsea and coffee at 224 px, normalised (a module's own fixture may override)."""
    return photo_batch(224)


@pytest.fixture(scope="session")
def deit_small():
    """DeiT-S at 224 px with random weights (FLOP and token-count checks)."""
    torch.manual_seed(0)
    return timm.create_model("deit_small_patch16_224", pretrained=False).eval()


def assert_keep_one_is_dense(patched, deit_small, photos, tiny_vit, digits) -> None:
    """Keep rate 1.0 on DeiT-S (photos) and the tiny ViT (digits): outputs bit-identical to the dense models, no
    stage recorded, 197 tokens in every block. ``patched(model, **options)`` patches a copy."""
    from vitprune.methods import tracking

    m = patched(deit_small, keep_rate=1.0)
    with tracking(m), torch.no_grad():
        assert torch.equal(m(photos), deit_small(photos))
    assert m.vitprune_state.counts == [197] * 12 and m.vitprune_state.stages == []
    assert m.vitprune_method.token_schedule(m) == [197] * 12
    t = patched(tiny_vit, keep_rate=1.0)
    with torch.no_grad():
        assert torch.equal(t(digits), tiny_vit(digits))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hub cache in a temp dir, offline; huggingface_hub reads these at call time."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _checkout_status() -> str | None:
    """``git status --porcelain`` of the checkout the tests run from, or None outside a git checkout."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                              capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


@pytest.fixture(scope="session", autouse=True)
def checkout_left_as_found():
    """The suite writes only into temporary folders: a run that adds, changes or deletes a file of the checkout
    (a subprocess started in the checkout's folder, a relative path) fails here, naming what changed."""
    before = _checkout_status()
    yield
    after = _checkout_status()
    if before is not None and after is not None and after != before:
        changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
        pytest.fail("the test run changed the checkout (tests write only under tmp_path): "
                    + "; ".join(changed[:10]), pytrace=False)


@pytest.fixture(autouse=True)
def benchmarks_not_importable_after():
    """After every test: no file of benchmarks/ is in ``sys.modules`` and the folder is not on ``sys.path`` (a
    benchmark imported as a top-level module shadows the package of its name for every later test: benchmarks/
    kernels.py vs Hugging Face's ``kernels``, which transformers imports). Tests load them with
    ``tests.benchscripts.load_benchmark``."""
    yield
    from tests.benchscripts import BENCH, leaked_benchmark_modules

    leaked = leaked_benchmark_modules()
    for name in leaked:
        sys.modules.pop(name, None)  # reported once, here: the tests after this one start clean
    if leaked or str(BENCH) in sys.path:
        pytest.fail(f"benchmark scripts left importable: modules {leaked}, on sys.path: {str(BENCH) in sys.path}; "
                    "load them with tests.benchscripts.load_benchmark", pytrace=False)


def assert_card_reproduces(card: str, typed: str, *, dropped: tuple[str, ...] = ("--resume", "--quiet")) -> str:
    """The card's Reproduce command is the full resolved command: it starts like the command as typed (already
    redacted, ``report['command']``) and carries each of its flags with the same value, but those in ``dropped``
    (how the run was driven, not what it made). Returns the Reproduce command."""
    import shlex

    block = card.split("## Reproduce", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    got, want = shlex.split(block), shlex.split(typed)
    assert got[:3] == want[:3], (block, typed)
    pairs = {}
    i = 3
    while i < len(want):
        flag, value = want[i], None
        if i + 1 < len(want) and not want[i + 1].startswith("--"):
            value, i = want[i + 1], i + 1
        pairs[flag] = value
        i += 1
    for flag, value in pairs.items():
        if flag in dropped:
            assert flag not in got, (flag, block)
            continue
        assert flag in got, (flag, block)
        if value is not None:
            shown = got[got.index(flag) + 1]
            assert shown == value or _same_number(shown, value), (flag, value, block)
    return block


def _same_number(a: str, b: str) -> bool:
    """``1.0`` and ``1`` name the same setting (the resolved command writes the recorded value's type)."""
    try:
        return float(a) == float(b)
    except ValueError:
        return False
