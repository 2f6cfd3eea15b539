"""GMACs with fvcore + vitprune's handles, and the interleaved speed measurement."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vitprune.measure import count_macs, count_params
from vitprune.measure.speed import Schedule, benchmark, resolve_device, resolve_dtype
from vitprune.errors import DeviceError

from .conftest import make_vit


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, gmacs",
    [
        ("deit_tiny_patch16_224", 1.258),
        ("deit_small_patch16_224", 4.608),
        ("deit_base_patch16_224", 17.583),
        ("deit_small_distilled_patch16_224", 4.634),
    ],
)
def test_dense_gmacs_match_reference_within_one_percent(name, gmacs):
    model = timm.create_model(name, pretrained=False)
    mc = count_macs(model)
    assert mc.gmacs == pytest.approx(gmacs, rel=0.01)
    assert mc.uncounted == {}  # every op timm's ViT emits is either counted or costs no MACs by convention


def test_sdpa_is_counted(deit_small):
    mc = count_macs(deit_small)
    sdpa = mc.by_operator["scaled_dot_product_attention"] / 1e9
    # 12 blocks x 6 heads x 197 x 197 x (64 + 64)
    assert sdpa == pytest.approx(12 * 6 * 197 * 197 * 128 / 1e9, rel=1e-6)
    assert mc.gmacs - sdpa == pytest.approx(4.251, rel=0.01)  # what fvcore alone would have said


class _WithUnknownOp(nn.Module):
    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit(x) + torch.fft.fft(x.flatten(1)).real[:, :10]


def test_ops_fvcore_cannot_count_are_reported():
    mc = count_macs(_WithUnknownOp(make_vit()), input_size=(3, 32, 32))
    assert any("fft" in op for op in mc.uncounted)


def test_params():
    assert count_params(timm.create_model("deit_small_patch16_224", pretrained=False)) == 22_050_664


def test_benchmark_interleaves_and_reports_medians():
    models = {"a": make_vit(depth=2), "b": make_vit(depth=4)}
    s = Schedule(batch_size=4, warmup=1, repeats=3, iters=2, latency_samples=3)
    calls = []
    t = benchmark(models, (3, 32, 32), device=torch.device("cpu"), dtype="fp32", settings=s,
                  on_step=lambda: calls.append(1))
    assert set(t) == {"a", "b"}
    for timing in t.values():
        assert timing.throughput > 0 and timing.latency_ms > 0 and timing.batch_size == 4
    assert calls  # progress callback fired


def test_device_and_dtype_errors():
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_dtype(None, torch.device("cpu")) == "fp32"
    with pytest.raises(DeviceError, match="fp16"):
        resolve_dtype("fp16", torch.device("cpu"))


@pytest.mark.parametrize("job", ["profile", "evaluate"])
def test_a_device_this_machine_cannot_use_is_refused_before_the_model_is_loaded(offline_cache, job):
    """A model that is not in the (empty, offline) Hub cache would fail to load: the device error comes first,
    so nothing is loaded or downloaded for a run that cannot happen."""
    import vitprune

    with pytest.raises(DeviceError, match="device 'tpu' is not supported"):
        getattr(vitprune, job)("hf-hub:nobody/not-in-the-cache", device="tpu")
