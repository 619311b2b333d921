"""A ``%%vjp`` cell that can call ``torch.compile``'d code runs exactly as a plain cell (R1-4's
class: the recorder must not change what the cell's code computes, raises or compiles).

Such a cell runs unrecorded (no function mode, no stance); the derivatives are taken on its
own graph. Expected: a plain run of the same cells from a fresh dynamo (its values, its
error, dynamo's frame, graph and recompile counts), and
``torch.autograd.functional.jacobian`` of the uncompiled function.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

import vjp_magic

_stances = pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"),
                              reason="torch.compiler stances came in torch 2.6")


@pytest.fixture
def dynamo():
    import torch._dynamo
    from torch._dynamo.utils import counters

    def counts():
        return (counters["frames"]["total"], counters["frames"]["ok"],
                counters["stats"]["unique_graphs"], sum(counters["recompiles"].values()))

    def fresh():
        torch._dynamo.reset()
        counters.clear()

    fresh()
    yield fresh, counts
    fresh()


def _as_plain(ip, dynamo, setup: str, cells: list[str], line: str = ""):
    """(y, dynamo's counts) after ``setup`` then ``cells`` plain, then the same with the last
    cell under ``%%vjp line`` (from a fresh dynamo and namespace each time); the result."""
    fresh, counts = dynamo
    runs = []
    for magic in (None, f"%%vjp {line}\n"):
        fresh()
        ip.run_cell("%reset -f")
        for cell in ["import torch", setup, *cells[:-1]]:
            assert ip.run_cell(cell).success
        last = ip.run_cell(cells[-1] if magic is None else magic + cells[-1])
        assert last.error_in_exec is None, last.error_in_exec
        grad = getattr(ip.user_ns.get("x"), "grad", None)
        runs.append((ip.user_ns["y"].detach().clone(), counts(), grad, last.result))
    (plain_y, plain_counts, plain_grad, _), (y, vjp_counts, grad, result) = runs
    torch.testing.assert_close(y, plain_y, rtol=0, atol=0)
    assert vjp_counts == plain_counts
    assert (grad is None) == (plain_grad is None)
    if grad is not None:
        torch.testing.assert_close(grad, plain_grad, rtol=0, atol=0)
    return result


_F = '''
def g(t):
    return t.sin() * t[:1] + t.cumsum(0)
f = torch.compile(g, backend="eager")
x = torch.linspace(-1., 1., 5, requires_grad=True)
'''


def _g(t):
    return t.sin() * t[:1] + t.cumsum(0)


def _x():
    return torch.linspace(-1.0, 1.0, 5)


def test_a_function_called_through_a_helper_runs_compiled(ip, dynamo):
    setup = _F + "def helper(t):\n    return f(t) * 2\n"
    r = _as_plain(ip, dynamo, setup, ["y = helper(x)"])
    torch.testing.assert_close(r.jacobian("x"), jacobian(lambda t: _g(t) * 2, _x()))


def test_the_same_compiled_function_called_twice_in_a_cell(ip, dynamo):
    r = _as_plain(ip, dynamo, _F, ["y = f(x) + f(x * 2)"])
    torch.testing.assert_close(r.jacobian("x"), jacobian(lambda t: _g(t) + _g(t * 2), _x()))


def test_a_cell_that_compiles_its_function_itself(ip, dynamo):
    cell = ("def g(t):\n    return t.sin() * t[:1] + t.cumsum(0)\n"
            "f = torch.compile(g, backend='eager')\n"
            "x = torch.linspace(-1., 1., 5, requires_grad=True)\ny = f(x)")
    r = _as_plain(ip, dynamo, "", [cell])
    torch.testing.assert_close(r.jacobian("x"), jacobian(_g, _x()))


def test_a_dynamic_function_seeing_a_second_shape(ip, dynamo):
    setup = _F.replace('backend="eager"', 'backend="eager", dynamic=True')
    r = _as_plain(ip, dynamo, setup, ["y = f(x)", "z = f(torch.ones(7))\ny = f(x)"])
    torch.testing.assert_close(r.jacobian("x"), jacobian(_g, _x()))


_NET = '''
torch.manual_seed(0)
class Net(torch.nn.Module):      # the user's class: dynamo compiles its forward's frame
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
    def forward(self, t):
        return torch.tanh(self.lin(t))
net = Net()
x = torch.randn(4, 3)
'''


@pytest.mark.parametrize("compiled", ["cnet = torch.compile(net, backend='eager')",
                                      "net.compile(backend='eager'); cnet = net"],
                         ids=["torch.compile(net)", "net.compile()"])
def test_a_compiled_module(ip, dynamo, compiled):
    r = _as_plain(ip, dynamo, _NET + compiled, ["y = cnet(x)"], "--wrt net")
    net, x = ip.user_ns["net"], ip.user_ns["x"]
    weight, bias = net.lin.weight.detach(), net.lin.bias.detach()
    torch.testing.assert_close(r.jacobian("net.lin.weight"),
                               jacobian(lambda w: torch.tanh(x @ w.T + bias), weight))


def test_a_module_holding_a_compiled_submodule(ip, dynamo):
    setup = _NET + ("class Outer(torch.nn.Module):\n"
                    "    def __init__(self, inner):\n        super().__init__()\n"
                    "        self.inner = torch.compile(inner, backend='eager')\n"
                    "    def forward(self, t):\n        return self.inner(t) * 3\n"
                    "outer = Outer(net)\n")
    r = _as_plain(ip, dynamo, setup, ["y = outer(x)"], "--wrt net")
    net, x = ip.user_ns["net"], ip.user_ns["x"]
    weight, bias = net.lin.weight.detach(), net.lin.bias.detach()
    torch.testing.assert_close(r.jacobian("net.lin.weight"),
                               jacobian(lambda w: 3 * torch.tanh(x @ w.T + bias), weight))


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["y = f(x)", "y = f(x)\ny.sum().backward()"],
                         ids=["forward", "and-its-own-backward"])
def test_aot_autograds_compiled_backward_is_differentiated_on_the_graph(ip, dynamo, cell):
    """aot_eager: the graph holds CompiledFunctionBackward, which has no double backward."""
    setup = _F.replace('backend="eager"', 'backend="aot_eager"')
    r = _as_plain(ip, dynamo, setup, [cell])
    torch.testing.assert_close(r.jacobian("x"), jacobian(_g, _x()))


def test_a_cell_with_its_own_backward_leaves_x_grad_as_plain(ip, dynamo):
    r = _as_plain(ip, dynamo, _F, ["y = f(x)\ny.sum().backward()"])
    torch.testing.assert_close(r.jacobian("x"), jacobian(_g, _x()))


@pytest.mark.parametrize("line, said", [
    ("--symbolic", "symbolic: the cell calls torch.compile'd code (f)"),
    ("--gradcheck", "Gradient check: not run. The cell's operations cannot be replayed"),
])
def test_options_that_need_the_record_say_the_cell_calls_compiled_code(ip, dynamo, line, said):
    r = _as_plain(ip, dynamo, _F, ["y = f(x)"], line)
    text = " ".join(str(r).split())
    assert said in text and "torch.compile'd code (f)" in text
    torch.testing.assert_close(r.jacobian("x"), jacobian(_g, _x()))


@_stances
def test_compiled_code_no_scan_finds_runs_eagerly_and_is_said_so(ip, dynamo):
    branchy = ("@torch.compile(backend='eager')\ndef branchy(t):\n"
               "    if torch.compiler.is_compiling():\n        return t.sin()\n"
               "    return t.cos()\nx = torch.linspace(1., 2., 4, requires_grad=True)")
    ip.run_cell("%reset -f")
    assert ip.run_cell("import torch").success and ip.run_cell(branchy).success
    r = ip.run_cell("%%vjp\ny = eval('branchy')(x)").result  # eval: named by no code
    text = " ".join(str(r).split())
    assert "torch.compile'd function branchy ran eagerly while vjp_magic recorded it" in text
    torch.testing.assert_close(r.jacobian("x"), jacobian(torch.cos, torch.linspace(1, 2, 4)))


def test_the_scan_runs_none_of_the_users_code(ip, dynamo):
    setup = _F + ("reads = []\nclass Box:\n    @property\n    def fn(self):\n"
                  "        reads.append(1)\n        return f\n"
                  "    def __getattr__(self, name):\n        reads.append(name)\n"
                  "        return f\nbox = Box()\n")
    _as_plain(ip, dynamo, setup, ["y = box.fn(x)"])
    assert ip.user_ns["reads"] == [1]  # the cell's own read, once


def test_a_jacobian_expression_calling_compiled_code_runs_as_plain(ip, dynamo):
    fresh, counts = dynamo
    ip.run_cell("%reset -f")
    assert ip.run_cell("import torch").success and ip.run_cell(_F).success
    assert ip.run_cell("z = f(x)").success
    plain = counts()
    r = ip.run_cell("%jacobian f(x) wrt x").result
    assert counts() == plain
    torch.testing.assert_close(r.jacobian("x"), jacobian(_g, _x()))


def _branchy(t):
    if torch.compiler.is_compiling():
        return t.sin()
    return t.cos()


def test_a_function_given_to_differentiate_runs_its_compiled_code_compiled(dynamo):
    fresh, counts = dynamo
    f = torch.compile(_branchy, backend="eager")
    x = torch.linspace(1.0, 2.0, 4, requires_grad=True)
    r = vjp_magic.differentiate(lambda: f(x), x)
    torch.testing.assert_close(r.output, torch.sin(x.detach()))  # as a plain f(x) gives
    torch.testing.assert_close(r.jacobian("x"), torch.diag(torch.cos(x.detach())))
    assert counts()[:3] == (1, 1, 1)  # compiled once, as a plain first call


@pytest.mark.slow
def test_a_hessian_through_aot_autograds_compiled_code_is_refused_in_one_sentence(dynamo):
    """Its CompiledFunctionBackward has no double backward (as in plain torch): no number."""
    f = torch.compile(lambda t: (t.sin() * t).sum(), backend="aot_eager")
    x = torch.linspace(1.0, 2.0, 4, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="cannot be differentiated twice: "
                       "torch.compile'd code"):
        vjp_magic.hessian(lambda: f(x), x)
