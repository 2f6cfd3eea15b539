"""The fast path (vitprune.optimize: torch.compile, CUDA graphs on GPU) computes what the plain path computes."""
from __future__ import annotations

import pytest
import torch

import vitprune
from vitprune.methods.registry import method_classes

from .conftest import digits_batch, make_vit

#: the registered methods whose inference is static (they export to ONNX), at their declared sparse setting; DGE's
#: compiled inference has its own test below
STATIC = [(cls.name, dict(cls.sparse_options)) for cls in method_classes() if cls.exportable]


@pytest.mark.slow
@pytest.mark.parametrize("name, opts", STATIC, ids=[n for n, _ in STATIC])
def test_static_methods_compile_into_one_graph_with_equal_outputs(name, opts):
    """No graph break, no host sync: what CUDA graphs need. The eager backend replays the captured graph."""
    torch._dynamo.reset()
    m = vitprune.apply_method(make_vit(), name, **opts).eval()
    x = digits_batch(4)
    compiled = torch.compile(m, backend="eager", fullgraph=True)  # raises on any graph break
    with torch.no_grad():
        assert torch.equal(compiled(x), m(x))


@pytest.mark.slow
@pytest.mark.parametrize("routers", ["budget", "content"])
def test_dge_compiles_into_one_graph_with_equal_outputs(routers):
    """DGE's inference has no host read under compile: static-schedule blocks run their fixed level, routed blocks
    their static maximum width. fullgraph=True raises on a graph break (a .item()/.tolist() would be one)."""
    from .test_dge import random_routers

    torch._dynamo.reset()
    m = vitprune.apply_method(make_vit(depth=6), "dge", router_init="budget", budget=0.5).eval()
    if routers == "content":
        random_routers(m, 0, 0.3, 0.5)
    meth = m.vitprune_method
    meth.prepare_inference(m)
    assert (None in meth.static_levels(m)) == (routers == "content")
    x = digits_batch(4)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_inductor_fast_path_matches_plain_path_on_real_images():
    torch._dynamo.reset()
    m = vitprune.apply_method(vitprune.load_model("demo"), "evit", keep_rate=0.7)
    x = digits_batch(16)
    fast = vitprune.optimize(m, "compile")
    with torch.no_grad():
        ref, got = m(x), fast(x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(1), ref.argmax(1))


def test_optimize_none_returns_the_model():
    m = make_vit()
    assert vitprune.optimize(m, "none") is m
