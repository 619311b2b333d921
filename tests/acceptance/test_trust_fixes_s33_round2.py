"""Trust fixes, session 33 round 2 (T6): the class of each fix, beyond the example that found it.

1. A cell's own batched backward (``autograd.grad(is_grads_batched=True)``, a vectorized
   ``jacobian`` / ``hessian``, ``torch.func.vmap`` over ``autograd.grad``) runs under ``%%vjp``
   exactly as in a plain cell: its gradients live only inside the vmap, so the log records
   that it could not copy them (``BackwardCall.batched``) and coaches nothing on that call.

Expected values: mathematics (d/dx 2 sin x = 2 cos x, d²/dx² sin²x = 2 cos 2x) and what the
same line raises in a plain cell.

2. While a cell runs, only the passes its own thread starts go to the guard's engine
   (core/torch_api.engine_wrapped): another thread's ``backward`` / ``autograd.grad`` is
   neither recorded as the cell's nor kept; its graph is freed as PyTorch frees it.
3. Every entry point on a user's own graph whose leaves carry a hook torch.autograd.grad
   cannot run (register_multi_grad_hook, mode "all") gives a short usage error, read before
   any pass (run/hookfree.refuse_grad_only_hooks; core/torch_api.graph_usage_error where the
   pass itself meets it), never PyTorch's traceback; a %%vjp cell differentiates its replay.
"""
from __future__ import annotations

import threading

import pytest
import torch
from IPython.core.error import UsageError

import vjp_magic
from vjp_magic.run.guard import keep_graphs

_CELL = "x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x.sin() * 2\n"


@pytest.mark.parametrize("line", [
    "g, = torch.autograd.grad(y, x, torch.eye(4), is_grads_batched=True)",
    "g = torch.func.vmap(lambda v: torch.autograd.grad(y, x, v, retain_graph=True)[0])"
    "(torch.eye(4))",
    "g = torch.autograd.functional.jacobian(lambda t: t.sin() * 2, x, vectorize=True)",
    "g = torch.autograd.functional.jacobian(lambda t: t.sin() * 2, x, vectorize=True, "
    "strategy='forward-mode')",
])
def test_a_batched_backward_in_the_cell_gives_the_users_jacobian(ip, run_ok, line):
    r = run_ok("%%vjp --of y\n" + _CELL + line)
    x = ip.user_ns["x"].detach()
    torch.testing.assert_close(ip.user_ns["g"], torch.diag(2 * x.cos()))
    torch.testing.assert_close(r.derivatives["x"], 2 * x.cos())


def test_a_vectorized_hessian_in_the_cell_gives_the_users_hessian(ip, run_ok):
    run_ok("%%vjp\n" + _CELL +
           "h = torch.autograd.functional.hessian(lambda t: (t.sin() ** 2).sum(), x, "
           "vectorize=True)")
    x = ip.user_ns["x"].detach()
    torch.testing.assert_close(ip.user_ns["h"], torch.diag(2 * torch.cos(2 * x)))


def test_a_batched_backward_of_the_wrong_shape_fails_as_in_a_plain_cell(ip):
    line = "g, = torch.autograd.grad(y, x, torch.ones(3, 5), is_grads_batched=True)"
    plain = ip.run_cell(_CELL + line)
    magic = ip.run_cell("%%vjp\n" + _CELL + line)
    assert type(magic.error_in_exec) is type(plain.error_in_exec) is RuntimeError
    assert str(magic.error_in_exec) == str(plain.error_in_exec)


def test_a_batched_call_is_recorded_as_not_copied():
    x = torch.linspace(-1, 1, 4, requires_grad=True)
    y = x.sin() * 2
    with keep_graphs() as log:
        torch.autograd.grad(y, x, torch.eye(4), is_grads_batched=True, retain_graph=True)
        torch.autograd.grad(y, x, torch.ones(4))
    batched, plain = log.records
    assert batched.batched and batched.gradients is None
    assert not plain.batched
    torch.testing.assert_close(plain.gradients[0], torch.ones(4))


def _in_a_thread(work) -> None:
    errors = []

    def run():
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - handed to the test's own thread
            errors.append(error)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("call", ["backward", "grad"])
def test_another_threads_pass_is_not_the_cells(call):
    w = torch.linspace(-1, 1, 4, requires_grad=True)
    z = (w ** 3).sum()  # a custom Function would make the guard keep a cell's graph
    passes = {"backward": lambda: z.backward(),
              "grad": lambda: torch.autograd.grad(z, w)}
    x = torch.linspace(-1, 1, 3, requires_grad=True)
    with keep_graphs() as log:
        _in_a_thread(passes[call])
        (x ** 2).sum().backward()
    assert [c.tensors[0].shape for c in log.records] == [torch.Size([])]
    assert log.records[0].tensors[0] is not z
    with pytest.raises(RuntimeError, match="second time"):
        z.backward()  # freed, as PyTorch frees it
    if call == "backward":
        torch.testing.assert_close(w.grad, 3 * w.detach() ** 2)


def test_another_threads_backward_in_a_vjp_cell_with_a_custom_function(ip, run_ok):
    """The guard keeps a cell's graph through a custom Function; not another thread's."""
    run_ok("class Cube(torch.autograd.Function):\n"
           "    @staticmethod\n"
           "    def forward(ctx, t):\n"
           "        ctx.save_for_backward(t)\n"
           "        return t ** 3\n"
           "    @staticmethod\n"
           "    def backward(ctx, g):\n"
           "        t, = ctx.saved_tensors\n"
           "        return 3 * t ** 2 * g\n"
           "import threading\n"
           "w = torch.linspace(-1, 1, 4, requires_grad=True)\n"
           "z = (Cube.apply(w) * w).sum()\n"
           "worker = threading.Thread(target=z.backward)")
    run_ok("%%vjp\nworker.start(); worker.join(10)\n"
           "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = Cube.apply(x)")
    w = ip.user_ns["w"].detach()
    torch.testing.assert_close(ip.user_ns["w"].grad, 4 * w ** 3)
    again = ip.run_cell("z.backward()")
    assert isinstance(again.error_in_exec, RuntimeError)


def _multi_hooked(on_leaf_only: bool):
    x = torch.tensor([1., 2., 3.], requires_grad=True)
    w = torch.tensor([4., 5., 6.], requires_grad=True)
    fired = []
    hooked = (x, w) if on_leaf_only else (x * 1, w)  # a non-leaf with the leaf w
    handle = torch.autograd.graph.register_multi_grad_hook(hooked, fired.append)
    return x, w, hooked, fired, handle


_APIS = {
    "differentiate": lambda y, x: vjp_magic.differentiate(y, x),
    "hessian": lambda y, x: vjp_magic.hessian((y ** 2).sum(), x),
    "check": lambda y, x: vjp_magic.check(torch.ones(3), y, x),
    "dependency": lambda y, x: vjp_magic.dependency(y, x),
    "sparse_jacobian": lambda y, x: vjp_magic.sparse_jacobian(y, x),
}


@pytest.mark.parametrize("on_leaf_only", [True, False])
@pytest.mark.parametrize("api", list(_APIS))
def test_a_multi_grad_hook_on_a_leaf_is_a_short_message(api, on_leaf_only):
    x, w, hooked, fired, handle = _multi_hooked(on_leaf_only)
    try:
        y = hooked[0] * w
        try:
            _APIS[api](y, x)  # PyTorch runs it (as any hook on a user's own graph)
        except vjp_magic.VJPUsageError as error:
            assert fired == []  # refused before any pass
            assert "register_multi_grad_hook" in str(error)
            assert api not in ("differentiate", "hessian", "check") or on_leaf_only \
                or str(error).startswith("a tensor of shape (3,) it was computed from")
        else:
            assert api in ("dependency", "sparse_jacobian") and not on_leaf_only
    finally:
        handle.remove()


def test_a_multi_grad_hook_on_non_leaves_only_is_no_refusal():
    """PyTorch runs such a hook in autograd.grad: on the user's own graph the pass stops
    before it (s35 T11: no hook of the user's runs in the analysis); a function passed is
    recorded and its replay, without the hook, differentiated."""
    x = torch.tensor([1., 2., 3.], requires_grad=True)
    a, b = x * 2, x * 3
    fired = []
    handle = torch.autograd.graph.register_multi_grad_hook((a, b), lambda g: fired.append(g))
    try:
        with pytest.raises(vjp_magic.VJPUsageError, match="your hook"):
            vjp_magic.differentiate(a * b, x)
        assert not fired
        r = vjp_magic.differentiate(lambda: (x * 2) * (x * 3), x)
        torch.testing.assert_close(r.derivatives["x"], 12 * x.detach())
    finally:
        handle.remove()


def test_jacobian_magic_names_the_hooked_input(ip, run_ok):
    run_ok("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
           "fired = []\n"
           "h = torch.autograd.graph.register_multi_grad_hook((x,), fired.append)\n"
           "y = x.sin()")
    try:
        r = ip.run_cell("%jacobian y x")
        assert isinstance(r.error_in_exec, UsageError)
        assert str(r.error_in_exec).startswith("x carries a hook")
        assert ip.user_ns["fired"] == []
    finally:
        ip.user_ns["h"].remove()
