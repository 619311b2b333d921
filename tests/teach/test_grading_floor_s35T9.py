"""Each entry of an answer is judged against the magnitudes that sum into its own point,
never against the other points' (s35 T9, G15's finding 7): a large derivative elsewhere
excuses no wrong small one, on every grading path (check, assert_correct, ``--check``,
``--against``), in float32 and float64; and autograd's own rounding where terms cancel is
still no mistake. Expected numbers: mathematics (d/dx exp = exp, d/dx (x·w) = w, and
identities whose derivative is 0 or 1)."""
from __future__ import annotations

import pytest
import torch

import vjp_magic

DTYPES = [torch.float32, torch.float64]


def _exp(dtype):
    x = torch.linspace(-10, 10, 5, dtype=dtype).requires_grad_()
    right = torch.exp(x.detach())  # 4.5e-5 … 2.2e4
    wrong = right.clone()
    wrong[1] = 0  # 6.7e-3 left out
    return torch.exp(x), x, right, wrong


def _scaled(dtype):
    w = torch.tensor([1e-6, 1.0, 1e6, 3.0], dtype=dtype)
    x = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=dtype).requires_grad_()
    wrong = w.clone()
    wrong[0] = 2e-6
    return x * w, x, w, wrong


def _rows(dtype):  # two components per point: the point's own largest entry sets its scale
    x = torch.tensor([1e-3, 1.0, 1e3], dtype=dtype).requires_grad_()
    y = torch.stack([x ** 2, 3 * x])
    right = torch.stack([2 * x.detach(), torch.full_like(x.detach(), 3.0)])
    wrong = right.clone()
    wrong[1, 0] = 6.0  # 3 answered 6 at the smallest point, beside 2e3 at the largest
    return y, x, right, wrong


CASES = {"exp": _exp, "x*w": _scaled, "two components": _rows}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_check_judges_each_point_by_its_own_magnitudes(case, dtype):
    y, x, right, wrong = CASES[case](dtype)
    assert vjp_magic.check(right, y, x).correct
    assert not vjp_magic.check(wrong, y, x).correct
    with pytest.raises(AssertionError):
        vjp_magic.assert_correct(wrong, y, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_function_output_is_judged_per_point_too(dtype):
    x = torch.linspace(-10, 10, 5, dtype=dtype).requires_grad_()
    _, _, right, wrong = _exp(dtype)
    assert vjp_magic.check(right, torch.exp, x).correct
    assert not vjp_magic.check(wrong, torch.exp, x).correct


def test_the_magic_check_judges_per_point(run_vjp):
    cell = ("x = torch.linspace(-10, 10, 5, requires_grad=True)\ny = torch.exp(x)\n"
            "ans = torch.exp(x.detach()); ans[1] = 0\n")
    assert not run_vjp(cell, "--check ans").check.correct
    assert run_vjp(cell + "ans[1] = torch.exp(x.detach()[1])\n", "--check ans").check.correct


def test_against_sees_a_small_output_wrong_beside_large_ones(run_vjp):
    cell = ("x = torch.linspace(-10, 10, 5, requires_grad=True)\n"
            "y = torch.exp(x) * torch.tensor([1., 2., 1., 1., 1.])\n"
            "y.backward(torch.ones_like(y))\n")
    r = run_vjp(cell, '--check x.grad --against "torch.exp(x)"')
    assert not r.check.correct
    assert r.check.kind == "output-differs"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("f, answer", [
    (lambda x: torch.sin(x) ** 2 + torch.cos(x) ** 2, lambda x: torch.zeros_like(x)),
    (lambda x: x - torch.sin(x), lambda x: 2 * torch.sin(x / 2) ** 2),
    (lambda x: torch.cos(x) * torch.sin(x) - torch.sin(2 * x) / 2, lambda x: torch.zeros_like(x)),
    (lambda x: torch.exp(x) - torch.exp(x) + x, lambda x: torch.ones_like(x)),
], ids=["sin²+cos²", "x - sin x", "cos·sin - sin(2x)/2", "exp - exp + x"])
def test_rounding_where_terms_cancel_is_no_mistake(f, answer, dtype):
    x = torch.tensor([1e-3, 1e-2, 0.7, 1.0, 30.0], dtype=dtype).requires_grad_()
    exact = answer(x.detach().double()).to(dtype)  # the true derivative, in float64 first
    verdict = vjp_magic.check(exact, f, x)  # f computed again in float64: the truth proved
    if dtype == torch.float32:
        assert verdict.correct, verdict.hint
    else:  # float64 has nothing finer: right, or rounding that cannot be told (s37 F7)
        assert verdict.correct or verdict.kind == "undecided", verdict.hint
    graph = vjp_magic.check(exact, f(x), x)  # the graph's rounding bound alone: never ✗
    assert graph.correct or graph.kind == "undecided", graph.hint
