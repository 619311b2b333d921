"""r.code of a colouring without a closed form reads the result as ``r`` (never IPython's
``_``, which after ``r = differentiate(...)`` is an earlier output, and absent in a script);
it first checks ``r`` is THIS result (its seed), so a stale one fails loudly (s31 CX).
Expected values: torch.func.jacrev."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.render.codegen import reproducing_code
from vjp_magic.render.sparse import sparse_of

N = 300


def gather_by(seed):
    def f(x):
        idx = torch.randint(0, N, (2 * N,), generator=torch.Generator().manual_seed(seed))
        return x[idx] * x[(idx + 7) % N]
    return f


def _result(f, seed=None):
    x = torch.randn(N, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(1))
    y = f(x)
    r = vjp_magic.differentiate(y, x, seed=seed)
    assert sparse_of(r, "x") is not None
    return r, x, y


def _run(code: str, namespace: dict) -> dict:
    exec(compile(code, "<code>", "exec"), namespace)  # noqa: S102 - the code is written to run
    return namespace


def test_r_code_reads_r_checked_first_and_runs_in_a_script():
    f = gather_by(0)
    r, x, y = _result(f)
    code = r.code
    assert "_." not in code, code
    reads = [line for line in code.splitlines() if "r." in line and "assert" not in line]
    assert code.index("assert r.seed == ") < code.index(reads[0]), code
    ns = _run(code, {"torch": torch, "x": x, "y": y, "r": r})
    torch.testing.assert_close(ns["d_x"].to_dense(), torch.func.jacrev(f)(x.detach()))


def test_r_code_with_another_result_as_r_fails_loudly():
    r, x, y = _result(gather_by(0))
    earlier, _, _ = _result(gather_by(1))
    assert earlier.seed != r.seed  # drawn per run
    with pytest.raises(AssertionError, match="r is not the result this code was written for"):
        _run(r.code, {"torch": torch, "x": x, "y": y, "r": earlier})
    assert x.grad is None  # it stopped before touching .grad


def test_a_cell_tensor_named_r_is_said_and_the_result_read_by_another_name():
    f = gather_by(0)
    x = torch.randn(N, dtype=torch.float64, requires_grad=True)
    r = f(x)  # the cell's output is called r
    result = vjp_magic.differentiate(r, x, names=["x"], output_name="r")
    code = result.code
    first_comment = next(line for line in code.splitlines() if line.startswith("#"))
    assert "r is a tensor of the cell" in first_comment and "result" in first_comment, code
    assert "assert result.seed == " in code, code
    ns = _run(code, {"torch": torch, "x": x, "r": r, "result": result})
    torch.testing.assert_close(ns["d_x"].to_dense(), torch.func.jacrev(f)(x.detach()))


def test_the_callers_name_for_the_result_is_used():
    f = gather_by(0)
    res, x, y = _result(f)
    code = reproducing_code(res, result_name="jac")
    assert "assert jac.seed == " in code and "r." not in code.replace("jac.", ""), code
    ns = _run(code, {"torch": torch, "x": x, "y": y, "jac": res})
    torch.testing.assert_close(ns["d_x"].to_dense(), torch.func.jacrev(f)(x.detach()))


def test_a_closed_form_colouring_reads_no_result():
    x = torch.randn(400, dtype=torch.float64, requires_grad=True)
    y = x.roll(1) - 2 * x + x.roll(-1) + x ** 3
    r = vjp_magic.differentiate(y, x)
    assert sparse_of(r, "x") is not None
    assert "r." not in r.code and "seed" not in r.code, r.code
