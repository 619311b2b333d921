"""The false ✓ cases and the misdiagnoses of issue 21 as one table (items 1 and 3): the
student's cell, the verdict wanted, and the words its hint must not contain.

Each row is a cell a student writes, run under ``%%vjp --check NAME [--against EXPR]``. The
false ✓ rows grade a mistyped f, or a graph cut by ``.detach()``, ``.data``,
``torch.tensor(...)`` or a numpy round trip, against the exercise; each must be ✗ and say
why. The misdiagnosis rows must be called what the numbers say they are (a factor with one
backward, components summed by hand after zeroing, a vanishing column sum with no multiplier)
and never be told something the cell's own log contradicts.
"""
from __future__ import annotations

import pytest

X5 = "x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
X3 = "x = torch.linspace(-2, 2, 3, requires_grad=True)\n"
STACK = X3 + "y = torch.stack([-x**3, 5*x])\n"
SOFTMAX = "x = torch.tensor([1., 2., 3., 0.5], requires_grad=True)\ny = torch.softmax(x, 0)\n"
SOFTMAX12 = ("torch.manual_seed(3)\nx = torch.randn(12, requires_grad=True)\n"
             "y = torch.softmax(x, 0)\n")
CUBIC = '--against "x**3 - 2*x"'
ONES = "y.backward(torch.ones_like(y))\n"


def one_hot(k: int, zero: str = "x.grad.zero_()") -> str:
    """The tutorial's step for component k of STACK, then ``zero`` (how .grad is emptied)."""
    return (f"v = torch.zeros_like(y); v[{k}] = 1\ny.backward(v, retain_graph=True)\n"
            f"g{k} = x.grad.clone()\n{zero}\n")


# id: (cell, line, kind wanted, words the hint must not contain, words it must contain)
ROWS = {
    # -- false ✓: graded against the exercise, not the student's own graph ------------------
    "mistyped-square": (X5 + "y = x**2 - 2*x\n" + ONES, "--check x.grad " + CUBIC,
                        "output-differs", ["Right"], ["differs from x**3 - 2*x"]),
    "mistyped-sign": (X5 + "y = x**3 + 2*x\n" + ONES, "--check x.grad " + CUBIC,
                      "output-differs", ["Right"], ["differs from"]),
    "mistyped-function": (X5 + "y = torch.cos(x)\n" + ONES,
                          "--check x.grad --against torch.sin(x)", "output-differs", ["Right"],
                          ["differs from torch.sin(x)"]),
    "mistyped-stack": (X3 + "y = torch.stack([-x**3, 4*x])\n"
                       "ans = torch.stack([-3*x.detach()**2, 5*torch.ones(3)])",
                       "--check ans --against torch.stack([-x**3, 5*x])", "output-differs",
                       [], ["itself is the derivatives"]),
    "detach": (X5 + "y = x.detach()**3 - 2*x\n" + ONES, "--check x.grad " + CUBIC,
               "graph-cut", ["Right"], ["does not reach x"]),
    "data": (X5 + "y = x.data**3 - 2*x\n" + ONES, "--check x.grad " + CUBIC, "graph-cut",
             ["Right"], ["does not reach x"]),
    "torch-tensor": (X5 + "y = torch.tensor((x**3).tolist()) - 2*x\n" + ONES,
                     "--check x.grad " + CUBIC, "graph-cut", ["Right"], ["cut off"]),
    "numpy": (X5 + "y = torch.from_numpy(x.detach().numpy()**3) - 2*x\n" + ONES,
              "--check x.grad " + CUBIC, "graph-cut", ["Right"], ["cut off"]),
    "detached-component": (X3 + "y = torch.stack([-x.detach()**3, 5*x])\n"
                           "ans = torch.stack([torch.zeros(3), 5*torch.ones(3)])",
                           "--check ans --against torch.stack([-x**3, 5*x])", "graph-cut",
                           ["Right"], ["does not reach x"]),
    "detached-by-function": (X5 + "y = x.detach().sin() * x\n" + ONES,
                             "--check x.grad --against torch.sin(x) * x", "graph-cut",
                             ["Right"], ["does not reach x"]),
    # -- a factor with one backward is not "accumulated" -----------------------------------
    "v-twice-ones": (X5 + "y = x**3 - 2*x\ny.backward(2*torch.ones_like(y))", "--check x.grad",
                     "scaled", ["accumulated", "zero", "adds to .grad"], ["one backward"]),
    "differentiated-3y": (X5 + "y = torch.sin(x)\n(3*y).backward(torch.ones_like(y))",
                          "--check x.grad", "scaled", ["accumulated", "adds to .grad"],
                          ["3 times"]),
    "sum-of-2y": (X5 + "y = torch.exp(x)\n(2*y).sum().backward()", "--check x.grad", "scaled",
                  ["accumulated", "adds to .grad"], ["2 times"]),
    "v-is-2y": ("x = torch.ones(4, requires_grad=True)\ny = torch.exp(x - 1)\n"
                "y.backward(2*y)", "--check x.grad", "scaled", ["accumulated"], ["2 times"]),
    "v-scaled-stack": (STACK + "ans = []\nfor k in range(2):\n    v = torch.zeros_like(y)\n"
                       "    v[k] = 2\n    ans.append(torch.autograd.grad(y, x, v, "
                       "retain_graph=True)[0])", "--check ans", "accumulated",
                       ["sum of"], ["2 times"]),
    # -- summed by hand after zeroing is "summed", not "accumulated" ------------------------
    "g1-plus-g2-zeroed": (STACK + one_hot(0) + one_hot(1) + "ans = g0 + g1", "--check ans",
                          "summed", ["accumulated", "adds to .grad", "not zeroed"],
                          ["2 backward calls"]),
    "g1-plus-g2-none": (STACK + one_hot(0, "x.grad = None") + one_hot(1, "x.grad = None")
                        + "ans = g0 + g1", "--check ans", "summed",
                        ["accumulated", "adds to .grad"], ["2 backward calls"]),
    "three-summed": (X3 + "y = torch.stack([x, x**2, x**3])\n"
                     + "".join(f"v = torch.zeros_like(y); v[{k}] = 1\n"
                               f"y.backward(v, retain_graph=True)\ng{k} = x.grad.clone()\n"
                               "x.grad.zero_()\n" for k in range(3))
                     + "ans = g0 + g1 + g2", "--check ans", "summed",
                     ["accumulated", "adds to .grad"], ["3 backward calls"]),
    "accumulated-really": (STACK + "for k in range(2):\n    v = torch.zeros_like(y); v[k] = 1\n"
                           "    y.backward(v, retain_graph=True)", "--check x.grad",
                           "accumulated", ["one backward", "by hand"], ["sum of 2 backward"]),
    # -- vanishing column sums: no multiplier ------------------------------------------------
    "softmax-row": (SOFTMAX + "y[0].backward()", "--check x.grad", "one-component",
                    ["added up", "times"], ["one component"]),
    "softmax12-row": (SOFTMAX12 + "y.backward(torch.eye(12)[0])", "--check x.grad",
                      "one-component", ["added up", "times"], []),
    "softmax12-last-row": (SOFTMAX12 + "y[11].backward()", "--check x.grad", "one-component",
                           ["added up", "times"], []),
    "softmax-ones": (SOFTMAX + ONES, "--check x.grad", "summed", ["times"], ["column sums"]),
    "softmax-ones-twice": (SOFTMAX + "y.backward(torch.ones_like(y), retain_graph=True)\n"
                           + ONES, "--check x.grad", "summed", ["times", "4948201"], []),
    "rowwise-softmax-one-row": ("torch.manual_seed(0)\nx = torch.randn(4, 3, "
                                "requires_grad=True)\ny = torch.softmax(x, 1)\n"
                                "y[0].sum().backward()", "--check x.grad", "summed",
                                ["times"], []),
    # -- hints true of this cell's log ---------------------------------------------------------
    "grad-not-backward": (X5 + "y = x**2\ng, = torch.autograd.grad(y, x, torch.ones_like(y))",
                          "--check x.grad", "missing", ["stays None until"],
                          ["torch.autograd.grad"]),
    "grad-set-none": (X5 + "y = x**2\n" + ONES + "x.grad = None", "--check x.grad", "missing",
                      ["stays None until"], ["set to None"]),
    "rows-without-clone-zeroed": (STACK + "rows = []\nfor k in range(2):\n"
                                  "    v = torch.zeros_like(y); v[k] = 1\n"
                                  "    if x.grad is not None: x.grad.zero_()\n"
                                  "    y.backward(v, retain_graph=True)\n"
                                  "    rows.append(x.grad)\nans = torch.stack(rows)",
                                  "--check ans", "one-component", ["not zeroed", "Check the"],
                                  [".clone()"]),
    "rows-not-zeroed": (STACK + "rows = []\nfor k in range(2):\n"
                        "    v = torch.zeros_like(y); v[k] = 1\n"
                        "    y.backward(v, retain_graph=True)\n"
                        "    rows.append(x.grad.clone())\nans = torch.stack(rows)",
                        "--check ans", "accumulated", ["one backward"], ["not zeroed"]),
}


@pytest.mark.parametrize("cell, line, kind, never, says", ROWS.values(), ids=ROWS.keys())
def test_verdict_and_hint(run_vjp, cell, line, kind, never, says):
    r = run_vjp(cell, line)
    check = r.check
    assert (check.correct, check.kind) == (False, kind), check.hint
    for words in never:
        assert words not in check.hint, words
    for words in says:
        assert words in check.hint, words
    shown = r._repr_mimebundle_()["text/plain"]
    assert "✓" not in shown and "✗" in shown


def test_the_false_ticks_are_ticks_without_against(run_vjp):
    """What the table fixes: graded against its own graph, a cut graph looks right."""
    r = run_vjp(X5 + "y = x.detach()**3 - 2*x\n" + ONES, "--check x.grad")
    assert r.check.correct


def test_a_factor_with_one_backward_names_it_in_the_headline(run_vjp):
    r = run_vjp(X5 + "y = x**3 - 2*x\ny.backward(3*torch.ones_like(y))", "--check x.grad")
    assert (r.check.factor, r.check.calls, r.check.lines) == (3, 1, (3,))
    assert r.check.headline == "✗ 3× the answer with one backward"
