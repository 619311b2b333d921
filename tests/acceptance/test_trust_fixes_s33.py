"""Trust fixes, session 33 (T5): the class of each fix, beyond the example that found it.

1. A non-finite entry autograd gives outside the pattern the graph PROVES is a 0·inf artefact
   (a zero seed or tangent met by sqrt's infinite derivative at 0), not a derivative: y[i]
   reads no x[j] there, so d y[i] / d x[j] = 0 (core/validation.outside_proved_zeroed). An
   observed pattern proves nothing, so nothing is changed under it; inside the pattern NaN and
   inf stay.

Expected values: mathematics, by the twin reasoning of
tests/acceptance/test_adversary_s31_dependency.py: where both modes (torch.func.jacrev,
jacfwd) read NaN or inf, a twin of the input with its zeros made positive has the same
dependences, and where the twin's finite Jacobian is 0 so is the derivative.
"""
from __future__ import annotations

import math

import pytest
import torch

import vjp_magic
from vjp_magic.core.pairing import Evidence
from vjp_magic.core.pattern import Pattern
from vjp_magic.core.validation import outside_proved_zeroed

def _mathematics(f, x: torch.Tensor) -> torch.Tensor:
    """The Jacobian of f at x: reverse mode's NaN filled from forward mode, and every entry
    still non-finite where a twin (x's zeros made 0.5) has a finite 0 set to 0."""
    reverse, forward = torch.func.jacrev(f)(x), torch.func.jacfwd(f)(x)
    jacobian = torch.where(reverse.isnan(), forward, reverse)
    twin = torch.where(x == 0, torch.full_like(x, 0.5), x)
    support = torch.func.jacrev(f)(twin) != 0
    return torch.where(jacobian.isfinite() | support, jacobian, torch.zeros((), dtype=x.dtype))


def _zeros_every_seventh(n: int, dtype) -> torch.Tensor:
    x = torch.rand(n, dtype=dtype, generator=torch.Generator().manual_seed(0)) + 0.25
    x[::7] = 0
    return x


def _running_sum(t):
    """y[i] = Σ_{k ≤ i} t[k-1]·sqrt(t[k]): row i reads x[:i+1] (and x[-1]); more than an
    eighth of x per row, where the colouring's proved pattern stops (``dense=True`` reads on)."""
    return torch.cumsum(t.roll(1) * t.sqrt(), 0)


def _neighbours(t):
    return t.roll(1) * t.sqrt()


CASES = {"neighbours": _neighbours, "running sum": _running_sum}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_sparse_jacobian_has_no_artefact_outside_the_proved_pattern(case, dtype):
    f = CASES[case]
    x = _zeros_every_seventh(60, dtype)
    expected = _mathematics(f, x)
    assert bool(expected.isinf().any())  # the non-finite entries inside stay
    x.requires_grad_()
    got = vjp_magic.sparse_jacobian(f(x), x, seed=0).to_dense()
    torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_dependency_reads_no_artefact_outside_the_proved_pattern(case, dtype):
    f = CASES[case]
    x = _zeros_every_seventh(60, dtype)
    expected = _mathematics(f, x) != 0
    x.requires_grad_()
    d = vjp_magic.dependency(f(x), x, seed=0)
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    assert torch.equal(pattern.bool(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_differentiate_has_no_artefact_outside_the_proved_pattern(case, dtype):
    f = CASES[case]
    x = _zeros_every_seventh(60, dtype)
    expected = _mathematics(f, x)
    x.requires_grad_()
    r = vjp_magic.differentiate(f(x), x, seed=0)
    torch.testing.assert_close(r.jacobian("x"), expected, equal_nan=True)
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), expected,
                               equal_nan=True)
    d = r.dependency("x")
    assert torch.equal(d.pattern.bool() if d.pattern.layout == torch.strided
                       else d.pattern.to_dense().bool(), expected != 0)
    assert not [n for n in r.notes if "NaN" in n]  # only the infinite entries are noted


def test_hessian_has_no_artefact_outside_the_proved_pattern():
    x = _zeros_every_seventh(60, torch.float64)
    s = lambda t: _running_sum(t).sum()  # noqa: E731
    hessian = torch.func.hessian(s)
    twin = torch.where(x == 0, torch.full_like(x, 0.5), x)
    support = hessian(twin) != 0
    x.requires_grad_()
    H = vjp_magic.hessian(s(x), x).hessian("x")
    assert torch.equal(H[~support], torch.zeros_like(H[~support]))
    expected = hessian(x.detach())
    finite = expected.isfinite()
    torch.testing.assert_close(H[finite], expected[finite])


def test_a_magic_shows_no_artefact_outside_the_proved_pattern(run_vjp):
    """%%vjp's result and display: 0 outside the band, and only infinite entries noted."""
    r = run_vjp("x = torch.rand(40, dtype=torch.float64) + 0.25\n"
                "x[::7] = 0\n"
                "x.requires_grad_()\n"
                "y = x.roll(1) * x.sqrt()\n")
    i = torch.arange(40)
    band = torch.zeros(40, 40, dtype=torch.bool)
    band[i, i] = band[i, (i - 1) % 40] = True
    J = r.jacobian("x")
    assert torch.equal(J[~band], torch.zeros_like(J[~band]))
    shown = r._repr_mimebundle_()["text/plain"]
    assert "NaN" not in shown and "inf" in shown.lower()


# -- the rule itself, on hand-made patterns ------------------------------------------------

def _pattern(evidence) -> Pattern:
    """Row 0 reads column 0, row 1 reads columns 1 and 2 (a 2 x 3 Jacobian)."""
    return Pattern(torch.tensor([0, 1, 3]), torch.tensor([0, 1, 2]), (2, 3), 0, evidence)


def test_only_non_finite_entries_outside_a_proved_pattern_become_zero():
    nan, inf = float("nan"), float("inf")
    jacobian = torch.tensor([[nan, inf, 5.0], [nan, -inf, nan]])
    got = outside_proved_zeroed(jacobian, _pattern(Evidence.PROVED))
    # outside: (0, 1) inf -> 0, (0, 2) a finite 5 stays (no artefact: a rule's bug would
    # show), (1, 0) NaN -> 0; inside: NaN at (0, 0), -inf at (1, 1), NaN at (1, 2) stay
    expected = torch.tensor([[nan, 0.0, 5.0], [0.0, -inf, nan]])
    torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize("pattern", [None, _pattern(Evidence.OBSERVED)])
def test_an_observed_or_missing_pattern_changes_nothing(pattern):
    jacobian = torch.tensor([[float("nan"), float("nan"), 1.0], [float("nan")] * 3])
    assert outside_proved_zeroed(jacobian, pattern) is jacobian


def test_a_custom_function_leaves_its_nan_as_both_modes_read_them():
    """Guard: a custom autograd.Function has no index-map rule, so no pattern is proved and
    both modes' NaN stay (said as NaN, never silently 0)."""
    class Root(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t.sqrt()

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            return g / (2 * t.sqrt())

    x = _zeros_every_seventh(60, torch.float64).requires_grad_()
    y = x.roll(1) * Root.apply(x)
    got = vjp_magic.sparse_jacobian(y, x, seed=0).to_dense()
    assert bool(got[0, 7].isnan())  # 0·inf here too, but nothing proves y[0] skips x[7]


# -- 2. second derivatives through a custom Function whose backward builds no graph ----------
# (G9's test_hessian_through_a_backward_without_a_graph_is_never_zero, the class: whatever else
# the output holds, whichever path the Hessian takes.)

def _cube(how: str):
    """x³ as a custom Function whose backward reads its saved x ``how``."""
    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t**3

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            if how == "numpy":
                return g * torch.from_numpy(3 * t.detach().numpy() ** 2)
            if how == "detach":
                return g * 3 * t.detach() ** 2
            return g * 3 * t**2  # torch operations: a graph for second derivatives
    return Cube


@pytest.mark.parametrize("n", [5, 2048])  # the dense path, and the sparse one (SPARSE_FROM)
@pytest.mark.parametrize("how", ["numpy", "detach"])
@pytest.mark.parametrize("beside", ["alone", "plus x²", "times x"])
def test_a_backward_without_a_graph_is_refused_whatever_else_the_output_holds(how, beside, n):
    """Beside a term with a graph (x²: D requires grad) the Hessian read 2 where it is
    2 + 6x; times x, D's graph reaches x through the incoming gradient only."""
    x = torch.linspace(-1, 1, n, dtype=torch.float64, requires_grad=True)
    c = _cube(how).apply(x)
    s = {"alone": c.sum(), "plus x²": c.sum() + (x**2).sum(), "times x": (c * x).sum()}[beside]
    with pytest.raises(vjp_magic.VJPUsageError, match="Cube.*without a graph"):
        vjp_magic.hessian(s, x)


def _exp_saving_its_output():
    class Exp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            y = t.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return g * y
    return Exp


class _Doubled(torch.autograd.Function):
    """2x, saving nothing: linear, its second derivatives 0 as autograd reads them."""

    @staticmethod
    def forward(ctx, t):
        return 2 * t

    @staticmethod
    def backward(ctx, g):
        return 2 * g


@pytest.mark.parametrize("case", ["cube in torch ops", "exp saving its output", "linear"])
def test_a_backward_with_a_graph_or_nothing_saved_is_differentiated(case):
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    f, expected = {
        "cube in torch ops": (lambda t: _cube("torch").apply(t).sum(), torch.diag(6 * x.detach())),
        "exp saving its output": (lambda t: _exp_saving_its_output().apply(t).sum(),
                                  torch.diag(x.detach().exp())),
        "linear": (lambda t: (_Doubled.apply(t) * t).sum(), 4 * torch.eye(5, dtype=torch.float64)),
    }[case]
    H = vjp_magic.hessian(f(x), x).hessian("x")
    torch.testing.assert_close(H, expected)


# -- 3. grading one full Jacobian per input, the inputs of one shape -------------------------
# (G9's test_a_full_jacobian_per_input_of_one_shape_is_correct, the class: any count of
# inputs, any rank; a stacked answer that fits one input's form still reads as stacked.)

@pytest.mark.parametrize("shape", [(3,), (2, 2)])
def test_one_full_jacobian_per_input_of_three_inputs_of_one_shape(shape):
    a, b, c = (torch.arange(1., 5.)[:math.prod(shape)].reshape(shape).double() + k
               for k in (0, 10, 20))
    for t in (a, b, c):
        t.requires_grad_()
    y = a * b * c
    eye = torch.eye(math.prod(shape), dtype=torch.float64).reshape(shape + shape)
    jacobian = {n: eye * (p * q).detach().reshape(shape + (1,) * len(shape))
                for n, p, q in (("a", b, c), ("b", a, c), ("c", a, b))}
    verdict = vjp_magic.check([jacobian["a"], jacobian["b"], jacobian["c"]], y,
                              {"a": a, "b": b, "c": c})
    assert verdict.correct, verdict.headline
    swapped = vjp_magic.check([jacobian["b"], jacobian["a"], jacobian["c"]], y,
                              {"a": a, "b": b, "c": c})
    assert not swapped.correct


# -- 4. 0·inf of another component's branch at a point -----------------------------------------
# (G9's test_a_components_derivative_is_not_nan_where_another_component_is_infinite, the class:
# rows of several entries, float32, and second derivatives at points.) Reverse mode sends
# v = 0 into the other components' branches; forward mode carries x's tangent, and reads NaN
# there only where the derivative is NaN (core/derivatives.forward_at_points).

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_derivatives_of_rows_beside_an_infinite_component(dtype):
    """Rows (a, b) -> (1/a, 5b + a²b): d(5b + a²b)/da = 2ab is 0 at a = 0, d/db = 5 + a²."""
    x = torch.tensor([[0., 1.], [2., 3.], [4., 0.]], dtype=dtype, requires_grad=True)
    a, b = x.detach()[:, 0], x.detach()[:, 1]
    y = torch.stack([1 / x[:, 0], 5 * x[:, 1] + x[:, 0] ** 2 * x[:, 1]], 1)
    r = vjp_magic.differentiate(y, x)
    assert r.point_axes["x"] == ((0, 0),)
    expected = torch.stack([torch.stack([-1 / a**2, torch.zeros_like(a)], 1),
                            torch.stack([2 * a * b, 5 + a**2], 1)])
    torch.testing.assert_close(r.derivatives["x"], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_second_derivatives_at_points_beside_an_infinite_component(dtype):
    """stack([1/x, 5x²]): f_1'' = 2/x³ (inf at 0), f_2'' = 10 everywhere."""
    x = torch.tensor([0., 1., 2.], dtype=dtype, requires_grad=True)
    h = vjp_magic.hessian(torch.stack([1 / x, 5 * x**2]), x)
    expected = torch.stack([2 / x.detach() ** 3, torch.full_like(x.detach(), 10.)])
    torch.testing.assert_close(h.derivatives["x"], expected)


# -- 5. autocast and anomaly mode around the analysis ------------------------------------------
# (G9's test_analysis_called_inside_autocast_keeps_float32 and
# test_overlapping_analyses_in_two_threads_leave_anomaly_mode_on, the class: every entry point,
# the modes as the user left them afterwards, an analysis that fails.)

_M = torch.tensor([[1.001, 0.5, 0.], [0., 1., 0.], [0., 0., 1.]])  # 1.001 is 1 in bfloat16


@pytest.mark.parametrize("api", ["dependency", "check", "jacobian of a result"])
def test_every_entry_point_keeps_float32_inside_autocast(api):
    x = torch.tensor([1., 2., 3.], requires_grad=True)
    y = x @ _M
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if api == "dependency":
            got = vjp_magic.dependency(y * 1e-3 + x.roll(1) * 0, x).pattern
            assert torch.equal(got.to_dense() if got.layout != torch.strided else got,
                               _M.T != 0)
        elif api == "check":
            assert vjp_magic.check(_M.T, y, x).correct
            assert not vjp_magic.check(torch.tensor([[1., 0, 0], [0.5, 1, 0], [0, 0, 1]]),
                                       y, x).correct  # the 1.001 read as 1 is wrong
        else:
            torch.testing.assert_close(vjp_magic.differentiate(y, x).jacobian("x"), _M.T)
        assert torch.is_autocast_enabled("cpu")  # the user's autocast, back after each call


def test_a_magic_keeps_float32_inside_autocast(ip, run_ok):
    run_ok("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
           "M = torch.tensor([[1.001, 0.5, 0.], [0., 1., 0.], [0., 0., 1.]])\n"
           "y = x @ M")
    run_ok("ctx = torch.autocast('cpu', dtype=torch.bfloat16); ctx.__enter__()")
    try:
        r = run_ok("%jacobian y x")
    finally:
        run_ok("ctx.__exit__(None, None, None)")
    torch.testing.assert_close(r.jacobian("x"), _M.T)


def test_anomaly_mode_is_back_after_nested_and_failed_analyses():
    before = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(True)
    try:
        x = torch.tensor([0., 1., 2.], dtype=torch.float64, requires_grad=True)
        vjp_magic.hessian((x.sqrt() * x).sum(), x)  # the analysis inside the Hessian's
        assert torch.is_anomaly_enabled()
        with pytest.raises(vjp_magic.VJPUsageError):
            vjp_magic.differentiate(x.detach() * 2, x)  # refused: no graph to x
        assert torch.is_anomaly_enabled()
    finally:
        torch.autograd.set_detect_anomaly(before)


# -- 6. 0-d tensors through the proved pattern's lattice --------------------------------------
# (G9's test_sparse_jacobian_of_a_scalar_input, the class: a 0-d input or output wherever
# the offsets walk proves a pattern: core/pattern._lattice_of had no axis to read.)

_ZERO_D = {
    "x²": (lambda t: t**2, ()),
    "a scalar broadcast then summed up": (lambda t: (t * torch.ones(40)).cumsum(0), ()),
    "a 0-d output of a vector": (lambda t: t.sum() * t[3], (40,)),
    "a 0-d output of an entry": (lambda t: t[3] * 2, (40,)),
}


@pytest.mark.parametrize("case", list(_ZERO_D))
def test_sparse_jacobian_with_a_0d_tensor(case):
    f, shape = _ZERO_D[case]
    x = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) + 1).requires_grad_()
    expected = torch.autograd.functional.jacobian(f, x.detach())
    y = f(x)
    got = vjp_magic.sparse_jacobian(y, x).to_dense()
    torch.testing.assert_close(got, expected.reshape(max(y.numel(), 1), max(x.numel(), 1)))


# -- 7. the global default device ----------------------------------------------------------
# (G9's test_entry_points_under_another_default_device, the class: every entry point, the
# user's default intact after each call, and a function handed to differentiate still runs
# under it.) "meta" stands for another device on a machine without one.

@pytest.fixture
def default_meta():
    torch.set_default_device("meta")
    yield
    torch.set_default_device(None)


def _neighbours_product(t):
    return t.sin() * t.roll(1)


@pytest.mark.parametrize("api", ["sparse_jacobian", "dependency"])
def test_entry_points_without_user_code_under_another_default_device(default_meta, api):
    with torch.device("cpu"):
        x = torch.linspace(-1, 1, 40, requires_grad=True)
        expected = torch.autograd.functional.jacobian(_neighbours_product, x.detach())
    y = _neighbours_product(x)
    if api == "sparse_jacobian":
        torch.testing.assert_close(vjp_magic.sparse_jacobian(y, x).to_dense(), expected)
    else:
        d = vjp_magic.dependency(y, x)
        got = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
        assert torch.equal(got, expected != 0)
    assert torch.get_default_device().type == "meta"


def test_a_function_handed_to_differentiate_runs_under_the_users_default_device(default_meta):
    seen = []

    with torch.device("cpu"):
        x = torch.linspace(-1, 1, 6, requires_grad=True)
        expected = torch.autograd.functional.jacobian(_neighbours_product, x.detach())

    def f():
        seen.append(torch.get_default_device().type)
        return _neighbours_product(x)

    r = vjp_magic.differentiate(f, x)
    assert seen == ["meta"]  # the user's code, under the user's default
    torch.testing.assert_close(r.jacobian("x"), expected)
    assert torch.get_default_device().type == "meta"


def test_a_magic_under_another_default_device(ip, run_ok):
    run_ok("x = torch.linspace(-1, 1, 6, device='cpu', requires_grad=True)\n"
           "y = x.sin() * x.roll(1)")
    run_ok("torch.set_default_device('meta')")
    try:
        r = run_ok("%jacobian y x")
    finally:
        run_ok("torch.set_default_device(None)")
    x = ip.user_ns["x"].detach()
    torch.testing.assert_close(r.jacobian("x"), torch.autograd.functional.jacobian(
        _neighbours_product, x))


# -- 8. the input itself as the output of dependency ------------------------------------------
# (G9's test_dependency_of_the_input_itself, the class: any two axes, one held sparsely.)

@pytest.mark.parametrize("axes, expected", [((0, 0), torch.eye(3, dtype=torch.bool)),
                                            ((1, 1), torch.eye(4, dtype=torch.bool)),
                                            ((0, 1), torch.ones(3, 4, dtype=torch.bool))])
def test_dependency_of_the_input_itself_along_any_axes(axes, expected):
    """y = x: y[i, k] reads x[i, k] only, so along one axis i reads i; along two, every
    (i, k) pair meets in the entry [i, k]."""
    x = torch.rand(3, 4, requires_grad=True)
    d = vjp_magic.dependency(x, x, *axes)
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    assert torch.equal(pattern, expected)


def test_dependency_of_a_large_input_itself_is_held_sparsely():
    x = torch.rand(100_000, requires_grad=True)
    d = vjp_magic.dependency(x, x, memory_budget=10**6)
    assert d.kind == "independent"
    assert d.pattern.layout == torch.sparse_csr and d.pattern.values().numel() == 100_000


# -- 9. grading on a live graph with retain_grad() tensors -------------------------------------
# (G9's test_grading_a_wrong_answer_leaves_a_retained_grad_alone, the class: float32 too,
# several retained tensors, an input given by name.)

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grading_a_wrong_answer_leaves_every_retained_grad_as_a_plain_run(dtype):
    x = torch.linspace(-1, 1, 5, dtype=dtype, requires_grad=True)
    h = torch.sin(x)
    h.retain_grad()
    g = h * 3
    g.retain_grad()
    y = g**2
    assert not vjp_magic.check(torch.ones(5, 5, dtype=dtype), y, {"x": x}).correct
    assert h.grad is None and g.grad is None and x.grad is None


# -- 10. the user's profiler around an analysis of a custom Function ---------------------------
# (G9's test_a_custom_function_leaves_the_users_profiler_running, the class: every entry
# point whose passes run under core/reentrant's guard.)

class _CubeInTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return t**3

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return g * 3 * t**2


@pytest.mark.parametrize("api", ["sparse_jacobian", "dependency", "hessian"])
def test_every_entry_point_leaves_the_users_profiler_running(api):
    import cProfile
    import sys

    x = torch.linspace(-1, 1, 50, dtype=torch.float64, requires_grad=True)
    y = _CubeInTorch.apply(x) * x.roll(1)
    call = {"sparse_jacobian": lambda: vjp_magic.sparse_jacobian(y, x),
            "dependency": lambda: vjp_magic.dependency(y, x),
            "hessian": lambda: vjp_magic.hessian(y.sum(), x)}[api]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        call()
        still = sys.getprofile()
    finally:
        profiler.disable()
    assert still is profiler


# -- 11. a point's own second derivative beside a larger one -----------------------------------
# (G9's test_a_points_own_second_derivative_never_reads_near_zero, the class: float64, and
# components at points: each entry is one point's own f'', nothing of another point sums in.)

def _shows_near_zero(result) -> bool:
    bundle = result._repr_mimebundle_()
    return r"\approx 0" in bundle["text/markdown"] or "≈0" in bundle["text/plain"]


@pytest.mark.parametrize("dtype, big", [(torch.float64, 1e16), (torch.float32, 1e7)])
def test_second_derivatives_at_points_of_three_components_never_read_near_zero(dtype, big):
    x = torch.tensor([big, 1., 3.], dtype=dtype, requires_grad=True)
    h = vjp_magic.hessian(torch.stack([x**3, x.sin() * 0 + 5 * x**2, -x**2]), x)
    expected = torch.stack([6 * x.detach(), torch.full((3,), 10., dtype=dtype),
                            torch.full((3,), -2., dtype=dtype)])
    torch.testing.assert_close(h.derivatives["x"], expected)
    assert not _shows_near_zero(h)


# -- 12. an output of another dtype than its input ----------------------------------------------
# (G9's test_a_float32_input_copied_into_a_float64_buffer, the class: both directions of
# the cast, by copy_, a slice write or .to, dense and at points.)

def _into_buffer(x, dtype, how):
    if how == "copy_":
        y = torch.zeros(x.shape, dtype=dtype)
        y.copy_(x)
        return y * 3
    if how == "slice write":
        y = torch.zeros(x.shape, dtype=dtype)
        y[:] = x * 3
        return y
    return x.to(dtype) * 3


@pytest.mark.parametrize("how", ["copy_", "slice write", ".to"])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_an_output_of_another_dtype_than_its_input(dtypes, how):
    into, out = dtypes
    x = torch.linspace(-1, 1, 6, dtype=into, requires_grad=True)
    r = vjp_magic.differentiate(_into_buffer(x, out, how), x)
    torch.testing.assert_close(r.jacobian("x"), 3 * torch.eye(6, dtype=into), check_dtype=False)


# -- 13. a custom backward whose second derivatives are 0 indeed -------------------------------
# (the other side of section 2: a mask read off the saved x, or its shape only, builds no
# graph either, and is no graph cut: refusing those would refuse ReLU-like and
# straight-through functions whose Hessian autograd gives rightly.)

def _masked(how: str):
    class Masked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t.clamp(-1, 1) if how == "hard tanh" else t.round()

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            if how == "hard tanh":
                return g * (t.abs() <= 1).to(g.dtype)  # the mask: piecewise linear
            if how == "data":
                return g * 3 * t.data ** 2  # .data: a graph cut, as .detach()
            return g * torch.ones_like(t)  # straight-through: the shape only
    return Masked


@pytest.mark.parametrize("how", ["hard tanh", "straight-through"])
def test_a_mask_or_the_shape_of_what_it_saved_is_differentiated(how):
    x = torch.linspace(-2, 2, 5, dtype=torch.float64, requires_grad=True)
    H = vjp_magic.hessian((_masked(how).apply(x) * x).sum(), x).hessian("x")
    # d/dx [x * m(x)] = m(x) + x * m'(x) (autograd: m' from the backward); again: 2 m'(x),
    # with m' the mask (hard tanh) or 1 (straight-through)
    mask = (x.detach().abs() <= 1).double() if how == "hard tanh" else torch.ones(5).double()
    torch.testing.assert_close(H, torch.diag(2 * mask))


def test_a_read_through_data_is_refused():
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="without a graph"):
        vjp_magic.hessian(_masked("data").apply(x).sum(), x)


# -- 14. NaN artefacts where the dense Jacobian is over the memory budget ---------------------
# (section 1's class past the budget: with a proved pattern the exact values are read row
# chunk by row chunk, the pattern's entries only; it refused 'No sparsity pattern paid off'.)

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_artefacts_over_the_budget_with_a_proved_pattern(dtype):
    x = _zeros_every_seventh(1200, dtype)
    f = _neighbours
    x.requires_grad_()
    y = f(x)
    got = vjp_magic.sparse_jacobian(y, x, memory_budget=1e7, seed=0)  # dense: 23 MB, 11.5 MB
    i = torch.arange(1200)
    a, b = x.detach(), x.detach().roll(1)
    expected = torch.zeros(1200, 1200, dtype=dtype)
    expected[i, i] = b / (2 * a.sqrt())  # d(x[i-1] sqrt(x[i]))/dx[i]: inf at the zeros
    expected[i, (i - 1) % 1200] = a.sqrt()
    torch.testing.assert_close(got.to_dense(), expected)
    d = vjp_magic.dependency(y, x, memory_budget=1e7, seed=0)
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    assert torch.equal(pattern, expected != 0)
