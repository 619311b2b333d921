"""What a cell sets that the recorder also sets (a ``torch.compiler`` stance, grad mode, the
default dtype, the deterministic flags): the cell's own setting wins inside the cell, as in a
plain run (V1-5's class). Expected: a plain run of the same cell (its result, its error or
none, dynamo's frame and recompile counts), and ``torch.func.jacrev`` of the uncompiled
function.
"""
from __future__ import annotations

import pytest
import torch

_COMPILED = """
def g(t):
    return torch.nn.functional.pad(t.sin(), (1, 1))[2:] * t

f = torch.compile(g, backend="eager")
"""
_BODY = "x = torch.linspace(-1, 1, 6, requires_grad=True)\ny = f(x)"
_stances = pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"),
                              reason="torch.compiler stances came in torch 2.6")


def _g(t):
    return torch.nn.functional.pad(t.sin(), (1, 1))[2:] * t


@pytest.fixture
def counts():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield lambda: (counters["frames"]["total"], counters["frames"]["ok"],
                   sum(counters["recompiles"].values()))
    torch._dynamo.reset()
    counters.clear()
    torch.compiler.set_stance("default")


@_stances
@pytest.mark.parametrize("stance", ["fail_on_recompile", "eager_on_recompile"])
def test_a_cell_setting_its_stance_then_calling_a_compiled_function_runs_as_plain(
        ip, run_ok, counts, stance):
    from torch._dynamo import eval_frame

    run_ok(_COMPILED)
    run_ok(_BODY)  # compiled once, in a plain cell
    cell = (f"torch.compiler.set_stance({stance!r})\n"
            "x = torch.linspace(-1, 1, 6, requires_grad=True)\nz = f(x * 2)\ny = f(x)")
    run_ok(cell)  # plain: the cached entry serves, no error
    plain = counts()
    run_ok("torch.compiler.set_stance('default')")
    r = run_ok(f"%%vjp --wrt x\n{cell}")
    assert counts() == plain  # no frame compiled, none recompiled
    assert eval_frame._stance.stance == stance  # left as the cell set it
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(_g)(torch.linspace(-1, 1, 6)))
    run_ok(_BODY)  # the plain call after it: the entry compiled before still serves
    assert counts() == plain


@_stances
def test_a_stance_entered_as_a_context_in_the_cell_is_left_as_plain(ip, run_ok, counts):
    from torch._dynamo import eval_frame

    run_ok(_COMPILED)
    run_ok(_BODY)
    cell = ("with torch.compiler.set_stance('fail_on_recompile'):\n"
            "    x = torch.linspace(-1, 1, 6, requires_grad=True)\n    y = f(x)")
    run_ok(cell)
    plain = counts()
    r = run_ok(f"%%vjp\n{cell}")
    assert counts() == plain
    assert eval_frame._stance.stance == "default"
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(_g)(torch.linspace(-1, 1, 6)))


_SETTINGS = {
    "grad mode": ("torch.set_grad_enabled(False)", "torch.is_grad_enabled()",
                  "torch.set_grad_enabled(True)"),
    "default dtype": ("torch.set_default_dtype(torch.float64)", "torch.get_default_dtype()",
                      "torch.set_default_dtype(torch.float32)"),
    "deterministic": ("torch.use_deterministic_algorithms(True, warn_only=True)",
                      "(torch.are_deterministic_algorithms_enabled(), "
                      "torch.is_deterministic_algorithms_warn_only_enabled())",
                      "torch.use_deterministic_algorithms(False)"),
}


@pytest.mark.parametrize("name", sorted(_SETTINGS))
def test_a_setting_the_cell_makes_is_in_force_inside_and_after_as_plain(ip, run_ok, name):
    setting, read, reset = _SETTINGS[name]
    cell = ("x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x.sin()\n"
            f"{setting}\ninside = {read}\nz = torch.ones(2)")
    try:
        run_ok(cell)
        plain = (ip.user_ns["inside"], ip.user_ns["z"].dtype, eval(read, {"torch": torch}))
        run_ok(reset)
        run_ok(f"%%vjp\n{cell}")
        assert (ip.user_ns["inside"], ip.user_ns["z"].dtype,
                eval(read, {"torch": torch})) == plain
    finally:
        run_ok(reset)
