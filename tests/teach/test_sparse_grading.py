"""Grading (``vjp_magic.check``, ``%%vjp --check``) on a sparse Jacobian (issue 20): the same
verdicts as the dense path (``full=True``) at a size where both run, and verdicts from the CSR
where the Jacobian is too large to densify. Expected numbers: torch.autograd.functional."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.teach import sparse_dense
from vjp_magic.teach.grading import grade


def _f(x):
    return F.pad(x, (1, 1))[2:] + x ** 2


def _jacobian(x):
    return torch.autograd.functional.jacobian(_f, x.detach())


def _answers(x, jac):
    g = torch.Generator().manual_seed(3)
    wrong = jac.clone()
    wrong[5, 6] += 1.0
    return {
        "correct": jac,
        "summed": jac.sum(0),  # what y.backward(torch.ones_like(y)) leaves in x.grad
        "one-component": jac[7],
        "wrong": wrong,
        "wrong x-shaped": torch.randn(x.shape, dtype=x.dtype, generator=g),
    }


@pytest.fixture(scope="module")
def small():
    x = torch.randn(300, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(1))
    y = _f(x)
    sparse = vjp_magic.differentiate(y, x, seed=1)
    dense = vjp_magic.differentiate(y, x, seed=1, full=True)
    assert sparse.inputs["x"].sparse is not None and dense.inputs["x"].sparse is None
    return x, y, sparse, dense


@pytest.mark.parametrize("which", ["correct", "summed", "one-component", "wrong",
                                   "wrong x-shaped"])
def test_sparse_verdicts_equal_the_dense_ones(small, which):
    x, y, sparse, dense = small
    answer = _answers(x, _jacobian(x))[which]
    want = grade(answer, dense, "x")
    got = grade(answer, sparse, "x")
    assert (got.correct, got.kind) == (want.correct, want.kind)
    if which == "summed":  # the hint teaches the colours the sparse display shows (s31)
        assert "one backward per colour" in got.hint and "one-hot" in want.hint
    else:
        assert got.hint == want.hint
    assert got.correct == (which == "correct")
    via_check = vjp_magic.check(answer, y, x)
    assert (via_check.correct, via_check.kind) == (want.correct, want.kind)


def test_the_kinds_are_the_usual_ones(small):
    x, _, sparse, _ = small
    kinds = {k: grade(a, sparse, "x").kind for k, a in _answers(x, _jacobian(x)).items()}
    assert kinds["correct"] == "correct" and kinds["summed"] == "summed"
    assert kinds["one-component"] == "one-component" and kinds["wrong"] == "wrong"


def test_a_jacobian_too_large_to_densify_is_graded_from_its_csr(monkeypatch, small):
    x, y, _, _ = small
    monkeypatch.setattr(sparse_dense, "DENSE_ENTRIES", 1000)  # 300 × 300 is now "large"
    r = vjp_magic.differentiate(y, x, seed=1)
    assert sparse_dense.too_large(sparse_dense.densified(r)) == ["x"]
    jac = _jacobian(x)
    assert grade(jac.sum(0), r, "x").kind == "summed"
    assert grade(jac[7], r, "x").kind == "one-component"
    assert grade(2 * jac.sum(0), r, "x").kind == "summed"  # twice the sum: named a multiple
    bad = grade(torch.randn(300, dtype=torch.float64), r, "x")
    assert not bad.correct and bad.kind == "wrong-shape"


def test_the_csr_helpers_agree_with_the_dense_jacobian(small):
    x, _, sparse, _ = small
    jac, csr = _jacobian(x), sparse.inputs["x"].sparse.matrix
    torch.testing.assert_close(sparse_dense.column_sums(csr), jac.sum(0))
    torch.testing.assert_close(sparse_dense.column_sums(csr, True), jac.abs().sum(0))
    torch.testing.assert_close(sparse_dense.csr_row(csr, 7), jac[7])


@pytest.mark.parametrize("backward", ["torch.ones_like(y)", "v"])
def test_magic_check_gives_the_dense_paths_verdict(ip, backward):
    body = ("import torch.nn.functional as F\ntorch.manual_seed(0)\n"
            "x = torch.randn(300, dtype=torch.float64, requires_grad=True)\n"
            "y = F.pad(x, (1, 1))[2:] + x**2\nv = torch.zeros_like(y)\nv[3] = 1.\n"
            f"y.backward({backward})\ng = x.grad\n")
    shown = {}
    for flag in ("", " --full"):
        result = ip.run_cell(f"%%vjp --check g{flag}\n" + body)
        assert result.success, result.error_in_exec
        assert (result.result.inputs["x"].sparse is None) == bool(flag)
        shown[flag] = repr(result.result)
    if backward == "v":
        assert shown[""] == shown[" --full"]
    else:  # summed: the same verdict; its hint teaches the colours the display shows (s31)
        assert shown[""].splitlines()[0] == shown[" --full"].splitlines()[0]
        assert "one backward per colour" in " ".join(shown[""].split())
    assert ("summed" in shown[""]) == (backward != "v")
    assert ip.run_cell("%%vjp --check g --reveal\n" + body).success


def test_reveal_shows_a_sparse_jacobian_whole_or_says_why_not(monkeypatch, small):
    from vjp_magic.teach.grading import verdict_sections

    x, _, sparse, dense = small
    wrong = torch.zeros(300, 300, dtype=torch.float64)
    shown = verdict_sections(grade(wrong, sparse, "x"), sparse, reveal=True)
    assert shown == verdict_sections(grade(wrong, dense, "x"), dense, reveal=True)
    monkeypatch.setattr(sparse_dense, "DENSE_ENTRIES", 1000)
    said = verdict_sections(grade(wrong, sparse, "x"), sparse, reveal=True)
    assert "too large to show whole" in str(said)
