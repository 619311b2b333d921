"""Adversarial review, session 39 (G29), of this session's own changes: the zeros notes of
dependency verdicts (G28-4's fix), zero notes grouped per cause (G28-2's fix), the sparse
picture's title and hidden nonzeros (G27-3's fix), the faster elementwise probe path through a
custom ``autograd.Function`` and the per-sample rule's kept vᵀD.

Strict xfails are findings (their reasons say what is wrong, ``G29-n``); unmarked tests held
and guard it. Expected patterns and values come from ``torch.autograd.functional.jacobian``
(float64 where a float32 verdict is judged), a loop of ``torch.autograd.grad`` or mathematics.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _axis0_pattern(f, x):
    """Which y[i] read which x[j] along axis 0: the nonzero pattern of jacobian(f, x)."""
    n, rest = x.shape[0], x[0].numel()
    j = torch.autograd.functional.jacobian(f, x.detach()).reshape(n, rest, n, rest)
    return j.ne(0).any(3).any(1)


# --------------------------------------------------------------------------------------------
# Zeros notes: a verdict smaller than what the graph allows says it holds at this x only
# --------------------------------------------------------------------------------------------

def _saturated(x):
    return torch.tanh(30 * x) + 0.3 * torch.tanh(30 * x.roll(1, 0))


def _dead(x):
    return torch.relu(x - 100) + 0.3 * torch.relu(x.roll(1, 0) - 100)


def _far_from_zero(n):
    x = torch.randn(n, 3, generator=_gen(0), dtype=torch.float64) * 5
    x[x.abs() < 1] = 3.0  # tanh(30 x) saturated everywhere: 1 - tanh² rounds to 0
    return x.float().requires_grad_(True)


@pytest.mark.parametrize("f", [_saturated, _dead])
def test_an_all_zero_verdict_held_densely_has_its_note(f):
    x = _far_from_zero(256)
    d = vjp_magic.dependency(f(x), x)
    assert not d.pattern.any()
    assert d.kind == "independent" and d.note is not None and "at this x" in d.note


@pytest.mark.parametrize("f", [_saturated, _dead])
def test_an_all_zero_verdict_held_sparsely_has_its_note(f):
    x = _far_from_zero(256)
    d = vjp_magic.dependency(f(x), x, memory_budget=50_000)
    assert d.pattern.layout == torch.sparse_csr
    assert d.pattern.to_dense().sum() == 0  # every derivative is 0 at this x
    assert d.kind != "independent" or d.note is not None


def test_an_all_zero_verdict_read_off_a_result_has_its_note():
    x = torch.randn(8, 3, generator=_gen(0), dtype=torch.float64).requires_grad_(True)
    direct = vjp_magic.dependency(_dead(x), x)
    assert direct.kind == "independent" and direct.note is not None
    r = vjp_magic.differentiate(_dead(x), x, names=["x"], output_name="y")
    assert not r.derivatives["x"].any()  # relu' = 0 below 0 (mathematics)
    d = r.dependency("x")
    assert d.kind != "independent" or d.note is not None, (d.kind, d.evidence)


def _leak(t):
    return t**2 + 0.3 * torch.tanh(30 * t.roll(1, 0))


def _wrap_hidden_in_float32(n):
    """x where every y[i] (i ≥ 1) reads x[i-1] (x[:, 0] near 0: tanh live) and y[0]'s read of
    x[n-1] (all 0.45: tanh(13.5)) is 0 in float32 but not in float64 (1 - tanh² ≈ 7.5e-12)."""
    x64 = torch.full((n, 3), 2.0, dtype=torch.float64)
    x64[:, 0] = 0.01
    x64[n - 1, :] = 0.45
    return x64


@pytest.mark.parametrize("n", [
    8, 32,
    64, 200,  # G29-2 (fixed): the probed path compares against the graph's bound too
])
def test_a_wrap_read_hidden_by_float32_is_named(n):
    x64 = _wrap_hidden_in_float32(n)
    assert _axis0_pattern(_leak, x64)[0, n - 1]  # float64: y[0] reads x[n-1]
    assert not _axis0_pattern(_leak, x64.float())[0, n - 1]  # float32 rounds it to 0
    x = x64.float().requires_grad_(True)
    d = vjp_magic.dependency(_leak(x), x)
    assert not bool(d.pattern[0, n - 1])
    assert d.note is not None and f"y[0] read x[{n - 1}]" in d.note, (d.kind, d.note)


def _mask(n, dtype):
    mask = torch.ones(n, 1, dtype=dtype)
    mask[0] = 0  # a shift with zero fill, spelled with roll: the wrap is masked off
    return mask


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_shift_spelled_with_pad_has_no_zeros_note(dtype):
    x = torch.randn(8, 3, generator=_gen(0), dtype=dtype).requires_grad_(True)
    d = vjp_magic.dependency(x**2 + F.pad(x[:-1], (0, 0, 1, 0)), x)
    assert d.kind == "band" and d.note is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spelling", ["roll * mask", "0 * roll", "roll - roll"])
def test_a_constant_zero_is_not_said_to_show_at_another_x(dtype, spelling):
    n = 8
    mask = _mask(n, dtype) if spelling == "roll * mask" else torch.zeros(n, 1, dtype=dtype)

    def f(t):
        if spelling == "roll - roll":  # the two paths cancel exactly: ∂y[i]/∂x[i-1] = 1 - 1
            return t**2 + (t.roll(1, 0) - t.roll(1, 0))
        return t**2 + t.roll(1, 0) * mask

    for seed in range(3):  # mathematics: ∂y[i]/∂x[i-1] = mask[i] whatever x is
        x64 = torch.randn(n, 3, generator=_gen(seed), dtype=torch.float64) * 10
        hidden = _axis0_pattern(f, x64.to(dtype)) & ~torch.eye(n, dtype=torch.bool)
        assert hidden.sum() == (mask != 0).sum()
    x = torch.randn(n, 3, generator=_gen(0), dtype=dtype).requires_grad_(True)
    d = vjp_magic.dependency(f(x), x)
    assert d.note is None or "at another x" not in d.note, d.note


# G29-3 (fixed) on the diagonal path too
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("spelling", ["x - x", "0 * x"])
def test_an_identically_zero_derivative_is_not_said_to_show_at_another_x(dtype, spelling):
    def f(t):
        return t - t if spelling == "x - x" else 0 * t

    for seed in range(3):  # mathematics: ∂y/∂x = 0 for every x
        x64 = torch.randn(8, 3, generator=_gen(seed), dtype=torch.float64) * 10
        assert not _axis0_pattern(f, x64).any()
    x = torch.randn(8, 3, generator=_gen(0), dtype=torch.float64).to(dtype)
    x.requires_grad_(True)
    d = vjp_magic.dependency(f(x), x)
    assert d.kind == "independent"
    assert d.note is None or "at another x" not in d.note, d.note


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_dead_relu_in_low_precision_says_at_this_x_with_its_dtype(dtype):
    x = torch.randn(8, 3, generator=_gen(0), dtype=torch.float64).to(dtype)
    x.requires_grad_(True)
    d = vjp_magic.dependency(torch.relu(x - 100), x)  # relu' = 0 below 0: at this x only
    assert d.kind == "independent" and d.note is not None and "at this x" in d.note
    assert (str(dtype).replace("torch.", "") in d.note) == (dtype != torch.float64)


def test_a_live_leak_on_axis_1_keeps_the_wrap_note_in_its_own_axis():
    """Axis 1 (a == b ≠ 0): the note indexes y[:, j] and x[:, j], the wrap it names reads 0."""
    x64 = torch.full((3, 8), 2.0, dtype=torch.float64)
    x64[0, :] = 0.01
    x64[:, 7] = 0.45

    def f(t):
        return t**2 + 0.3 * torch.tanh(30 * t.roll(1, 1))

    x = x64.float().requires_grad_(True)
    d = vjp_magic.dependency(f(x), x, 1, 1)
    jac = torch.autograd.functional.jacobian(f, x64.float()).reshape(3, 8, 3, 8)
    assert not jac[:, 0, :, 7].any() and jac[:, 1, :, 0].any()  # float32: wrap 0, shift live
    assert not bool(d.pattern[0, 7]) and bool(d.pattern[1, 0])
    assert d.note is not None and "y[:, 0] read x[:, 7]" in d.note, d.note


# --------------------------------------------------------------------------------------------
# Zero notes of a result, grouped per cause
# --------------------------------------------------------------------------------------------

def test_four_dead_and_two_stepped_inputs_read_as_two_notes_each_true():
    dead = [torch.tensor([-1.0 - k], requires_grad=True) for k in range(4)]
    stepped = [torch.tensor([0.4, 1.6], requires_grad=True) for _ in range(2)]
    y = sum(torch.relu(t) for t in dead) + torch.floor(stepped[0]) + torch.sign(stepped[1])
    names = ["a", "b", "c", "d", "p", "q"]
    r = vjp_magic.differentiate(y, dead + stepped, names=names, output_name="y")
    for k in names:  # mathematics: relu' = 0 below 0; floor' = sign' = 0
        assert not r.derivatives[k].any()
    notes = [n for n in r.notes if "Every derivative" in n]
    assert len(notes) == 2, notes  # a dead relu (at this point); a step (at every point)
    here = next(n for n in notes if "at this point" in n)
    assert "respect to a, b, " in here and "or d" in here and "floor" not in here
    every = next(n for n in notes if "every other" in n)
    assert "respect to p or q" in every and "floor" in every and "sign" in every


# --------------------------------------------------------------------------------------------
# The faster elementwise probe path through a custom Function: hidden couplings still found
# --------------------------------------------------------------------------------------------

def _coupled(to: int, source: int, what: str):
    """sin(x)·x² forward; backward adds 0.5·g[source] to x[to]'s gradient (flat indices):
    y[source] reads x[to] through backward only (a coupling no index map sees)."""

    class _Coupling(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x) * x**2

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            out = (g * (torch.cos(x) * x**2 + 2 * x * torch.sin(x))).reshape(-1).clone()
            out[to] = out[to] + 0.5 * g.reshape(-1)[source]
            return out.reshape(x.shape)

    _Coupling.__doc__ = what
    return _Coupling


_FarCoupling = _coupled(0, -1, "y[last] reads x[0]: a far coupling")
_RowCoupling = _coupled(7 * 200 + 3, 7 * 200 + 150,  # on a 200 × 200 x
                        "x[7, 3]'s gradient takes 0.5·g[7, 150]: a coupling inside one row "
                        "(equal on axis 0, off the points on axis 1 only)")


def _row(jac, i):
    crow, col, val = jac.crow_indices(), jac.col_indices(), jac.values()
    return dict(zip(col[crow[i]:crow[i + 1]].tolist(), val[crow[i]:crow[i + 1]].tolist()))


@pytest.mark.parametrize("shape, dtype", [((1000,), torch.float64),
                                          ((150, 150), torch.float32)])
def test_a_far_coupling_in_a_custom_backward_is_in_the_jacobian(shape, dtype):
    x = torch.randn(*shape, generator=_gen(0), dtype=dtype).requires_grad_(True)
    r = vjp_magic.differentiate(_FarCoupling.apply(x), x, names=["x"], output_name="y")
    n = x.numel()
    last = _row(r.jacobian("x", layout=torch.sparse_csr), n - 1)
    xl = x.detach().reshape(-1)[-1].double()
    own = float(torch.cos(xl) * xl**2 + 2 * xl * torch.sin(xl))  # mathematics
    assert set(last) == {0, n - 1}, sorted(last)[:5]
    assert last[0] == pytest.approx(0.5) and last[n - 1] == pytest.approx(own, rel=1e-5)
    assert x.grad is None


def test_a_coupling_inside_one_row_of_a_custom_backward_is_in_the_jacobian():
    x = torch.randn(200, 200, generator=_gen(1), dtype=torch.float64).requires_grad_(True)
    r = vjp_magic.differentiate(_RowCoupling.apply(x), x, names=["x"], output_name="y")
    jac = r.jacobian("x", layout=torch.sparse_csr)
    i = 7 * 200 + 150
    assert set(_row(jac, i)) == {7 * 200 + 3, i}
    assert _row(jac, i)[7 * 200 + 3] == pytest.approx(0.5)
    assert jac._nnz() == 200 * 200 + 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("how", ["far", "row"])
def test_custom_backward_couplings_in_low_precision_are_in_the_jacobian(dtype, how):
    shape, function = ((1000,), _FarCoupling) if how == "far" else ((200, 200), _RowCoupling)
    x = torch.randn(*shape, generator=_gen(0), dtype=dtype).requires_grad_(True)
    r = vjp_magic.differentiate(function.apply(x), x, names=["x"], output_name="y")
    jac = r.jacobian("x", layout=torch.sparse_csr)
    i, j = (x.numel() - 1, 0) if how == "far" else (7 * 200 + 150, 7 * 200 + 3)
    assert set(_row(jac, i)) == {i, j} and _row(jac, i)[j] == 0.5  # 0.5: exact in both
    xs = x.detach()  # the diagonal as the backward computes it in this dtype (mathematics)
    diagonal = torch.cos(xs) * xs**2 + 2 * xs * torch.sin(xs)
    assert jac._nnz() == int(diagonal.ne(0).sum()) + 1


# --------------------------------------------------------------------------------------------
# Per-sample rule's kept vᵀD: a tied and a reused Linear (D of one weight from two uses)
# --------------------------------------------------------------------------------------------

class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 3)
        self.b.weight = nn.Parameter(self.a.weight[:3].detach().clone())

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(torch.tanh(self.a(h)))  # a used twice: its D is a sum of two rules


class _Shared(nn.Module):
    """One Parameter object in two Linear calls and a third F.linear: D is three rules' sum."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = torch.tanh(F.linear(h, self.a.weight))
        return self.a(h)[:, :3]


@pytest.mark.parametrize("model", [_Tied, _Shared])
def test_per_sample_gradients_of_a_reused_linear_equal_the_loop(ip, run_ok, model):
    run_ok("import torch.nn.functional as F\ntorch.manual_seed(0)\n"
           "X = torch.randn(16, 5)\nt = torch.randint(0, 3, (16,))")
    torch.manual_seed(1)
    ip.user_ns["net"] = model()
    r = run_ok("%%vjp --wrt net\nlosses = F.cross_entropy(net(X), t, reduction='none')")
    net, x, t = ip.user_ns["net"], ip.user_ns["X"], ip.user_ns["t"]
    losses = F.cross_entropy(net(x), t, reduction="none")
    params = dict(net.named_parameters())
    for k, p in params.items():
        rows = torch.stack([torch.autograd.grad(losses[b], p, retain_graph=True)[0]
                            for b in range(16)])
        torch.testing.assert_close(r.derivatives["net." + k], rows, msg=k)
    assert all(p.grad is None for p in net.parameters())


# --------------------------------------------------------------------------------------------
# The sparse picture: its kind in the display's words, the nonzeros past its window counted
# --------------------------------------------------------------------------------------------

def test_a_cyclic_picture_names_the_wrap_and_fits_1024_by_768():
    pytest.importorskip("matplotlib")
    from vjp_magic.render.sparse_picture import sparse_picture
    n = 3000
    x = torch.randn(n, generator=_gen(0), dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(2 * x + x.roll(1) - x.roll(-1), x, names=["x"],
                                output_name="y")
    p = sparse_picture(r, "x")
    assert p.png is not None and p.width <= 1024 and p.height <= 768
    assert "cyclic tridiagonal" in p.alt
    # mathematics: rows 0..39 read i-1, i, i+1; only row 0's x[n-1] lies past column 159
    assert "1 nonzero lies in columns past 159" in p.alt, p.alt


@pytest.mark.parametrize("spelling, hidden", [
    ("band of five with wrap-around", 3),  # rows 0, 1 read x[n-2], x[n-1]: 2 + 1
    ("a read 1000 back", 40),  # every drawn row i < 40 reads x[i - 1000 mod n]
])
def test_the_picture_counts_the_nonzeros_past_its_columns(spelling, hidden):
    pytest.importorskip("matplotlib")
    from vjp_magic.render.sparse_picture import sparse_picture
    n = 3000
    x = torch.randn(n, generator=_gen(0), dtype=torch.float64, requires_grad=True)
    y = x + x.roll(1) + x.roll(2) + x.roll(-1) + x.roll(-2) if hidden == 3 else \
        x + x.roll(1000)
    p = sparse_picture(vjp_magic.differentiate(y, x, names=["x"], output_name="y"), "x")
    assert p.width <= 1024 and p.height <= 768
    assert f"{hidden} nonzeros lie in columns past 159, not drawn" in p.alt, p.alt


def test_the_new_paths_leave_x_grad_and_the_rng_alone():
    x = _far_from_zero(256)
    x.grad = torch.full_like(x, 7.0)
    state = torch.get_rng_state()
    vjp_magic.dependency(_saturated(x), x, memory_budget=50_000)  # the sparse path
    vjp_magic.dependency(_leak(x[:8]), x)  # the proved band with its note
    z = torch.randn(1000, generator=_gen(3), dtype=torch.float64, requires_grad=True)
    vjp_magic.differentiate(_FarCoupling.apply(z), z)  # the custom-Function probe path
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(x.grad, torch.full_like(x, 7.0)) and z.grad is None
