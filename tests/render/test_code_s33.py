"""The code beneath a display runs as pasted (session 33, F2): the line clearing many long
.grad names fits a code block (a loop whose tuple breaks, never a chained assignment that
cannot), and the loop variable is none of the cell's names."""
from __future__ import annotations

import torch

from vjp_magic.render.codegen import cleared_grads
from vjp_magic.render.codelines import CODE_WIDTH, fit_code


def test_many_long_grads_are_cleared_by_a_loop_that_fits():
    names = [f"model.block{k}.weight" for k in range(4)]
    code = fit_code(cleared_grads(names, {"p"}))
    assert max(len(line) for line in code.splitlines()) <= CODE_WIDTH, code
    model = type("M", (), {})()
    for k in range(4):
        block = type("B", (), {})()
        block.weight = torch.ones(2, requires_grad=True)
        block.weight.grad = torch.ones(2)
        setattr(model, f"block{k}", block)
    p = "the cell's p"
    namespace = {"model": model, "p": p}
    exec(compile(code, "<shown>", "exec"), namespace)  # noqa: S102 - written to run
    assert all(getattr(model, f"block{k}").weight.grad is None for k in range(4))
    assert namespace["p"] == p  # the cell's p is not the loop's


def test_a_short_clearing_line_stays_one_assignment():
    assert cleared_grads(["a"]) == "a.grad = None  # backward adds to .grad: start from none"
    assert cleared_grads(["a", "b"]) == "a.grad = b.grad = None"  # (why: past the width)
