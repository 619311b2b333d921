"""run/cuts.find_reads: a result whose shape x's values set, and a tensor printed into a string,
are reads (R2-4 / R2-5, session 43), every member of the class.

A cell ``y = x ** 2 if <condition> else x * x.roll(1)`` takes the diagonal branch at
x = [1, 2, 3, 4] and the other at x = [-1, 2, 3, 4]: where the condition reads x's values
(the shape of ``x[x > 0]``, ``unique``, ``argwhere``...), "proved for every x" is wrong, which
``torch.autograd.functional.jacobian`` at the other point shows. Shapes set by shapes alone
(an integer index, ``where(c, a, b)``, ``one_hot(i, 3)``, ``nonzero_static``) and a print of
x keep the proof.
"""
from __future__ import annotations

import pytest
import torch

BRANCH = "x ** 2 if {condition} else x * x.roll(1)"
POINT = "x = torch.tensor([1., 2., 3., 4.], requires_grad=True)\n"
SHAPE_READS = {  # true at x = [1, 2, 3, 4], false at [-1, 2, 3, 4]
    "unique": "torch.unique(x.sign()).numel() == 1",
    "unique_consecutive": "torch.unique_consecutive(x.sign()).numel() == 1",
    "argwhere": "torch.argwhere(x < 0).shape[0] == 0",
    "repeat_interleave by a tensor": "torch.repeat_interleave(x, (x > 0).long()).numel() == 4",
    "one_hot's classes": "torch.nn.functional.one_hot((x < 0).long()).shape[1] == 1",
    "nonzero as a tuple": "torch.nonzero(x > 0, as_tuple=True)[0].numel() == 4",
    "masked_select, the method": "x.masked_select(x > 0).numel() == 4",
    "bincount with minlength": "torch.bincount((x < 0).long(), minlength=1).numel() == 1",
    "a mask inside a tuple index": "x[(x > 0,)].shape[0] == 4",
    "a mask of an unrelated tensor made from x": "len(torch.ones(4)[x > 0]) == 4",
}
FORMAT_READS = {
    "an f-string": "f'{x[0]:.1f}'[0] != '-'",
    "format()": "format(x[0].item(), '.1f')[0] != '-' and format(x[0], '.1f')[0] != '-'",
    "str of x": "'-' not in str(x)",
    "str of a slice kept in a list": "[str(x[:1])][0][8] != '-'",
}
SHAPES_BY_SHAPES = {  # every x takes the diagonal branch
    "an integer index": "x[torch.tensor([0, 1])].shape[0] == 2",
    "where with three arguments": "torch.where(x > 0, x, -x).shape[0] == 4",
    "one_hot with its classes": "torch.nn.functional.one_hot((x < 0).long(), 2).shape[1] == 2",
    "nonzero_static": "torch.nonzero_static(x > 0, size=4).shape[0] == 4",
    "a constant mask": "x[torch.tensor([True, True, False, True])].shape[0] == 3",
    "len of x": "len(x) == 4",
    "repeat_interleave by a number": "x.repeat_interleave(2).numel() == 8",
}


def _text(r) -> str:
    return " ".join(r._repr_mimebundle_()["text/plain"].split())


def _other_branch_is_not_diagonal(condition: str) -> bool:
    jac = torch.autograd.functional.jacobian(
        lambda x: eval(BRANCH.format(condition=condition), {"torch": torch, "x": x}),
        torch.tensor([-1., 2., 3., 4.]))
    return bool((jac - torch.diag(torch.diagonal(jac)) != 0).any())


@pytest.mark.parametrize("name", list(SHAPE_READS))
def test_a_shape_set_by_values_is_claimed_at_this_x_only(run_vjp, name):
    assert _other_branch_is_not_diagonal(SHAPE_READS[name])
    r = run_vjp(POINT + "y = " + BRANCH.format(condition=SHAPE_READS[name]))
    text = _text(r)
    assert "proved for every x" not in text and "at this x only" in text
    assert [read.inputs for read in r.steers] == [("x",)]
    assert "whose shape the values of x set" in text


@pytest.mark.parametrize("name", list(FORMAT_READS))
def test_a_tensor_formatted_into_a_string_is_a_read(run_vjp, name):
    assert _other_branch_is_not_diagonal(FORMAT_READS[name])
    r = run_vjp(POINT + "y = " + BRANCH.format(condition=FORMAT_READS[name]))
    assert "proved for every x" not in _text(r) and r.steers


@pytest.mark.parametrize("name", list(SHAPES_BY_SHAPES))
def test_a_shape_set_by_shapes_alone_keeps_the_proof(run_vjp, name):
    r = run_vjp(POINT + "y = " + BRANCH.format(condition=SHAPES_BY_SHAPES[name]))
    torch.testing.assert_close(r.jacobian("x"), torch.diag(torch.tensor([2., 4., 6., 8.])))
    assert r.steers == () and "(proved for every x)" in _text(r)


@pytest.mark.parametrize("shown", ["print(x)", "print(x[x > 0])", "print(f'{x}')",
                                   "print(repr(x), x.nonzero().shape)"])
def test_a_print_before_the_output_is_no_read(run_vjp, shown):
    """Only shown, even before the output is made: no path chosen."""
    r = run_vjp(POINT + shown + "\ny = x ** 2\n")
    assert r.steers == () and "(proved for every x)" in _text(r)


def test_a_string_kept_by_a_method_before_the_output_is_a_read(run_vjp):
    """``seen.append(str(x))`` only calls methods, but keeps the string for a later ``if``."""
    r = run_vjp(POINT + "seen = []\nseen.append(str(x))\n"
                "y = x ** 2 if '-' not in seen[0] else x * x.roll(1)\n")
    assert [read.op for read in r.steers] == ["str(x)"]
    assert "proved for every x" not in _text(r)
