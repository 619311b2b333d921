"""The code a grading hint names runs as written (G8): a dict answer's fix reads the entry
(answer['x'].T, not answer.T, an AttributeError on a dict), and an expression output is
spelled so that .backward may follow it ((x**2).backward(...), not x**2.backward(...))."""
from __future__ import annotations

import re

import torch

import vjp_magic
from vjp_magic.teach.grading import grade


def _two_inputs():
    x = torch.arange(6.).reshape(2, 3).requires_grad_()
    w = torch.tensor([1., 2.], requires_grad=True)
    r = vjp_magic.differentiate((x**2).sum() + w.sum(), {"x": x, "w": w})
    return x, r


def test_a_dict_answers_transpose_fix_runs():
    x, r = _two_inputs()
    answer = {"x": (2 * x).detach().T, "w": torch.ones(2)}  # d/dx sum(x**2) = 2x
    verdict = grade(answer, r)
    assert verdict.kind == "transposed"
    assert "answer['x'].T" in str(verdict.hint), verdict.hint
    torch.testing.assert_close(eval("answer['x'].T", {"answer": answer}), 2 * x.detach())


def test_a_dict_answers_reshape_fix_runs():
    x, r = _two_inputs()
    answer = {"x": (2 * x).detach().reshape(3, 2), "w": torch.ones(2)}
    verdict = grade(answer, r)
    assert verdict.kind == "reshaped"
    assert "answer['x'].reshape(2, 3)" in str(verdict.hint), verdict.hint
    torch.testing.assert_close(eval("answer['x'].reshape(2, 3)", {"answer": answer}),
                               2 * x.detach())


def test_an_expression_outputs_backward_runs():
    x = torch.tensor([1., 2., 3.], requires_grad=True)
    r = vjp_magic.differentiate(x**2, x, output_name="x**2")
    verdict = grade(torch.tensor([5., 1., 1.]), r)
    hint = str(verdict.hint)
    assert "x**2.backward" not in hint, hint
    (call,) = re.findall(r"\S*\.backward\(.*?\)(?= puts)", hint)
    exec(call, {"x": x, "torch": torch})
    torch.testing.assert_close(x.grad, 2 * x.detach())  # d/dx x**2 at each point
