"""The fast path (einsearch.fast) against the two-einsum reference: values and gradients.

Every candidate program is checked on its own (not only the one the planner picks), also when
its pooled buffers are reused across calls, across two forwards before one backward and across
two layers of the same shape in one graph.
"""

import math
import warnings

import pytest
import torch
from conftest import NAMED_STRUCTURES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_theta import thetas

from einsearch import EinsumLinear, Theta, fast, make_plan
from einsearch.functional import einsum_linear_reference

f64 = torch.float64

# Named structures, their role-swapped (B-first) twins and a few odd corners of the space.
EXTRA_THETAS = {
    "monarch_swapped": Theta.monarch().swapped(),
    "btt_swapped": Theta.btt(0.3).swapped(),
    "kronecker_skewed": Theta.parse("(0.25|0.75|0|0.75|0.25|0|0)"),
    "outer_product": Theta.parse("(0|1|0|0|0|1|0)"),
    "all_axes": Theta.parse("(0.3|0.3|0.4|0.2|0.3|0.5|0.5)"),
    "shared_only": Theta.parse("(0|0|1|0|0|1|0.5)"),
    "b_first_blocks": Theta.parse("(0|0.5|0.5|0.5|0|0.5|0.5)"),
}
ALL_THETAS = {**NAMED_STRUCTURES, **EXTRA_THETAS}
SIZES = [(64, 64), (97, 97), (48, 80), (100, 36), (1, 5)]


@pytest.fixture(autouse=True)
def _planner(tmp_path):
    """A measuring planner with a short budget and its cache in a temporary directory."""
    yield fast.configure(mode="measure", budget_s=0.05, reps=1, cache_dir=tmp_path)
    fast.configure(mode="measure", use_disk=False)


def _cores(plan, dtype=f64, generator=None):
    """Random cores of the plan's shapes; a single-entry core is the constant 1 (a buffer)."""
    def make(shape):
        if math.prod(shape) == 1:
            return torch.ones(shape, dtype=dtype)
        return torch.randn(shape, dtype=dtype, generator=generator).requires_grad_()
    return make(plan.shape_a), make(plan.shape_b)


def _assert_same(plan, n=5, dtype=f64, rtol=1e-10, atol=1e-10, x=None):
    """fast.einsum_linear equals the reference in value and in d/dx, d/da, d/db."""
    if x is None:
        x = torch.randn(n, plan.d_in, dtype=dtype)
    x = x.detach().requires_grad_()
    a, b = _cores(plan, dtype)
    y_fast = fast.einsum_linear(x, a, b, plan)
    y_ref = einsum_linear_reference(x, a, b, plan)
    assert y_fast.shape == y_ref.shape == (x.shape[0], plan.d_out)
    torch.testing.assert_close(y_fast, y_ref, rtol=rtol, atol=atol)
    dy = torch.randn_like(y_ref)
    inputs = [t for t in (x, a, b) if t.requires_grad]
    g_fast = torch.autograd.grad(y_fast, inputs, dy, allow_unused=True)
    g_ref = torch.autograd.grad(y_ref, inputs, dy, allow_unused=True)
    for got, want in zip(g_fast, g_ref):
        if want is None:
            assert got is None or not got.any()
        else:
            assert got is not None
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(ALL_THETAS))
@pytest.mark.parametrize("d_in, d_out", SIZES)
def test_matches_reference_float64(name, d_in, d_out):
    plan = make_plan(ALL_THETAS[name], d_in, d_out)
    _assert_same(plan)


@given(thetas(), st.sampled_from([1, 7, 16, 30, 64, 97]), st.sampled_from([1, 12, 45, 64, 101]),
       st.sampled_from([0, 1, 3, 8]))
@settings(max_examples=60, deadline=None)
def test_matches_reference_random_thetas(theta, d_in, d_out, n):
    theta = Theta(*theta.as_tuple()[:6], min(theta.rho, 0.6))  # keep the rank axis small
    plan = make_plan(theta, d_in, d_out)
    _assert_same(plan, n=n)


@pytest.mark.parametrize("name", ["monarch", "btt", "kronecker", "tensor_train", "low_rank", "dense",
                                  "novel_a", "novel_b", "monarch_swapped", "all_axes"])
def test_gradcheck(name):
    plan = make_plan(ALL_THETAS[name], 12, 10)
    x = torch.randn(3, 12, dtype=f64, requires_grad=True)
    a, b = _cores(plan)
    inputs = tuple(t for t in (x, a, b) if t.requires_grad)

    def f(*ts):
        it = iter(ts)
        xx = next(it)
        aa = next(it) if a.requires_grad else a
        bb = next(it) if b.requires_grad else b
        return fast.einsum_linear(xx, aa, bb, plan)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("name", ["monarch", "kronecker", "tensor_train", "novel_a"])
def test_double_backward_matches_reference(name):
    plan = make_plan(ALL_THETAS[name], 16, 16)
    x = torch.randn(4, 16, dtype=f64, requires_grad=True)
    a, b = _cores(plan)
    results = []
    for fn in (fast.einsum_linear, einsum_linear_reference):
        y = fn(x, a, b, plan)
        gx, ga = torch.autograd.grad(y.square().sum(), (x, a), create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum() + ga.square().sum(), (x, a, b)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["monarch", "btt", "kronecker", "tensor_train", "low_rank", "novel_a",
                                  "monarch_swapped"])
def test_float32_sanity(name):
    plan = make_plan(ALL_THETAS[name], 256, 256)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    a, b = _cores(plan, torch.float32, g)
    y = fast.einsum_linear(x, a, b, plan)
    y_ref = einsum_linear_reference(x.double(), a.double(), b.double(), plan)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4 * y_ref.abs().max().item())
    _assert_same(plan, n=32, dtype=torch.float32, rtol=1e-4, atol=1e-3)


def test_non_contiguous_input_and_cores():
    plan = make_plan(Theta.btt(0.25), 64, 64)
    x = torch.randn(64, 9, dtype=f64).T  # (9, 64), transposed storage
    a, b = _cores(plan)
    a_nc = a.detach().transpose(0, 2).contiguous().transpose(0, 2).requires_grad_()
    torch.testing.assert_close(fast.einsum_linear(x, a_nc, b, plan), einsum_linear_reference(x, a, b, plan))
    _assert_same(plan, x=x)


def test_autocast_uses_reference_path():
    plan = make_plan(Theta.monarch(), 64, 64)
    x = torch.randn(8, 64)
    a, b = _cores(plan, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast.einsum_linear(x, a, b, plan)
        want = einsum_linear_reference(x, a, b, plan)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["monarch", "btt", "low_rank", "kronecker", "tensor_train", "novel_a"])
def test_layer_fast_equals_layer_reference(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = EinsumLinear(48, 80, ALL_THETAS[name], dtype=f64, einsum_norm=True)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, 48, dtype=f64)
    grads = []
    for fast_path in (True, False):
        layer.fast = fast_path
        layer.zero_grad()
        y = layer(x)
        y.square().sum().backward()
        grads.append((y.detach(), [p.grad.clone() for p in layer.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-10)
    for got, want in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------- the programs themselves
def test_programs_of_the_special_cases():
    assert fast.program(make_plan(Theta.dense(), 64, 64)).kind == "mm"
    lr = fast.program(make_plan(Theta.low_rank(0.75), 1024, 1024))
    assert lr.kind == "two_step" and lr.cost == 0  # two plain GEMMs, no copy at all
    assert lr.f1.batch == lr.f2.batch == ""
    kron = fast.program(make_plan(Theta.kronecker(), 1024, 1024))
    assert kron.cost_forward == 0  # per-token GEMMs read x in place, one GEMM writes y
    assert kron.f1.batch == "n"
    tt = fast.program(make_plan(Theta.tensor_train(0.25), 1024, 1024))
    assert tt.cost_forward == 0


@pytest.mark.parametrize("theta", [Theta.monarch(), Theta.btt(math.log(4) / math.log(1024))])
def test_block_structures_permute_only_x_and_y(theta):
    prog = fast.program(make_plan(theta, 1024, 1024))
    assert prog.f1.batch == "g" and prog.f2.batch == "f"
    assert prog.z2_layout == prog.f1.o_layout  # step 2 reads z where step 1 wrote it
    assert prog.dz1_layout == prog.b2.o_layout
    assert prog.f1.o_layout[-1] == "n"  # z is stored token-innermost
    # only x and y are permuted, and never with torch's slow strided permute kernel
    assert max(prog.cost_forward, prog.cost_backward) < fast.layout._PRICE_STRIDED * 1024


def test_describe_is_one_line():
    text = fast.describe(make_plan(Theta.monarch(), 256, 256))
    assert "\n" not in text and "x'=" in text


def _plan_candidates(plan):
    return [c for c in fast.candidates(plan) if c.name != "compiled_reference"]


def _grads(fn, x, a, b, plan, dy):
    y = fn(x, a, b, plan)
    inputs = [t for t in (x, a, b) if t.requires_grad]
    return y, torch.autograd.grad(y, inputs, dy)


@pytest.mark.parametrize("d_in, d_out", [(64, 64), (97, 97), (48, 80)])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_every_candidate_matches_reference(named_theta, d_in, d_out, n):
    plan = make_plan(named_theta, d_in, d_out)
    x = torch.randn(n, d_in, dtype=f64, requires_grad=True)
    a, b = _cores(plan)
    dy = torch.randn(n, d_out, dtype=f64)
    y_ref, g_ref = _grads(einsum_linear_reference, x, a, b, plan, dy)
    for cand in _plan_candidates(plan):
        for _ in range(2):  # the second call runs on reused buffers
            y, g = _grads(cand.run, x, a, b, plan, dy)
            torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10, msg=cand.name)
            for got, want in zip(g, g_ref):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=cand.name)


@pytest.mark.parametrize("name", ["monarch", "btt", "kronecker", "tensor_train", "low_rank", "novel_b",
                                  "monarch_swapped", "all_axes"])
def test_saved_buffers_survive_two_forwards_before_one_backward(name):
    """Two graphs alive at once (same shapes): the second forward must not overwrite what the
    first saved for its backward, nor the first's output."""
    plan = make_plan(ALL_THETAS[name], 64, 48)
    a, b = _cores(plan)
    for cand in _plan_candidates(plan):
        xs = [torch.randn(9, 64, dtype=f64, requires_grad=True) for _ in range(2)]
        ys = [cand.run(x, a, b, plan) for x in xs]
        y_keep = [y.detach().clone() for y in ys]
        dys = [torch.randn_like(y) for y in ys]
        got = [torch.autograd.grad(y, [x, *[t for t in (a, b) if t.requires_grad]], dy)
               for x, y, dy in zip(xs, ys, dys)]
        for x, y, yk, dy, g in zip(xs, ys, y_keep, dys, got):
            torch.testing.assert_close(y, yk, msg=cand.name)  # outputs were not overwritten
            y_ref, g_ref = _grads(einsum_linear_reference, x, a, b, plan, dy)
            torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10, msg=cand.name)
            for u, v in zip(g, g_ref):
                torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10, msg=cand.name)


@pytest.mark.parametrize("name", ["monarch", "btt", "kronecker", "novel_a", "monarch_swapped"])
def test_two_layers_of_one_shape_in_one_graph(name):
    """y = f2(f1(x)) with identical shapes: both layers draw the same buffer sizes from the pool."""
    plan = make_plan(ALL_THETAS[name], 64, 64)
    cores = [_cores(plan), _cores(plan)]
    x = torch.randn(16, 64, dtype=f64, requires_grad=True)
    params = [t for ab in cores for t in ab if t.requires_grad]
    dy = torch.randn(16, 64, dtype=f64)

    def net(fn):
        h = fn(x, *cores[0], plan)
        h = h * 1.5  # something between the layers, like an activation
        return fn(h, *cores[1], plan)

    want = torch.autograd.grad(net(einsum_linear_reference), [x, *params], dy)
    for cand in _plan_candidates(plan):
        for _ in range(2):
            got = torch.autograd.grad(net(cand.run), [x, *params], dy)
            for u, v in zip(got, want):
                torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10, msg=cand.name)


def test_output_may_be_modified_in_place():
    plan = make_plan(Theta.monarch(), 64, 64)
    a, b = _cores(plan)
    x = torch.randn(4, 64, dtype=f64, requires_grad=True)
    for cand in _plan_candidates(plan):
        y = cand.run(x, a, b, plan)
        y.mul_(2.0)  # a view of an internal buffer would refuse this
        g = torch.autograd.grad(y.sum(), x)[0]
        want = torch.autograd.grad(2.0 * einsum_linear_reference(x, a, b, plan).sum(), x)[0]
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-10, msg=cand.name)


def test_pooled_buffers_are_reused_in_a_training_loop():
    """A plain loop (no env var): after the first step, the fast path allocates nothing new."""
    layer = EinsumLinear(256, 256, Theta.monarch(), bias=False)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    x = torch.randn(32, 256)
    for cand in ("block_transpose", "layout"):
        steps = []
        for _ in range(3):
            before = fast.POOL.stats()["misses"]
            opt.zero_grad(set_to_none=True)
            fast.candidate(cand).run(x, *layer.effective_cores(), layer.plan).square().sum().backward()
            opt.step()
            steps.append(fast.POOL.stats()["misses"] - before)
        assert steps[-1] == 0, (cand, steps)


@pytest.mark.skipif(not fast.compiler_available(), reason="no working C++ compiler for torch.compile")
def test_compiled_candidate_matches_reference():
    """The patient-mode candidate (torch.compile of the two einsums): one small plan, since
    compiling takes tens of seconds."""
    plan = make_plan(Theta.btt(0.25), 32, 32)
    x = torch.randn(6, 32, dtype=f64, requires_grad=True)
    a, b = _cores(plan)
    dy = torch.randn(6, 32, dtype=f64)
    y_ref, g_ref = _grads(einsum_linear_reference, x, a, b, plan, dy)
    y, g = _grads(fast.candidate("compiled_reference").run, x, a, b, plan, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(g, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert [c.name for c in fast.candidates(plan, compiled=True)][-1] == "compiled_reference"


def test_buffer_pool_reuses_only_free_buffers_and_stays_under_its_cap():
    pool = fast.BufferPool(max_per_size=4, max_bytes=3 * 8 * 100)
    a = pool.empty((10, 10), f64, "cpu")
    b = pool.empty((100,), f64, "cpu")  # same size, but `a` is alive: another buffer
    assert a.data_ptr() != b.data_ptr() and not a._is_view()
    ptr = a.data_ptr()
    del a
    c = pool.empty((4, 25), f64, "cpu")  # `a` is free again: reused, in the new shape
    assert c.data_ptr() == ptr and c.shape == (4, 25) and c.is_contiguous()
    keep = c.view(-1)[:3]  # a view keeps the storage alive too
    del c
    assert pool.empty((100,), f64, "cpu").data_ptr() != ptr
    del keep
    assert pool.stats()["bytes"] <= 3 * 8 * 100
    d = pool.empty((50,), f64, "cpu")  # over the cap: free 100-element buffers are evicted first
    assert pool.stats()["bytes"] <= 3 * 8 * 100 and d.numel() == 50
    del b
    assert pool.clear() > 0 and pool.stats()["buffers"] <= 1
