"""What a user's custom backward switches while the analysis calls it (core/switches), and the
user's code behind torch.library's and functorch's generated Functions (backward_writes).

A plain run of the cell calls no backward: after the analysis every switch is as that run
leaves it (the expected values are the plain run's, read by the same lambda).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import vjp_magic
from vjp_magic.core import switches

SOURCE = '''
import torch, warnings, numpy as np
W = torch.zeros(3, requires_grad=True)
M = torch.nn.Linear(2, 2)
NET = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
HANDLE = W.register_hook(lambda g: g)   # the user's own hook: stays
class F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g):
        {body}
        return g * 2
'''
_CELL = "x = torch.linspace(1., 2., 4, requires_grad=True)\ny = F.apply(x) ** 2\n"
_BODIES = {
    "a forward hook on a module": ("M.register_forward_hook(lambda *a: None)",
                                   lambda ns: len(ns["M"]._forward_hooks)),
    "a hook on a submodule": ("[m.register_forward_pre_hook(lambda *a: None) "
                              "for m in NET.modules()]",
                              lambda ns: [len(m._forward_pre_hooks) for m in ns["NET"]]),
    "a post-accumulate-grad hook": ("W.register_post_accumulate_grad_hook(lambda t: None)",
                                    lambda ns: len(ns["W"]._post_accumulate_grad_hooks or {})),
    "the user's hook removed": ("HANDLE.remove()", lambda ns: len(ns["W"]._backward_hooks or {})),
    "a module switched to eval": ("M.eval()", lambda ns: ns["M"].training),
    "a global module hook": ("torch.nn.modules.module.register_module_forward_hook("
                             "lambda *a: None)",
                             lambda ns: len(torch.nn.modules.module._global_forward_hooks)),
    "torch.set_printoptions": ("torch.set_printoptions(precision=2)",
                               lambda ns: torch._tensor_str.PRINT_OPTS.precision),
    "deterministic algorithms": ("torch.use_deterministic_algorithms(True, warn_only=True)",
                                 lambda ns: torch.are_deterministic_algorithms_enabled()),
    "numpy's error handling": ("np.seterr(all='raise')", lambda ns: np.geterr()["divide"]),
    "a warnings filter appended": ("warnings.filterwarnings('error', append=True)",
                                   lambda ns: len(warnings.filters)),
}


def _reset() -> None:
    """The switches the bodies flip, as a fresh session has them (each run starts so: the
    plain run must not read what the magic one left)."""
    torch.set_num_threads(1)
    np.seterr(all="warn", under="ignore")
    torch.set_printoptions(profile="default")
    torch.use_deterministic_algorithms(False)
    torch.nn.modules.module._global_forward_hooks.clear()


@pytest.fixture
def clean():
    threads, filters, err = torch.get_num_threads(), list(warnings.filters), np.geterr()
    _reset()
    yield
    _reset()
    torch.set_num_threads(threads)
    warnings.filters[:] = filters
    np.seterr(**err)


def _after(name: str, magic: bool):
    with warnings.catch_warnings():
        ns: dict = {}
        torch.manual_seed(0)
        _reset()
        exec(SOURCE.replace("{body}", _BODIES[name][0]), ns)
        exec(_CELL, ns)
        if magic:
            try:
                vjp_magic.differentiate(ns["y"], ns["x"])
            except vjp_magic.VJPUsageError:
                pass
        return _BODIES[name][1](ns)


@pytest.mark.parametrize("name", list(_BODIES))
def test_what_a_backward_switches_is_put_back(clean, name):
    magic = _after(name, True)
    assert magic == _after(name, False)


def test_the_users_hooks_stay_and_fire_once_in_their_next_backward(clean):
    ns: dict = {}
    exec(SOURCE.replace("{body}", "W.register_hook(lambda g: g * 0)"), ns)
    exec("fired = []\nW.register_hook(lambda g: fired.append(1))\n" + _CELL, ns)
    r = vjp_magic.differentiate(ns["y"], ns["x"])
    torch.testing.assert_close(r.jacobian("x"), torch.diag(8 * ns["x"].detach()))
    (ns["W"] * 1).sum().backward()
    assert ns["fired"] == [1] and torch.equal(ns["W"].grad, torch.ones(3))


def test_a_hook_on_a_non_leaf_is_taken_back(clean):
    ns: dict = {}
    exec(SOURCE.replace("{body}", "y.register_hook(lambda g: g * 0)"), ns)
    exec(_CELL, ns)
    try:
        vjp_magic.differentiate(ns["y"], ns["x"])
    except vjp_magic.VJPUsageError:
        pass
    assert not ns["y"]._backward_hooks
    x = ns["x"]
    grad, = torch.autograd.grad(ns["y"].sum(), x)
    torch.testing.assert_close(grad, 8 * x.detach())  # d/dx (2x)^2, no hook of theirs left


def test_the_dense_path_takes_no_switches(monkeypatch):
    taken = []
    monkeypatch.setattr(switches, "taken", lambda *a: taken.append(1))
    x = torch.linspace(1., 2., 4, requires_grad=True)
    vjp_magic.differentiate(x.sin() * x.roll(1), x)
    assert taken == []


# -- torch.library: the backward registered with register_autograd ---------------------------

OP = '''
import torch
STAT = torch.zeros(())
@torch.library.custom_op("f5s43::sq_{n}", mutates_args=())
def sq(x: torch.Tensor) -> torch.Tensor:
    return x ** 2
@sq.register_fake
def _(x): return torch.empty_like(x)
def setup(ctx, inputs, output):
    {setup}
    ctx.save_for_backward(inputs[0])
def bwd(ctx, g):
    {body}
    x, = ctx.saved_tensors
    return 2 * x * g
sq.register_autograd(bwd, setup_context=setup)
x = torch.linspace(1., 2., 4, requires_grad=True)
y = sq(x).sin()
'''
_N = iter(range(10 ** 6))


def _op(body="pass", setup="pass") -> dict:
    ns: dict = {}
    exec(OP.replace("{n}", str(next(_N))).replace("{body}", body).replace("{setup}", setup),
         ns)
    return ns


def test_a_custom_ops_write_is_put_back_and_refused_by_the_ops_name():
    ns = _op("STAT.add_(1)")
    with pytest.raises(vjp_magic.VJPUsageError, match=r"f5s43::sq_\d+'s backward writes STAT"):
        vjp_magic.differentiate(ns["y"], ns["x"])
    assert ns["STAT"].item() == 0 and ns["STAT"]._version == 0


def test_a_custom_ops_switches_are_put_back(clean):
    ns = _op("torch.set_num_threads(3)")
    torch.set_num_threads(1)
    vjp_magic.differentiate(ns["y"], ns["x"])
    assert torch.get_num_threads() == 1


def test_what_a_custom_ops_setup_context_reads_is_watched():
    """setup_context writes STAT in the forward (the cell's one run); the backward reads
    nothing global, yet STAT is kept: the backward's ctx may hold what setup_context read."""
    ns = _op(body="ctx.stat.add_(1)", setup="STAT.add_(1); ctx.stat = STAT")
    assert ns["STAT"].item() == 1
    with pytest.raises(vjp_magic.VJPUsageError, match="backward writes STAT"):
        vjp_magic.differentiate(ns["y"], ns["x"])
    assert ns["STAT"].item() == 1


def test_a_torch_library_op_with_register_autograd_on_a_library():
    lib = torch.library.Library(f"f5s43lib{next(_N)}", "DEF")
    name = f"{lib.ns}::cube"
    lib.define("cube(Tensor x) -> Tensor")
    torch.library.impl(name, "cpu", lib=lib)(lambda x: x ** 3)
    stat = torch.zeros(())

    def backward(ctx, g):
        stat.add_(1)
        return 3 * ctx.x ** 2 * g
    torch.library.register_autograd(name, backward, lib=lib,
                                    setup_context=lambda ctx, inputs, output:
                                    setattr(ctx, "x", inputs[0]))
    x = torch.linspace(1., 2., 4, requires_grad=True)
    y = getattr(torch.ops, lib.ns).cube(x)
    with pytest.raises(vjp_magic.VJPUsageError, match=f"{name}'s backward writes"):
        vjp_magic.differentiate(y, x)
    assert stat.item() == 0


def test_users_code_names_torchs_own_functions_none():
    from torch.utils.checkpoint import CheckpointFunction

    from vjp_magic.core.backward_writes import users_code
    assert users_code(CheckpointFunction) == (None, [])
    ns = _op()
    name, functions = users_code(ns["y"].grad_fn.next_functions[0][0]._forward_cls)
    assert name.startswith("f5s43::sq_") and functions == [ns["bwd"], ns["setup"]]


def test_a_vmapped_functions_backward_is_the_users():
    """functorch's generated Function (torch.func.vmap over F.apply) runs F's backward: its
    write is put back and refused by F's name."""
    stat = torch.zeros(())

    class F(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            stat.add_(1)
            return g * 2
    x = torch.linspace(1., 2., 4, requires_grad=True)
    y = torch.func.vmap(F.apply)(x.reshape(2, 2)).reshape(4)
    with pytest.raises(vjp_magic.VJPUsageError, match="F's backward writes"):
        vjp_magic.differentiate(y, x)
    assert stat.item() == 0 and stat._version == 0
