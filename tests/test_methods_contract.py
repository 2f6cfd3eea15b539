"""The contract every registered method keeps, tested over the registry (a newly registered method is covered
without a test file of its own): its declared no-op setting is the dense model bit for bit, the token schedule it
announces is what a forward pass carries, it runs at two image sizes, prefix tokens (class, distillation,
register) are kept, a saved model loads back to the same logits, a wrong option value is a MethodOptionError,
and a method with a static inference path compiles into one graph.

Models are tiny real timm ViTs (random init) and the inputs real digits from the demo data."""
from __future__ import annotations

import copy

import pytest
import torch

import vitprune
from vitprune.errors import ExportError, MethodOptionError
from vitprune.methods import tracking
from vitprune.methods.base import option_specs
from vitprune.methods.registry import get_method_class, method_names

from .conftest import digits_batch, make_vit

METHODS = method_names()


def patched(model, name, **opts):
    return vitprune.apply_method(copy.deepcopy(model), name, **opts).eval()


def tracked_forward(model, x):
    with tracking(model), torch.no_grad():
        y = model(x)
    return y, model.vitprune_state


@pytest.mark.parametrize("name", METHODS)
def test_the_declared_no_op_setting_is_the_dense_model(name):
    noop = get_method_class(name).noop_options
    assert noop is not None, f"{name} declares no noop_options"
    base, x = make_vit(), digits_batch(4)
    m = patched(base, name, **noop)
    y, state = tracked_forward(m, x)
    with torch.no_grad():
        assert torch.equal(y, base(x))
    assert state.counts == [base.num_prefix_tokens + 64] * len(base.blocks)  # 8 x 8 patches of 4 px on 32 px


@pytest.mark.parametrize("name", METHODS)
def test_the_declared_sparse_setting_removes_tokens(name):
    """The setting the registry-wide tests and the model matrix apply as "sparse" changes the computation: fewer
    tokens by the last block, or (DGE, which keeps every token) pooled queries, so logits differ from dense."""
    sparse = get_method_class(name).sparse_options
    assert sparse is not None, f"{name} declares no sparse_options"
    base, x = make_vit(depth=3), digits_batch(4)
    m = patched(base, name, **sparse)
    y, state = tracked_forward(m, x)
    with torch.no_grad():
        assert torch.isfinite(y).all() and not torch.equal(y, base(x))
    assert state.counts[-1] < state.counts[0] or state.stages, state.counts


@pytest.mark.parametrize("img_size", [32, 48])
@pytest.mark.parametrize("name", METHODS)
def test_token_schedule_equals_the_tracked_counts_at_two_image_sizes(name, img_size):
    """At the default options, on a model built at ``img_size`` (8 x 8 and 12 x 12 patches of 4 px)."""
    base = make_vit(img_size=img_size)
    m = patched(base, name)
    y, state = tracked_forward(m, digits_batch(4, size=img_size))
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    assert state.counts[0] == 1 + (img_size // 4) ** 2
    assert state.counts == m.vitprune_method.token_schedule(m)


@pytest.mark.slow
@pytest.mark.parametrize("arch, extra, npre", [
    ("deit_small_distilled_patch16_224", {}, 2),  # class + distillation token
    ("vit_small_patch16_224", {"reg_tokens": 2}, 3),  # class + 2 registers
])
@pytest.mark.parametrize("name", METHODS)
def test_prefix_tokens_are_kept(name, arch, extra, npre):
    """Every block sees the prefix tokens first and unchanged between blocks (what one block writes is what the next
    reads, where the method calls timm's blocks), every count includes them, and stage assignments map patches only."""
    base = make_vit(arch=arch, **extra)
    m = patched(base, name)
    seen_in, seen_out = {}, {}
    handles = []
    for i, blk in enumerate(m.blocks):
        handles.append(blk.register_forward_pre_hook(lambda mod, a, i=i: seen_in.__setitem__(i, a[0].detach())))
        handles.append(blk.register_forward_hook(lambda mod, a, o, i=i: seen_out.__setitem__(i, o.detach())))
    x = digits_batch(4)
    try:
        y, state = tracked_forward(m, x)
    finally:
        for h in handles:
            h.remove()
    assert y.shape == (4, 10)
    assert state.num_prefix == npre and state.counts[0] == npre + 64
    assert all(c > npre for c in state.counts)
    for i in range(len(m.blocks) - 1):
        if i in seen_out and i + 1 in seen_in:
            assert torch.equal(seen_in[i + 1][:, :npre], seen_out[i][:, :npre]), (name, i)
    for _, assign in state.stages:
        assert assign.shape == (4, 64)


@pytest.mark.parametrize("name", METHODS)
def test_save_load_round_trip_gives_the_same_logits(name, tmp_path):
    m = patched(make_vit(), name)
    vitprune.save(m, tmp_path / name)
    back = vitprune.load(tmp_path / name)
    assert back.vitprune_method.options == m.vitprune_method.options
    x = digits_batch(4)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def _wrong_values(spec):
    """A value of another type than the option's annotation, and for the headline option one out of its range
    (a negative number, or text no choice spells)."""
    yield 1j  # no option takes a complex number
    if spec.headline:
        yield "bogus" if spec.type is str else -1


@pytest.mark.parametrize("name", METHODS)
def test_bad_option_values_raise_method_option_error(name):
    for spec in option_specs(get_method_class(name)):
        for value in _wrong_values(spec):
            with pytest.raises(MethodOptionError):
                vitprune.apply_method(make_vit(depth=2), name, **{spec.name: value})
    with pytest.raises(MethodOptionError):
        vitprune.apply_method(make_vit(depth=2), name, no_such_option=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_static_inference_compiles_into_one_graph(name):
    """A method whose default setting has a static inference path (its export check passes) compiles with
    ``fullgraph=True`` (no graph break, no host sync); the eager backend replays the captured graph."""
    m = patched(make_vit(depth=4), name)
    try:
        m.vitprune_method.export_check(m)
    except ExportError as e:
        pytest.skip(f"{name}'s default setting is not static: {e}")
    torch._dynamo.reset()
    x = digits_batch(4)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), m(x))
