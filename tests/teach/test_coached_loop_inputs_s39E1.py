"""The corrected code of coaching changes no ``.grad`` it does not read (s39 E1), by the rule
every snippet shown follows (``render.codegen.backward_inputs``): its backward names
``inputs=[...]`` exactly where a plain backward from the failing tensor would also fill
another tensor's ``.grad`` (a model's parameter). Each corrected block is run as a student
pastes it, with a sentinel in the parameters' ``.grad``: it must hold it still, and what the
loop prints must be the Jacobian's rows (the mathematics of y = x Wᵀ + b)."""
from __future__ import annotations

import torch
from coached import corrected, mistake

LINEAR = ("torch.manual_seed(0)\nlin = torch.nn.Linear(3, 2)\n"
          "x = torch.randn(5, 3, requires_grad=True)\ny = lin(x)\n")


def sentinel(*tensors: torch.Tensor) -> None:
    for t in tensors:
        t.grad = torch.full_like(t, 7.0)


def untouched(*tensors: torch.Tensor) -> bool:
    return all(torch.equal(t.grad, torch.full_like(t, 7.0)) for t in tensors)


def run_loop(ip, lines: list[str]) -> list[torch.Tensor]:
    """The corrected block run in the notebook's namespace; what it prints, in order."""
    seen: list[torch.Tensor] = []
    ip.user_ns["print"] = lambda g: seen.append(g.clone())
    try:
        exec("\n".join(lines), ip.user_ns)  # noqa: S102 - the coaching's code
    finally:
        del ip.user_ns["print"]
    return seen


def check_rows(ip, lines: list[str]) -> None:
    lin = ip.user_ns["lin"]
    sentinel(lin.weight, lin.bias)
    seen = run_loop(ip, lines)
    assert untouched(lin.weight, lin.bias)
    assert len(seen) == 2  # component k of every row: d y[i, k] / d x[i] = W[k]
    for k, grad in enumerate(seen):
        torch.testing.assert_close(grad, lin.weight.detach()[k].expand(5, 3))


def test_the_corrected_loop_leaves_a_models_parameters_alone(ip, run_vjp):
    r = run_vjp(LINEAR + "y.backward()\n")
    lines = corrected(mistake(r))
    assert lines[0] == "for k in range(2):"
    assert "    y.backward(gradient=v, retain_graph=True, inputs=[x])" in lines
    check_rows(ip, lines)


def test_the_loop_for_a_tensor_other_than_the_output_names_its_input_too(ip, run_vjp):
    """The failing tensor is not the result's output: its own analysis, whose graph says
    which ``.grad`` a backward from it fills."""
    r = run_vjp(LINEAR + "z = (y ** 2).sum()\ny.backward()\n", line="--of z")
    assert r.output_name == "z"
    lines = corrected(mistake(r))
    assert "    y.backward(gradient=v, retain_graph=True, inputs=[x])" in lines
    check_rows(ip, lines)


def test_the_tutorials_loop_is_unchanged_where_nothing_else_requires_grad(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "h = torch.softmax(x, 0)\nh.backward()\n")
    lines = corrected(mistake(r))
    assert "    h.backward(gradient=v, retain_graph=True)" in lines
    assert not any("inputs=" in line for line in lines)
