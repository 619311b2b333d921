"""Adversarial review, session 32 (trust: numbers, models, state). Classes the earlier
reviews did not cover:

1. gradients autograd returns in the sparse COO layout for a dense parameter
   (``nn.Embedding(sparse=True)``, ``nn.EmbeddingBag(sparse=True)``);
2. a Ctrl-C (``KeyboardInterrupt`` raised in a custom backward) during the analysis;
3. one tensor under two names on a replayed graph (``b = a``; a layer and the model holding
   it; ``[a, a]``);
4. the global default dtype (``torch.set_default_dtype(torch.float64)``);
5. autograd's global modes set before the call: anomaly detection, saved-tensor hooks;
6. NaN artefacts (0·inf of both modes) outside the band the graph proves;
7. calls inside ``torch.no_grad()`` / ``torch.inference_mode()`` or after
   ``torch.set_grad_enabled(False)`` on an output built with grad mode on.

Expected values: mathematics, ``torch.func`` (``jacrev``, ``jacfwd``, ``hessian``), or a
loop of ``torch.autograd.grad`` over the rows of the graph the cell built (``.to_dense()``
where autograd hands a sparse gradient). Tests marked ``xfail(strict=True)`` are bugs found
in this review (they pass once fixed and then lose the mark); unmarked ones guard what
holds or what was fixed (said beside them).
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import vjp_magic


def _rows(output, tensors) -> list[torch.Tensor]:
    """d output[b] / d tensor for every b, stacked per tensor, by plain backward passes."""
    flat = output.reshape(-1)
    rows = [torch.autograd.grad(flat[b], tensors, retain_graph=True, allow_unused=True,
                                materialize_grads=True) for b in range(flat.numel())]
    return [torch.stack([row[i].to_dense() for row in rows]).reshape(
        tuple(output.shape) + tuple(t.shape)) for i, t in enumerate(tensors)]


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.layout != torch.strided else t


# -- 1. sparse gradients of a dense parameter -------------------------------------------------

# Were strict xfails (s32 G6), fixed in 87f26b4: differentiate, %%vjp --wrt net,
# sparse_jacobian and dependency crashed with RuntimeError 'reshape is not implemented for
# sparse tensors' where autograd returns a sparse COO gradient for a dense parameter.


def test_embedding_with_sparse_gradients_per_row():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, sparse=True)
    idx = torch.tensor([[1, 2, 1], [7, 0, 9], [3, 3, 3], [5, 6, 2]])
    y = emb(idx).pow(2).sum((1, 2))  # one loss per row
    expected, = _rows(y, [emb.weight])
    r = vjp_magic.differentiate(y, emb.weight, names="w")
    torch.testing.assert_close(_dense(r.jacobian("w")), expected)
    assert emb.weight.grad is None


def test_embedding_bag_with_sparse_gradients():
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(10, 4, mode="sum", sparse=True)
    idx = torch.tensor([[1, 2, 1], [7, 0, 9], [3, 3, 3]])
    y = bag(idx)  # (3, 4)
    expected, = _rows(y, [bag.weight])
    r = vjp_magic.differentiate(y, bag.weight, names="w")
    torch.testing.assert_close(_dense(r.jacobian("w")), expected)


def test_wrt_a_model_with_a_sparse_embedding(ip, run_ok):
    run_ok("import torch.nn as nn, torch.nn.functional as F\n"
           "torch.manual_seed(0)\n"
           "net = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), "
           "nn.Linear(12, 3))\n"
           "X, t = torch.randint(0, 10, (6, 3)), torch.randint(0, 3, (6,))")
    cell = 'losses = F.cross_entropy(net(X), t, reduction="none")'
    run_ok(cell)
    net, losses = ip.user_ns["net"], ip.user_ns["losses"]
    names = [k for k, _ in net.named_parameters()]
    expected = dict(zip(names, _rows(losses, list(net.parameters()))))
    r = ip.run_cell("%%vjp --wrt net\n" + cell)
    assert r.success, r.error_in_exec
    for name, rows in expected.items():
        got = _dense(r.result.derivatives[f"net.{name}"]).reshape(rows.shape)
        torch.testing.assert_close(got, rows, rtol=1e-5, atol=1e-6)


def _rolled_lookup():
    """Row i of y reads row i - 1 (mod 50) of the table: a permutation of the table's rows."""
    torch.manual_seed(0)
    emb = nn.Embedding(50, 4, sparse=True)
    y = emb(torch.arange(50).roll(1)).sin()  # (50, 4)
    return emb, y


def test_sparse_jacobian_of_a_sparse_gradient_table():
    emb, y = _rolled_lookup()
    expected, = _rows(y, [emb.weight])
    got = vjp_magic.sparse_jacobian(y, emb.weight)
    torch.testing.assert_close(got.to_dense(), expected.reshape(200, 200))


def test_dependency_on_a_sparse_gradient_table():
    emb, y = _rolled_lookup()
    d = vjp_magic.dependency(y, emb.weight, 0, 0)
    expected = torch.zeros(50, 50, dtype=torch.bool)
    expected[torch.arange(50), torch.arange(50).roll(1)] = True
    assert torch.equal(_dense(d.pattern), expected)
    assert d.kind == "band with wrap-around" and d.offsets == (-1, -1)  # as with sparse=False


def test_a_sparse_leaf_is_a_usage_error():
    """Guard: a sparse input (not a sparse gradient) gets the short message."""
    xs = torch.randn(5, 5).to_sparse().requires_grad_()
    with pytest.raises(vjp_magic.VJPUsageError, match="sparse"):
        vjp_magic.differentiate(torch.sparse.sum(xs * 2, dim=1).to_dense(), xs)


# -- 3. one tensor under two names on a recorded (replayed) graph --------------------------------

# Were strict xfails (s32 G6), fixed in 6afee1d: one tensor under two names where the graph
# is replayed (%%vjp, %jacobian EXPR, differentiate/hessian(fn, ...), the per-sample path) got
# all its derivatives under one name and exact zeros, "y does not depend on a: every
# derivative is 0", under the other (run/hookfree.py made one fresh leaf per name).


def test_one_tensor_under_two_names_in_a_cell(ip, run_ok):
    run_ok("a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)\nb = a")
    r = run_ok("%%vjp --wrt a b\ny = torch.sin(a)")
    cos = torch.cos(ip.user_ns["a"].detach())
    for name in ("a", "b"):  # d sin(a) / da = cos(a), whatever it is called
        torch.testing.assert_close(r.jacobian(name), torch.diag(cos))
    assert "does not depend" not in r._repr_mimebundle_()["text/plain"]


def test_a_layer_and_the_model_that_holds_it(ip, run_ok):
    run_ok("import torch.nn as nn\ntorch.manual_seed(0)\nenc = nn.Linear(3, 2)\n"
           "dec = nn.Sequential(enc, nn.Tanh())\nx = torch.randn(3)")
    r = run_ok("%%vjp --wrt enc dec\ny = dec(x)")
    enc, y = ip.user_ns["enc"], ip.user_ns["y"]
    weight, bias = _rows(y, [enc.weight, enc.bias])
    for name in ("enc", "dec.0"):  # one Linear, reached under both names
        torch.testing.assert_close(r.jacobian(f"{name}.weight"), weight)
        torch.testing.assert_close(r.jacobian(f"{name}.bias"), bias)


def test_differentiate_a_function_of_one_tensor_named_twice():
    a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(lambda: torch.sin(a), [a, a], names=["p", "q"])
    expected = torch.diag(torch.cos(a.detach()))
    torch.testing.assert_close(r.jacobian("p"), expected)
    torch.testing.assert_close(r.jacobian("q"), expected)


def test_hessian_of_a_function_of_one_tensor_named_twice():
    a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(lambda: torch.sin(a).sum(), [a, a], names=["p", "q"])
    expected = torch.diag(-torch.sin(a.detach()))  # d²/da² sum(sin a)
    torch.testing.assert_close(h.hessian("p"), expected)
    torch.testing.assert_close(h.hessian("q"), expected)


def test_jacobian_of_an_expression_wrt_one_tensor_named_twice(ip, run_ok):
    run_ok("a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)\nb = a")
    r = run_ok("%jacobian torch.sin(a) a b")
    cos = torch.cos(ip.user_ns["a"].detach())
    for name in ("a", "b"):
        torch.testing.assert_close(r.jacobian(name), torch.diag(cos))


def test_per_sample_gradients_of_a_model_and_its_first_layer(ip, run_ok):
    run_ok("import torch.nn as nn, torch.nn.functional as F\ntorch.manual_seed(0)\n"
           "net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))\n"
           "X, t = torch.randn(40, 4), torch.randint(0, 3, (40,))")
    r = run_ok('%%vjp --wrt net net[0]\nlosses = F.cross_entropy(net(X), t, reduction="none")')
    net, losses = ip.user_ns["net"], ip.user_ns["losses"]
    weight, bias = _rows(losses, [net[0].weight, net[0].bias])
    for name in ("net.0", "net[0]"):  # one layer, under the model's name and its own
        torch.testing.assert_close(r.jacobian(f"{name}.weight"), weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.jacobian(f"{name}.bias"), bias, rtol=1e-5, atol=1e-6)


def test_differentiate_a_tensor_named_twice_on_the_live_graph():
    """Guard: on the live graph (no record) both names get the Jacobian (s30 usage)."""
    a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(torch.sin(a), [a, a], names=["p", "q"])
    for name in ("p", "q"):
        torch.testing.assert_close(r.jacobian(name), torch.diag(torch.cos(a.detach())))


# -- 4. the global default dtype --------------------------------------------------------------

@pytest.fixture
def default_float64():
    """``torch.set_default_dtype(torch.float64)``, as scientific notebooks start; restored."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


# Was a strict xfail (s32 G6), fixed in 97b1634: under torch.set_default_dtype(torch.float64)
# (or float16) dependency() crashed with RuntimeError 'index_add_(): self (Double) and source
# (Float) must have the same scalar type' (core/grouptest.py _reached).
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dependency_under_a_float64_default_dtype(default_float64, dtype):
    x = torch.randn(100, dtype=dtype, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    y = x.roll(1) - 2 * x ** 3 + x.roll(-1)
    d = vjp_magic.dependency(y, x)
    expected = torch.func.jacrev(lambda t: t.roll(1) - 2 * t ** 3 + t.roll(-1))(x.detach()) != 0
    assert torch.equal(_dense(d.pattern), expected)
    assert d.kind == "band with wrap-around" and d.offsets == (-1, 1)


def test_the_rest_under_a_float64_default_dtype(default_float64):
    """Guard: differentiate, sparse_jacobian and hessian of float32 tensors under it."""
    x = torch.randn(3000, dtype=torch.float32, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    y = x.roll(1) - 2 * x ** 3 + x.roll(-1)
    band = torch.diag(-6 * x.detach() ** 2) + torch.diag(torch.ones(2999), 1) \
        + torch.diag(torch.ones(2999), -1)
    band[0, -1] = band[-1, 0] = 1  # d(roll)/dx wraps around
    for got in (vjp_magic.differentiate(y, x).jacobian("x", layout=torch.sparse_csr),
                vjp_magic.sparse_jacobian(y, x)):
        torch.testing.assert_close(got.to_dense(), band.to(torch.float32))
    h = vjp_magic.hessian((x * x.roll(1)).sum(), x)
    expected = torch.diag(torch.ones(2999), 1) + torch.diag(torch.ones(2999), -1)
    expected[0, -1] = expected[-1, 0] = 1
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(),
                               expected.to(torch.float32))


# -- 6. NaN artefacts outside the structure the graph allows --------------------------------------

# Was a strict xfail (s32 G6), fixed in 1a04d43: 1,806 false dependences from 0*inf
# artefacts outside the graph's band ('sparse, at most 43 per row', witness y[0] <- x[7]).
def test_nan_artefacts_are_no_dependence_outside_the_graphs_band():
    x, y, band = _sqrt_neighbours()
    d = vjp_magic.dependency(y, x)
    assert not (_dense(d.pattern) & ~band).any()  # never a dependence the graph rules out
    assert d.witness is None or band[d.witness]


# Were strict xfails (s32 G6), fixed by the rule that a non-finite entry outside the pattern
# the graph proves is a 0·inf artefact, 0 (core/validation.outside_proved_zeroed, read by
# sparse_exact.exact_csr and analysis._nan_filled): sparse_jacobian and differentiate gave NaN
# at 1,806 entries such as J[0, 7], r.dependency read them as dependences (witness
# y[0] <- x[7]), and the Hessian had 7,267 NaN such as H[0, 7].
def test_nan_artefacts_outside_the_graphs_band_are_zero_in_the_jacobian():
    x, y, band = _sqrt_neighbours()
    for J in (vjp_magic.sparse_jacobian(y, x),
              vjp_magic.differentiate(y, x).jacobian("x", layout=torch.sparse_csr)):
        J = J.to_dense()
        assert torch.equal(J[~band], torch.zeros_like(J[~band]))
        inside = x.detach().roll(1) / (2 * x.detach().sqrt())  # d y[i] / d x[i], inf at 0
        torch.testing.assert_close(J.diagonal(), inside)


def test_a_results_dependency_has_no_nan_artefacts_outside_the_band():
    x, y, band = _sqrt_neighbours()
    d = vjp_magic.differentiate(y, x).dependency("x", 0, 0)
    assert not (_dense(d.pattern) & ~band).any()


def test_nan_artefacts_outside_the_proved_pattern_are_zero_in_the_hessian():
    x, y, band = _sqrt_neighbours()
    H = vjp_magic.hessian(y.sum(), x).hessian("x", layout=torch.sparse_csr).to_dense()
    allowed = band | band.T  # term i reads x[i-1] and x[i]
    assert torch.equal(H[~allowed], torch.zeros_like(H[~allowed]))


# -- 5. autograd's global modes, set in an earlier cell ------------------------------------------

@pytest.fixture
def anomaly_mode():
    """``torch.autograd.set_detect_anomaly(True)``, as a user debugging NaNs leaves it."""
    before = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(True)
    yield
    torch.autograd.set_detect_anomaly(before)


# Was a strict xfail (s32 G6), fixed in 3b0a177 (core/quiet.quiet_autograd): with
# set_detect_anomaly(True), %%vjp on sqrt at 0 crashed with "Function 'SqrtBackward0'
# returned nan values" from the analysis's own passes.
def test_sqrt_at_zero_in_anomaly_mode(ip, run_ok, anomaly_mode):
    run_ok("x = torch.linspace(0, 2, 5, dtype=torch.float64, requires_grad=True)\n"
           "y = torch.sqrt(x)\ny.backward(gradient=torch.ones_like(y), retain_graph=True)\n"
           "plain = x.grad.clone()\nx.grad = None")
    r = run_ok("%%vjp\nx = torch.linspace(0, 2, 5, dtype=torch.float64, requires_grad=True)\n"
               "y = torch.sqrt(x)")
    x = ip.user_ns["x"].detach()
    expected = torch.cat([torch.tensor([float("inf")], dtype=torch.float64),
                          0.5 / torch.sqrt(x[1:])])  # d sqrt(x)/dx = 1 / (2 sqrt(x))
    torch.testing.assert_close(r.derivatives["x"], expected)
    torch.testing.assert_close(ip.user_ns["plain"], expected)


def _sqrt_neighbours():
    """y[i] = x[i - 1] * sqrt(x[i]) (indices mod 300) at x with a 0 at every 7th entry, where
    sqrt's derivative is infinite; y[i] can read only x[i] and x[i - 1]."""
    x = torch.rand(300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[::7] = 0
    x.requires_grad_()
    i = torch.arange(300)
    band = torch.zeros(300, 300, dtype=torch.bool)
    band[i, i] = band[i, (i - 1) % 300] = True
    return x, x.roll(1) * x.sqrt(), band


# Was a strict xfail (s32 G6), fixed in 44728ff: with set_detect_anomaly(True) dependency()
# crashed with "Function '...Backward0' returned nan values" from its own probes.
def test_dependency_in_anomaly_mode():
    x, y, _ = _sqrt_neighbours()
    before = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(True)
    try:
        d = vjp_magic.dependency(y, x)
    finally:
        torch.autograd.set_detect_anomaly(before)
    i, t = torch.arange(300), x.detach()
    pattern = _dense(d.pattern)
    # d y[i] / d x[i-1] = sqrt(x[i]); d y[i] / d x[i] = x[i-1] / (2 sqrt(x[i])): read wherever
    # they are not 0 (inf at x[i] = 0 is a dependence too)
    assert pattern[i, (i - 1) % 300][t != 0].all()
    assert pattern[i, i][t.roll(1) != 0].all()


def test_a_tridiagonal_map_in_anomaly_mode(anomaly_mode):
    """Guard: without NaN on the way, anomaly mode changes nothing."""
    x = torch.randn(3000, requires_grad=True, generator=torch.Generator().manual_seed(0))
    J = vjp_magic.differentiate(x.roll(1) * x, x).jacobian("x", layout=torch.sparse_csr)
    expected = torch.diag(x.detach().roll(1)) + torch.diag(x.detach()[1:], -1)
    expected[0, -1] = x.detach()[0]
    torch.testing.assert_close(J.to_dense(), expected)


# Was a strict xfail (s32 G6), fixed in 44728ff, 3b0a177 and bc508d1: saved-tensor hooks
# active around a cell fired for the replay, its passes and the in-place check.
def test_saved_tensor_hooks_active_around_the_cell_do_not_fire_for_the_analysis(ip, run_ok):
    count = {"pack": 0, "unpack": 0}

    def pack(t):
        count["pack"] += 1
        return t

    def unpack(t):
        count["unpack"] += 1
        return t

    cell = "x = torch.linspace(0.5, 2, 5, requires_grad=True)\ny = torch.sqrt(x)"
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        run_ok(cell)
        plain = dict(count)
        count.update(pack=0, unpack=0)
        r = run_ok("%%vjp\n" + cell)
    assert count == plain
    torch.testing.assert_close(r.derivatives["x"], 0.5 / torch.sqrt(ip.user_ns["x"].detach()))


# -- 7. called inside torch.no_grad() / torch.inference_mode() ------------------------------------
# The output was built with grad mode on; only the call is inside the block (an evaluation
# loop, a @torch.no_grad() helper). torch.autograd.grad needs no grad mode for first
# derivatives; second derivatives need it for their create_graph pass, which
# torch.autograd.functional.hessian switches on itself.

def _neighbour_product():
    x = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
    return x, lambda t: torch.tanh(t) * t.roll(1)


# Were strict xfails (s32 G6), fixed in 2860586 (core/quiet.quiet_autograd turns grad mode on
# for the analysis): hessian read an all-zero Hessian "symmetric (proved for every x)" (the
# sparse one: "every second derivative is 0 ... y is linear in x"); a vector output, and
# sparse_jacobian / differentiate / %%vjp on a stencil, crashed.


@pytest.mark.parametrize("block", [torch.no_grad, torch.inference_mode])
def test_hessian_of_a_scalar_called_inside_a_no_grad_block(block):
    x, f = _neighbour_product()
    s = f(x).sum()
    with block():
        h = vjp_magic.hessian(s, x)
    torch.testing.assert_close(h.hessian("x"), torch.func.hessian(lambda t: f(t).sum())(x.detach()))


def test_hessian_magic_after_grad_mode_was_switched_off(ip, run_ok):
    run_ok("x = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)\n"
           "s = (torch.tanh(x) * x.roll(1)).sum()")
    try:
        run_ok("torch.set_grad_enabled(False)")
        h = run_ok("%hessian s x")
    finally:
        torch.set_grad_enabled(True)
    expected = torch.func.hessian(lambda t: (torch.tanh(t) * t.roll(1)).sum())(
        ip.user_ns["x"].detach())
    torch.testing.assert_close(h.hessian("x"), expected)


def test_a_sparse_hessian_called_inside_a_no_grad_block():
    x = torch.randn(3000, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    s = (x * x.roll(1) * x).sum()  # d²s/dx_i² = 2 x[i-1], d²s/dx_i dx_(i-1) = 2 x[i]
    with torch.no_grad():
        h = vjp_magic.hessian(s, x)
    t = x.detach()
    expected = torch.diag(2 * t.roll(1)) + torch.diag(2 * t[1:], -1) + torch.diag(2 * t[1:], 1)
    expected[0, -1] = expected[-1, 0] = 2 * t[0]
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(), expected)


@pytest.mark.parametrize("block", [torch.no_grad, torch.inference_mode])
def test_hessian_of_a_vector_called_inside_a_no_grad_block(block):
    x, f = _neighbour_product()
    y = f(x)
    with block():
        h = vjp_magic.hessian(y, x)
    torch.testing.assert_close(h.hessian("x"), torch.func.jacfwd(torch.func.jacrev(f))(x.detach()))


# Was a strict xfail (s32 G6), fixed in 2860586: both crashed there.
@pytest.mark.parametrize("block", [torch.no_grad, torch.inference_mode])
def test_a_sparse_jacobian_called_inside_a_no_grad_block(block):
    x = torch.randn(3000, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    y = x.roll(1) - 2 * x ** 3 + x.roll(-1)
    ones = torch.ones(2999, dtype=torch.float64)
    expected = torch.diag(-6 * x.detach() ** 2) + torch.diag(ones, 1) + torch.diag(ones, -1)
    expected[0, -1] = expected[-1, 0] = 1
    with block():
        got = (vjp_magic.sparse_jacobian(y, x),
               vjp_magic.differentiate(y, x).jacobian("x", layout=torch.sparse_csr))
    for J in got:
        torch.testing.assert_close(J.to_dense(), expected)


# Was a strict xfail (s32 G6), fixed in 2860586: it crashed with 'element 0 of tensors does
# not require grad'.
def test_vjp_magic_on_a_stencil_after_grad_mode_was_switched_off(ip, run_ok):
    try:
        run_ok("torch.set_grad_enabled(False)")
        r = run_ok("%%vjp\nwith torch.enable_grad():\n"
                   "    x = torch.randn(3000, dtype=torch.float64, requires_grad=True)\n"
                   "    y = x.roll(1) - 2 * x ** 3 + x.roll(-1)")
    finally:
        torch.set_grad_enabled(True)
    t = ip.user_ns["x"].detach()
    ones = torch.ones(2999, dtype=torch.float64)
    expected = torch.diag(-6 * t ** 2) + torch.diag(ones, 1) + torch.diag(ones, -1)
    expected[0, -1] = expected[-1, 0] = 1
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), expected)


def test_small_jacobians_and_dependency_called_inside_a_no_grad_block():
    """Guard: what works there today."""
    x, f = _neighbour_product()
    y = f(x)
    with torch.no_grad():
        J = vjp_magic.differentiate(y, x).jacobian("x")
        d = vjp_magic.dependency(y, x)
    torch.testing.assert_close(J, torch.autograd.functional.jacobian(f, x.detach()))
    assert d.kind == "band with wrap-around" and d.offsets == (-1, 0)


# -- 2. Ctrl-C during the analysis -------------------------------------------------------------

class _Interrupted(torch.autograd.Function):
    """x * 2 whose backward counts its calls and raises KeyboardInterrupt (a user's Ctrl-C
    while the analysis runs it) from call ``STOP`` on."""

    # its calls, counted by an itertools.count: beyond the put-back of the Python state a
    # backward changes (core/user_effects, s43), which would reset a number after each pass
    ticks = itertools.count(1)
    STOP = 4

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        if next(_Interrupted.ticks) >= _Interrupted.STOP:
            raise KeyboardInterrupt
        return g * 2


# Was a strict xfail (s32 G6), fixed in 49d0e8e: after a KeyboardInterrupt in the user's
# backward during differentiate(), core/retained.py grads_kept's finally ran one more pass of
# zeros through the user's code, and its second interrupt chained onto the first.
def test_ctrl_c_in_a_pass_runs_no_further_pass():
    x = torch.randn(40, requires_grad=True, generator=torch.Generator().manual_seed(0))
    y = _Interrupted.apply(x).roll(1) * x
    after = {}
    try:
        for stop in range(2, 9):  # the interrupt at each of the analysis's first passes
            _Interrupted.ticks, _Interrupted.STOP = itertools.count(1), stop
            try:
                vjp_magic.differentiate(y, x)
            except KeyboardInterrupt as interrupt:
                calls = next(_Interrupted.ticks) - 1
                after[stop] = (calls - stop, interrupt.__context__ is None)
    finally:
        _Interrupted.STOP = 4
    assert after  # some call was interrupted
    assert after == {stop: (0, True) for stop in after}  # no pass after it, one traceback
    assert x.grad is None


@pytest.mark.parametrize("stop", [1, 2, 3])
def test_ctrl_c_in_a_pass_leaves_the_state(stop):
    """Guard: after the interrupt, grad mode, the profiler, threading and the graph are as
    before (a later backward works)."""
    import sys
    x = torch.randn(40, requires_grad=True, generator=torch.Generator().manual_seed(0))
    y = _Interrupted.apply(x).roll(1) * x
    before = sys.getprofile()
    _Interrupted.ticks, _Interrupted.STOP = itertools.count(1), stop
    try:
        with pytest.raises(KeyboardInterrupt):
            vjp_magic.differentiate(y, x)
    finally:
        _Interrupted.STOP = 4
    assert sys.getprofile() is before
    assert torch.is_grad_enabled()
    assert torch._C._is_multithreading_enabled()
    assert x.grad is None
    _Interrupted.ticks, _Interrupted.STOP = itertools.count(1), 10**9
    try:
        y.sum().backward()
    finally:
        _Interrupted.STOP = 4
    twin = x.detach().clone().requires_grad_()
    expected, = torch.autograd.grad(((twin * 2).roll(1) * twin).sum(), twin)
    torch.testing.assert_close(x.grad, expected)
