"""Adversarial review of the sparse path (issue 20): graph-proved and observed patterns, the
colouring, compressed passes, sparse Hessians and the magics around them, through the public
API only (``vjp_magic.differentiate``, ``sparse_jacobian``, ``hessian``, ``check``, ``%%vjp``).

Every expected number comes from ``torch.autograd.functional.jacobian`` or
``torch.func.hessian`` (float64 where possible). Tests marked ``xfail(strict=True)`` are bugs
found in this review: they pass once the bug is fixed (and then must lose the mark).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from custom_functions import Identity
import vjp_magic

N = 96  # >= SPARSE_MIN_OUTPUT entries, and few enough colours for the sparse path to pay
_G = torch.Generator().manual_seed(20)
DUPLICATES = torch.randint(0, N, (N,), generator=_G)  # an index with repeats
W1 = torch.randn(4, 2, 3, dtype=torch.float64, generator=_G)
W2 = torch.randn(3, 3, 3, 3, dtype=torch.float64, generator=_G)
MASK = torch.rand(1, 12, generator=_G) > 0.5


def _reference(f, x):
    y = f(x.detach())
    return torch.autograd.functional.jacobian(f, x.detach()).reshape(y.numel(), x.numel())


def _as_strided_window(x):
    return x.as_strided((x.numel() - 2, 3), (1, 1)).prod(1)


def _scatter_add(x):
    return torch.zeros(N, dtype=x.dtype).scatter_add(0, DUPLICATES, x ** 2)


def _index_put(x):
    return torch.zeros(N, dtype=x.dtype).index_put((DUPLICATES,), x ** 2, accumulate=True)


def _setitem(x):
    z = x.clone()
    z[:30] = z[1:31] * 2
    return z * z.roll(1)


OPS = {
    # (function, shape of x): each gives a sparse, non-block-diagonal Jacobian
    "index_add with repeated indices": (
        lambda x: torch.zeros(N, dtype=x.dtype).index_add(0, DUPLICATES, x ** 2), (N,)),
    "scatter_add with repeated indices": (_scatter_add, (N,)),
    "index_put accumulate": (_index_put, (N,)),
    "gather with repeats": (lambda x: torch.gather(x, 0, DUPLICATES) ** 3 * x, (N,)),
    "as_strided overlapping windows": (_as_strided_window, (N,)),
    "reflect pad": (lambda x: F.pad(x[None, None], (3, 3), mode="reflect")[0, 0] ** 2, (N,)),
    "replicate pad": (lambda x: F.pad(x[None, None], (3, 3), mode="replicate")[0, 0] ** 2,
                      (N,)),
    "circular pad": (lambda x: F.pad(x[None, None], (3, 3), mode="circular")[0, 0] ** 2,
                     (N,)),
    "reflect pad 2-D": (lambda x: F.pad(x[None, None], (2, 2, 1, 1), mode="reflect")[0, 0]
                        ** 2, (10, 12)),
    "conv1d groups dilation stride": (
        lambda x: F.conv1d(x, W1.to(x.dtype), groups=2, dilation=2, padding=1, stride=2),
        (1, 4, 48)),
    "conv1d padding same": (
        lambda x: F.conv1d(x, W1.to(x.dtype), groups=2, dilation=3, padding="same"),
        (1, 4, 48)),
    "conv_transpose1d": (lambda x: F.conv_transpose1d(x, W1.to(x.dtype), stride=2, padding=1,
                                                      output_padding=1), (1, 4, 24)),
    "conv2d stride dilation": (
        lambda x: F.conv2d(x, W2.to(x.dtype), stride=2, padding=2, dilation=2),
        (1, 3, 12, 12)),
    "sort": (lambda x: torch.sort(x)[0] ** 2, (N,)),
    "argsort gather": (lambda x: x[torch.argsort(x)] * x, (N,)),
    "diff n=2": (lambda x: torch.diff(x, n=2) ** 2, (N,)),
    "repeat_interleave": (lambda x: x.repeat_interleave(3) * 2, (N,)),
    "kron": (lambda x: torch.kron(x, torch.ones(3, 2, dtype=x.dtype)), (8, 8)),
    "roll 2-D negative shifts": (lambda x: x.roll((-13, 20), (1, 0)) * x, (8, 12)),
    "roll flattened": (lambda x: x.roll(3) * x, (8, 12)),
    "slice assignment": (_setitem, (N,)),
    "masked_fill broadcast": (lambda x: x.masked_fill(MASK, 0.) * x.roll(1, 0), (8, 12)),
    "broadcast row times column": (lambda x: x[:1] + x[:, 1:2] * x, (8, 12)),
    "relu where zero": (lambda x: F.relu(x) + x.roll(3).relu(), (N,)),
    "view of a view with offset": (
        lambda x: x.reshape(8, 12)[2:, 1:].t()[1:3].reshape(-1) * x[:12], (N,)),
    "custom Function (observed)": (lambda x: Identity.apply(x) * x.roll(1), (N,)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(OPS))
def test_sparse_results_equal_autograd(case, dtype):
    f, shape = OPS[case]
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    expected = _reference(f, x.double()).to(dtype)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    y = f(x)
    for strategy in ({}, {"exact_up_to": 0}):
        r = vjp_magic.differentiate(y, x, seed=3, **strategy)
        torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(),
                                   expected, **tol)
    torch.testing.assert_close(vjp_magic.sparse_jacobian(y, x, seed=4).to_dense(), expected,
                               **tol)
    assert x.grad is None


def test_the_sparse_path_is_taken_for_these_cases():
    """The cases above reach the compressed passes (else they would test nothing new)."""
    taken = []
    for case in ("reflect pad", "conv1d groups dilation stride", "sort", "scatter_add with "
                 "repeated indices", "custom Function (observed)"):
        f, shape = OPS[case]
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        taken.append(vjp_magic.differentiate(f(x), x, seed=0, exact_up_to=0)
                     .inputs["x"].sparse is not None)
    assert all(taken)


# -- dynamic range: a small derivative next to a huge one ------------------------------------
def _huge_coupling(x, big):
    u = Identity.apply(x)  # no rule: the pattern is observed by grouped probes
    return u + F.pad(big * u[5:6], (x.numel() - 1, 0))  # y[-1] += big * x[5]


def test_sparse_jacobian_keeps_a_unit_derivative_beside_a_huge_one():
    x = torch.randn(64, requires_grad=True)
    y = _huge_coupling(x, 1e12)
    got = vjp_magic.sparse_jacobian(y, x, seed=0).to_dense()
    expected = _reference(lambda t: _huge_coupling(t, 1e12), x)
    assert got[5, 5] == 1.0  # d y[5] / d x[5]: y[5] = x[5]
    torch.testing.assert_close(got, expected)


def test_differentiate_keeps_a_unit_derivative_beside_a_huge_one():
    x = torch.randn(1024, requires_grad=True)
    y = _huge_coupling(x, 1e12)
    r = vjp_magic.differentiate(y, x, seed=0)
    assert r.jacobian("x", layout=torch.sparse_csr).to_dense()[5, 5] == 1.0


def test_a_moderate_coupling_is_kept():
    """The same shape with 1e6 (no rounding away): correct today, kept as a regression."""
    x = torch.randn(64, requires_grad=True)
    y = _huge_coupling(x, 1e6)
    got = vjp_magic.sparse_jacobian(y, x, seed=0).to_dense()
    torch.testing.assert_close(got, _reference(lambda t: _huge_coupling(t, 1e6), x))


# -- user state -------------------------------------------------------------------------------
def _stencil(u):
    p = F.pad(u, (1, 1))
    return p[2:] + p[:-2] - 2 * u + u ** 3


def test_retain_grad_survives_differentiate():
    x = torch.randn(256, dtype=torch.float64, requires_grad=True)
    u = torch.sin(x)
    u.retain_grad()
    y = u.cumsum(0)
    vjp_magic.differentiate(y, x, seed=1)
    y.sum().backward()  # the user's own next step
    torch.testing.assert_close(u.grad, torch.arange(256, 0, -1, dtype=torch.float64))


@pytest.mark.parametrize("api", ["differentiate", "sparse_jacobian", "hessian"])
def test_x_grad_and_rng_untouched(api):
    x = torch.randn(2048 if api == "hessian" else 256, dtype=torch.float64, requires_grad=True)
    y = _stencil(x)
    state = torch.get_rng_state()
    if api == "differentiate":
        assert vjp_magic.differentiate(y, x, seed=1).inputs["x"].sparse is not None
    elif api == "sparse_jacobian":
        vjp_magic.sparse_jacobian(y, x, seed=1)
    else:
        assert vjp_magic.hessian((y ** 2).sum(), x, seed=1).inputs["x"].sparse is not None
    assert x.grad is None
    assert torch.equal(torch.get_rng_state(), state)


SETUP = ("import torch.nn.functional as F\ntorch.manual_seed(0)\n"
         "conv = torch.nn.Conv1d(1, 1, 3, padding=1).double()\ncounts = []\n"
         "conv.register_full_backward_hook(lambda *a: counts.append('module'))\n")
BODY = ("x = torch.randn(300, dtype=torch.float64, requires_grad=True)\n"
        "h = torch.sin(x)\nh.retain_grad()\n"
        "h.register_hook(lambda g: counts.append('tensor'))\n"
        "d = F.dropout(h, 0.3)\n"
        "y = conv(d[None, None])[0, 0] ** 2\n"
        "y = F.pad(y, (1, 1))[2:] + y\n"
        "v = torch.zeros_like(y)\nv[7] = 1.\n"
        "y.backward(v, retain_graph=True)\n")


def test_magic_on_a_sparse_cell_leaves_hooks_grads_and_rng_as_a_plain_run(ip, run_ok):
    run_ok(SETUP + BODY)
    plain = (list(ip.user_ns["counts"]), ip.user_ns["h"].grad.clone(),
             ip.user_ns["x"].grad.clone(), torch.get_rng_state())
    run_ok(SETUP)
    r = run_ok("%%vjp --of y --wrt x\n" + BODY)
    assert r.inputs["x"].sparse is not None
    assert ip.user_ns["counts"] == plain[0]
    assert torch.equal(ip.user_ns["h"].grad, plain[1])
    assert torch.equal(ip.user_ns["x"].grad, plain[2])
    assert torch.equal(torch.get_rng_state(), plain[3])
    # the reference: one backward per row through the user's own graph (dropout mask included)
    y, x = ip.user_ns["y"], ip.user_ns["x"]
    rows = [torch.autograd.grad(y[i], x, retain_graph=True)[0] for i in range(y.numel())]
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(),
                               torch.stack(rows))


STENCIL_CELL = ("import torch.nn.functional as F\n"
                "x = torch.randn(300, dtype=torch.float64, requires_grad=True)\n"
                "y = F.pad(x, (1, 1))[2:] + x**2\n")


def test_magic_with_the_cells_own_ones_backward_on_a_sparse_jacobian(ip):
    result = ip.run_cell("%%vjp\n" + STENCIL_CELL + "y.backward(torch.ones_like(y))\n")
    assert result.success, result.error_in_exec
    assert result.result.inputs["x"].sparse is not None


def test_magic_check_on_a_sparse_jacobian(ip):
    result = ip.run_cell("%%vjp --check x\n" + STENCIL_CELL
                         + "v = torch.zeros_like(y)\nv[3] = 1.\ny.backward(v)\n")
    assert result.success, result.error_in_exec


def test_check_grades_an_answer_for_a_sparse_jacobian():
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    y = F.pad(x, (1, 1))[2:] + x ** 2
    answer = torch.autograd.grad(y.sum(), x, retain_graph=True)[0]
    assert vjp_magic.check(answer, y, x).correct is False  # a sum of rows, not the derivatives


# -- sparse Hessians -------------------------------------------------------------------------
class Square(torch.autograd.Function):
    """x² with a twice-differentiable backward the rules cannot read."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return t * t

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return 2 * t * g


def _maxpool_energy(x, square):
    return (F.max_pool1d(x[None, None], 3, 2) ** 3).sum()


def _relu_coupling(x, square):
    return (F.relu(x) * x.roll(1)).sum() + (x ** 4).sum()


def _custom_coupling(x, square):
    return (square(x) * x.roll(1)).sum()


def _abs_kinks(x, square):
    return (x.abs() * x.roll(2)).sum() + (x ** 3).sum()


HESSIANS = {"max_pool (observed)": _maxpool_energy, "relu (observed)": _relu_coupling,
            "custom Function": _custom_coupling, "abs at its kinks": _abs_kinks}


@pytest.mark.parametrize("case", list(HESSIANS))
def test_sparse_hessian_equals_torch_func_hessian(case):
    f = HESSIANS[case]
    x = torch.randn(2048, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[::3] = 0.  # kinks of abs and relu exactly at this x
    expected = torch.func.hessian(lambda t: f(t, lambda s: s * s))(x)
    x.requires_grad_(True)
    h = vjp_magic.hessian(f(x, Square.apply), x, seed=0)
    assert h.inputs["x"].sparse is not None
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(), expected)
    assert x.grad is None


# -- user mistakes ---------------------------------------------------------------------------
@pytest.mark.parametrize("api", [
    "differentiate",
    "sparse_jacobian",
    "hessian"])
def test_an_input_modified_in_place_after_the_output_gets_a_usage_error(api):
    x = torch.randn(2048, dtype=torch.float64, requires_grad=True)
    y = _stencil(x)
    with torch.no_grad():
        x.add_(1.)
    call = {"differentiate": lambda: vjp_magic.differentiate(y, x, seed=0),
            "sparse_jacobian": lambda: vjp_magic.sparse_jacobian(y, x, seed=0),
            "hessian": lambda: vjp_magic.hessian((y ** 2).sum(), x, seed=0)}[api]
    with pytest.raises(vjp_magic.VJPUsageError):
        call()


# -- per-sample rules (run/expanded.py) through %%vjp ------------------------------------------
PER_SAMPLE = {
    "a Linear applied twice (tied)": (
        "lin = torch.nn.Linear(5, 5).double()\nX = torch.randn(6, 5, dtype=torch.float64)\n"
        "t = torch.randint(0, 5, (6,))\n",
        "losses = F.cross_entropy(lin(torch.tanh(lin(X))), t, reduction='none')"),
    "sequence-first, T == B": (
        "lin = torch.nn.Linear(5, 3).double()\nX = torch.randn(6, 6, 5, dtype=torch.float64)\n",
        "losses = (lin(X) ** 2).mean((0, 2))"),
    "the batch transposed in": (
        "lin = torch.nn.Linear(6, 3).double()\nX = torch.randn(6, 6, dtype=torch.float64)\n",
        "losses = (lin(X.t()) ** 2).mean(1)"),
    "samples mixed by a roll": (
        "lin = torch.nn.Linear(5, 3).double()\nX = torch.randn(6, 5, dtype=torch.float64)\n",
        "h = lin(X)\nlosses = (h * h.roll(1, 0)).mean(1)"),
}


@pytest.mark.parametrize("case", list(PER_SAMPLE))
def test_per_sample_jacobians_equal_a_loop_of_backward_passes(ip, run_ok, case):
    setup, body = PER_SAMPLE[case]
    run_ok("import torch.nn.functional as F\ntorch.manual_seed(0)\n" + setup)
    r = run_ok("%%vjp --of losses --wrt lin\n" + body)
    losses, params = ip.user_ns["losses"], dict(ip.user_ns["lin"].named_parameters())
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
            for b in range(losses.shape[0])]
    for i, name in enumerate(params):
        expected = torch.stack([row[i] for row in rows])
        torch.testing.assert_close(r.jacobian(f"lin.{name}").reshape(expected.shape), expected)
        assert params[name].grad is None


# -- the coloured gradient vectors, and %hessian -----------------------------------------------
@pytest.mark.parametrize("case", ["roll 2-D negative shifts", "reflect pad 2-D", "kron"])
def test_coloured_vectors_cover_each_entry_once_and_read_disjoint_inputs(case):
    f, shape = OPS[case]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = f(x)
    r = vjp_magic.differentiate(y, x, seed=0, exact_up_to=0)
    by_columns = r.inputs["x"].sparse.mode == "columns"  # tangents u, shaped like x
    cover = torch.stack([torch.as_tensor(v) for v in r.gradients["x"]])  # always like y
    assert cover.shape[1:] == y.shape and bool((cover.sum(0) == 1).all())
    vectors = torch.stack([torch.as_tensor(u) for u in r.tangents["x"]]) if by_columns \
        else cover
    assert vectors.shape[1:] == (x.shape if by_columns else y.shape)
    assert bool(((vectors == 0) | (vectors == 1)).all()) and bool((vectors.sum(0) == 1).all())
    jacobian = _reference(f, x)
    for v in vectors:  # rows of one colour never read the same entry of x (columns: the same
        picked = v.reshape(-1).bool()  # entry of y never reads two entries of one colour)
        held = jacobian[:, picked].t() if by_columns else jacobian[picked]
        assert bool(((held != 0).sum(0) <= 1).all())


def test_hessian_magic_on_a_banded_expression_fires_no_hook(ip, run_ok):
    run_ok("x = torch.randn(2048, dtype=torch.float64, requires_grad=True)\ncalls = []\n"
           "x.register_hook(lambda g: calls.append(1))\nstate = torch.get_rng_state()")
    h = run_ok("%hessian (x[:-2] * x[2:]).sum() + torch.sin(x).sum() wrt x")
    x = ip.user_ns["x"]
    expected = torch.func.hessian(
        lambda t: (t[:-2] * t[2:]).sum() + torch.sin(t).sum())(x.detach())
    assert h.inputs["x"].sparse is not None
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(), expected)
    assert ip.user_ns["calls"] == [] and x.grad is None
    assert torch.equal(torch.get_rng_state(), ip.user_ns["state"])
