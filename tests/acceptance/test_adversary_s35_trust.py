"""Adversarial review, session 35 (G15: trust and state). Classes the earlier reviews did not
cover:

1. "one function f (proved for every x)" after a reduction that drops an axis but is not
   among the nodes the walk knows move axes (logsumexp, prod, std, norm, amin, a
   matrix-vector product): a factor w that differs per point, multiplied in after it, is
   compared along the input's axes as if they were still in place and read as shared;
2. a warnings filter the user's own code sets while a recorded torch call runs (a tensor hook
   inside the cell's own ``backward``, a custom Function's ``forward``): the recorder swaps
   ``warnings.filters`` around each call, so the filter is lost after ``%%vjp``, kept after a
   plain run.

Expected values: ``torch.autograd.functional.jacobian`` or mathematics; state: a plain run
of the same cell. Tests marked ``xfail(strict=True)`` are bugs found in this review (they
pass once fixed and then lose the mark); unmarked ones guard what held.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch

import vjp_magic


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- 1. "one function f" after a reduction the walk does not know drops an axis -------------

_PER_ROW = {  # x (4 × 3) → one number per row, each a reduction along axis 1
    "logsumexp": lambda t: t.logsumexp(1),
    "prod": lambda t: t.prod(1),
    "std": lambda t: t.std(1),
    "vector_norm": lambda t: torch.linalg.vector_norm(t, dim=1),
    "amin": lambda t: t.amin(1),
    "mv": lambda t: torch.mv(t, torch.tensor([1.0, -1.0, 0.5])),
}


def _one_function_said(y, x) -> bool:
    text = vjp_magic.differentiate(y, x, seed=0)._repr_mimebundle_()["text/plain"]
    return "one scalar function" in text or "one function" in text


# Was a strict xfail (s35 G15, finding 1): fixed in core/graph_facts._keeps_points.
@pytest.mark.parametrize("reduce", list(_PER_ROW))
def test_a_per_point_factor_after_a_reduction_is_not_one_function(reduce):
    x = torch.randn(4, 3, generator=_generator(0)).requires_grad_()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])  # y_i = w_i · g(x_i): a different f at each point
    assert not _one_function_said(_PER_ROW[reduce](x) * w, x)


# Was a strict xfail (s35 G15): fixed in core/graph_facts._MOVES_AXES (in-place views).
def test_a_per_point_factor_after_an_in_place_transpose_is_not_one_function():
    x = torch.randn(3, 4, generator=_generator(0)).requires_grad_()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])  # y_j = w_j · sum_i x[i, j]: a different f per column
    h = x * 1
    h.t_()
    assert not _one_function_said((h * w[:, None]).sum(1), x)


def test_a_per_point_factor_after_a_transpose_is_not_one_function():
    x = torch.randn(3, 4, generator=_generator(0)).requires_grad_()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert not _one_function_said((x.t() * w[:, None]).sum(1), x)


def test_a_per_point_factor_after_a_sum_is_not_one_function():
    x = torch.randn(4, 3, generator=_generator(0)).requires_grad_()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert not _one_function_said(x.sum(1) * w, x)
    assert not _one_function_said(x.mean(1) * w, x)


@pytest.mark.parametrize("reduce", list(_PER_ROW))
def test_a_shared_factor_after_a_reduction_is_one_function(reduce):
    x = torch.randn(4, 3, generator=_generator(0)).requires_grad_()
    assert _one_function_said(_PER_ROW[reduce](x) * 2.0, x)


# -- 2. a warnings filter set by the user's code inside a recorded call -------------------

_CUSTOM = '''
import re
import warnings
class Quiet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        warnings.filterwarnings("ignore", message="s35-custom-forward")
        return t * 2
    @staticmethod
    def backward(ctx, g):
        return g * 2
'''

_FILTER_CELLS = {
    "tensor hook in the cell's backward": (
        "s35-hook", "import warnings\n"
        "x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
        "x.register_hook(lambda g: warnings.filterwarnings('ignore', message='s35-hook'))\n"
        "y = (x**2).sum()\ny.backward()\n"),
    "custom Function's forward": (
        "s35-custom-forward",
        "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = Quiet.apply(x)\n"),
}


def _filter_set(message: str) -> bool:
    return any(f[1] is not None and f[1].pattern == message for f in warnings.filters)


@pytest.fixture
def filters_kept():
    kept = list(warnings.filters)
    yield
    warnings.filters[:] = kept


# Was a strict xfail (s35 G15, finding 2): fixed in run/record.calling_at (no filter swapped).
@pytest.mark.parametrize("cell", list(_FILTER_CELLS))
def test_a_filter_set_inside_a_recorded_call_survives_vjp(ip, run_ok, filters_kept, cell):
    message, body = _FILTER_CELLS[cell]
    run_ok(_CUSTOM)
    run_ok(body)
    assert _filter_set(message)  # a plain run keeps it
    warnings.filters[:] = [f for f in warnings.filters
                           if f[1] is None or f[1].pattern != message]
    run_ok("%%vjp\n" + body)
    assert _filter_set(message)


def test_a_filter_set_by_a_module_hook_survives_vjp(ip, run_ok, filters_kept):
    body = ("import warnings\nlin = torch.nn.Linear(3, 2)\n"
            "lin.register_forward_hook(\n"
            "    lambda m, a, o: warnings.filterwarnings('ignore', message='s35-module'))\n"
            "x = torch.randn(4, 3, requires_grad=True)\ny = lin(x)\n")
    run_ok("%%vjp\n" + body)
    assert _filter_set("s35-module")


# -- 3. the coaching's "Corrected:" code empties a .grad that is no tensor -----------------

_TWICE_CELLS = {
    "a module's parameter": (
        "net = torch.nn.Linear(3, 1)\nX = torch.randn(4, 3)\nloss = net(X).pow(2).sum(1)\n"
        "loss.sum().backward()\nprint(net.weight.grad)\nloss.sum().backward()\n"),
    "torch.autograd.grad first": (
        "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x.exp()\n"
        "g, = torch.autograd.grad(y.sum(), x)\ny.sum().backward()\n"),
}


def _emptied(text: str) -> list[str]:
    """The expressions E of the ``E.grad.zero_()`` lines of the coaching's corrected code."""
    block = text.split("Corrected:", 1)[1]
    return re.findall(r"^\s*(\S+)\.grad\.zero_\(\)", block, flags=re.MULTILINE)


@pytest.mark.parametrize("cell", list(_TWICE_CELLS))
def test_the_corrected_code_empties_only_tensors_grads(ip, cell):
    result = ip.run_cell("%%vjp\n" + _TWICE_CELLS[cell]).result
    text = result._repr_mimebundle_()["text/plain"]
    emptied = _emptied(text)
    for expression in emptied:
        assert isinstance(eval(expression, ip.user_ns), torch.Tensor), expression


def test_the_corrected_code_empties_the_inputs_grad(ip):
    body = ("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x.exp()\n"
            "y.sum().backward()\nprint(x.grad)\ny.sum().backward()\n")
    text = ip.run_cell("%%vjp\n" + body).result._repr_mimebundle_()["text/plain"]
    assert _emptied(text) == ["x"]


# -- 4. differentiate on a graph with a hook on the way: the note that names it -------------

# Was a strict xfail (s35 G15): fixed in core/pass_guard.pass_guard (s36 T12: refused, unrun).
def test_differentiate_names_a_hook_it_runs():
    runs = []
    x = torch.linspace(0.1, 1, 5, requires_grad=True)
    h = x * 1
    h.register_hook(lambda g: runs.append(1))
    y = torch.sin(h)
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook"):
        vjp_magic.differentiate(y, x, seed=0)
    assert not runs


def test_differentiate_names_a_hook_on_the_input():
    x = torch.linspace(0.1, 1, 5, requires_grad=True)
    x.register_hook(lambda g: None)
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook"):  # (s35 T11: not run)
        vjp_magic.differentiate(torch.sin(x), x, seed=0)


# -- 5. the code beneath a freed graph recomputes y from a name the cell rebound since -------

_REBOUND_AFTER = {  # y = x * k with k = 2.0, the cell's backward, then k bound again
    "from math import e as k": "from math import e as k\n",
    "import math as k": "import math as k\n",
    "match 3.0: case k": "match 3.0:\n    case k:\n        pass\n",
    "exec('k = 3.0')": "exec('k = 3.0')\n",
}


def _code_beneath(text: str) -> str:
    """The indented code block of the plain-text display that computes y again."""
    for block in re.findall(r"((?:^    .*\n?)+)", text, flags=re.MULTILINE):
        if "again" in block:
            return "\n".join(line[4:] for line in block.splitlines())
    raise AssertionError("no code block beneath")


# Was a strict xfail (s35 G15, finding 5): fixed in ab30a23 (the line is pasted only where
# every name it reads holds what the record's calls saw).
@pytest.mark.parametrize("rebinding", list(_REBOUND_AFTER))
def test_the_code_beneath_a_freed_graph_gives_the_numbers_shown(ip, rebinding):
    body = ("x = torch.linspace(-1, 1, 5, requires_grad=True)\nk = 2.0\ny = x * k\n"
            "y.sum().backward()\n" + _REBOUND_AFTER[rebinding])
    result = ip.run_cell("%%vjp\n" + body).result
    code = _code_beneath(result._repr_mimebundle_()["text/plain"])
    if "y = x * k" not in code:
        return  # (it says to pass retain_graph=True and run the cell again: no numbers)
    namespace = dict(ip.user_ns)
    try:
        exec(code, namespace)
    except Exception as error:  # noqa: BLE001 - the pasted code must run
        pytest.fail(f"the code beneath raises {type(error).__name__}: {error}")
    torch.testing.assert_close(namespace["x"].grad, result.derivatives["x"])


def test_the_code_beneath_a_freed_graph_after_a_plain_rebinding(ip):
    body = ("x = torch.linspace(-1, 1, 5, requires_grad=True)\nk = 2.0\ny = x * k\n"
            "y.sum().backward()\nk = 3.0\n")
    result = ip.run_cell("%%vjp\n" + body).result
    code = _code_beneath(result._repr_mimebundle_()["text/plain"])
    assert "y = x * k" not in code  # (it says to pass retain_graph=True instead)


# -- 6. the coaching's corrected backward call, pasted, runs ---------------------------------

_SETUP_TWICE = "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x.exp()\n"
_FIRST_CALLS = {  # the first of two backward calls through one graph, as the cell wrote it
    "retain_graph=False given by keyword": "y.sum().backward(retain_graph=False)\n",
    "retain_graph given by position": "y.backward(torch.ones(5), False)\n",
    "autograd.grad's retain_graph by position": "torch.autograd.grad(y.sum(), x, None, False)\n",
    "a call over two lines": "y.sum().backward(\n    inputs=[x],\n)\n",
    "a call continued by a backslash": "y.sum() \\\n    .backward()\n",
}


def _corrected_call(ip, first: str) -> str:
    result = ip.run_cell("%%vjp\n" + _SETUP_TWICE + first + "y.sum().backward()\n").result
    block = result._repr_mimebundle_()["text/plain"].split("Corrected:", 1)[1]
    code = re.search(r"((?:^    .*\n?)+)", block, flags=re.MULTILINE).group(1)
    lines = [line[4:] for line in code.splitlines()]
    return "\n".join(line for line in lines if ".grad.zero_()" not in line)  # (see 3.)


@pytest.mark.parametrize("first", list(_FIRST_CALLS))
def test_the_corrected_first_backward_runs(ip, first):
    code = _corrected_call(ip, _FIRST_CALLS[first])
    assert "retain_graph=True" in code
    namespace = {"torch": torch}
    exec(_SETUP_TWICE, namespace)
    exec(code, namespace)  # then the cell's second call goes through the graph again:
    namespace["y"].sum().backward()


# -- 7. grading judges a small derivative against the others' mean -------------------------

def _exp_case(dtype):
    x = torch.linspace(-10, 10, 5, dtype=dtype).requires_grad_()
    right = torch.exp(x.detach())  # 4.5e-5, 6.7e-3, 1, 148, 22026: each point's own
    wrong = right.clone()
    wrong[:2] = 0  # the two smallest derivatives left out
    return torch.exp(x), x, right, wrong


def _scaled_case(dtype):
    w = torch.tensor([1e-6, 1.0, 1e6, 3.0], dtype=dtype)
    x = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=dtype).requires_grad_()
    wrong = w.clone()
    wrong[0] = 2e-6  # twice the first point's derivative
    return x * w, x, w, wrong


_GRADED = {"exp at 5 points, float32": (_exp_case, torch.float32),
           "x * w at 4 points, float64": (_scaled_case, torch.float64),
           "x * w at 4 points, float32": (_scaled_case, torch.float32)}


@pytest.mark.parametrize("case", list(_GRADED))
def test_a_small_derivative_answered_wrong_is_wrong(case):
    make, dtype = _GRADED[case]
    y, x, right, wrong = make(dtype)
    assert not vjp_magic.check(wrong, y, x).correct


@pytest.mark.parametrize("case", list(_GRADED))
def test_the_right_answer_beside_large_derivatives_is_right(case):
    make, dtype = _GRADED[case]
    y, x, right, wrong = make(dtype)
    assert vjp_magic.check(right, y, x).correct


# -- 8. the requires_grad advice, followed, stops at the cell's own in-place write -----------

_CHANGED_IN_PLACE = {
    "x *= 2": "x = torch.ones(3)\nx *= 2\ny = x**2\n",
    "x[0] = 5.": "x = torch.ones(3)\nx[0] = 5.\ny = x**2\n",
}


# Was a strict xfail (s35 G15): 'x = torch.ones(3, requires_grad=True)' stopped at the write.
# Fixed in run/grad_advice.in_place_advice (s36 F5): no one line where x is made can be
# followed here (a leaf that requires grad refuses the write), so the advice is a line to add
# after the last write; followed as written, the cell runs.
@pytest.mark.parametrize("cell", list(_CHANGED_IN_PLACE))
def test_the_requires_grad_advice_runs_in_the_cell(ip, usage_error, cell):
    body = _CHANGED_IN_PLACE[cell]
    message = usage_error("%%vjp\n" + body)
    added, after = re.search(r"the line (x\.requires_grad_\(\)) after line (\d+)\.",
                             message).groups()
    lines = body.splitlines()
    fixed = "\n".join([*lines[:int(after)], added, *lines[int(after):]])
    assert ip.run_cell("%%vjp\n" + fixed).success, fixed


# -- 9. a graph with saved-tensor hooks is refused after a pass has run the user's hooks ------

def _hooked_graph(count: dict):
    x = torch.linspace(-1, 1, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        y = torch.tanh(x).pow(2).sin()
    y.grad_fn.register_prehook(lambda g: count.__setitem__("pre", count["pre"] + 1))
    return y, x


@pytest.mark.parametrize("api", [
    # (dependency, sparse_jacobian: were strict xfails, finding 9; fixed by
    # core/reentrant.refuse_on_its_graph before any pass, s35 F4)
    "differentiate", "hessian", "dependency", "sparse_jacobian"])
def test_a_refused_hooked_graph_fires_no_hook(api):
    count = {"pre": 0}
    y, x = _hooked_graph(count)
    with pytest.raises(vjp_magic.VJPUsageError, match="saved_tensors_hooks"):
        getattr(vjp_magic, api)(y.sum() if api == "hessian" else y, x)
    assert count["pre"] == 0


# -- 10. a node hook that changes the gradient, on the user's own graph -----------------------

_DOUBLE = '''
class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t * 2
    @staticmethod
    def backward(ctx, g):
        return g * 2
'''


# Was a strict xfail (s35 G15): fixed in core/pass_guard.pass_guard (s36 T12: refused, unrun).
def test_derivatives_changed_by_a_node_hook_are_said_to_be(ip, run_ok, usage_error):
    run_ok(_DOUBLE)
    assert "your hook" in usage_error(
        "%%vjp\nx = torch.linspace(-1, 1, 5, requires_grad=True)\ny = Double.apply(x).sin()\n"
        "y.grad_fn.register_prehook(lambda gs: (gs[0] * 10,))\n")


def test_derivatives_changed_by_a_tensor_hook_are_said_to_be(ip, run_ok, usage_error):
    run_ok(_DOUBLE)  # (s35 T11: on the cell's own graph, refused before the hook runs)
    assert "your hook" in usage_error(
        "%%vjp\nx = torch.linspace(-1, 1, 5, requires_grad=True)\n"
        "h = Double.apply(x)\nh.register_hook(lambda g: g * 10)\ny = h.sin()\n")


# -- 11. --code's sentence names the variable r.code defines -----------------------------------

# Was a strict xfail (s35 G15): fixed in render/codegen.code_derivative_names (the sentence
# names what r.code binds, d_x2 where the cell binds d_x).
def test_the_code_sentence_names_what_r_code_defines(ip, run_ok):
    result = run_ok("%%vjp --code\nx = torch.linspace(-1, 1, 5, requires_grad=True)\n"
                    "d_x = 3.0\ny = torch.stack([x**2, x**3]) * d_x\n")
    text = result._repr_mimebundle_()["text/plain"]
    said = re.search(r"defines\s+(\w+), is r\.code", text).group(1)
    namespace = dict(ip.user_ns)
    exec(result.code, namespace)
    assert isinstance(namespace[said], torch.Tensor), said
    torch.testing.assert_close(namespace[said], result.derivatives["x"])


def test_the_code_sentence_names_d_x(ip, run_ok):
    result = run_ok("%%vjp --code\nx = torch.linspace(-1, 1, 5, requires_grad=True)\n"
                    "y = torch.stack([x**2, x**3])\n")
    namespace = dict(ip.user_ns)
    exec(result.code, namespace)
    torch.testing.assert_close(namespace["d_x"], result.derivatives["x"])
    assert "defines d_x" in result._repr_mimebundle_()["text/plain"].replace("\n", " ")
