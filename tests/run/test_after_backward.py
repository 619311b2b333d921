"""After ``backward`` (issue 21, item 7): ``%jacobian``/``%hessian`` on an output whose graph
the ``%%vjp`` cell's own ``backward`` freed rebuild it from that cell's record (no user code
runs again), kept only while the output lives; a graph a plain cell freed gets one sentence
with the fix; ``.data``/``requires_grad`` mistakes are coached, and a user's error shows only
the user's frames.

Expected derivatives come from ``torch.autograd.functional`` or the mathematics."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.autograd.functional import hessian, jacobian

CUBE_CELL = """calls = []
def f(t):
    calls.append(1)   # the user's Python: must run once
    return t**3
x = torch.tensor([1., 2., 3.], requires_grad=True)
y = f(x)
y.sum().backward()"""


def magics(ip):
    return ip.magics_manager.registry["VJPMagics"]


def test_jacobian_after_the_cells_own_backward(ip, run_vjp, run_ok, assert_tensor):
    run_vjp(CUBE_CELL)
    x = ip.user_ns["x"]
    assert_tensor(x.grad, [3.0, 12.0, 27.0])  # the cell's own backward
    r = run_ok("%jacobian y x")
    torch.testing.assert_close(r.jacobian("x"), jacobian(lambda t: t**3, x.detach()))
    h = run_ok("%hessian y x")
    assert_tensor(h.derivatives["x"], 6 * x.detach())  # (x³)'' = 6x at each point
    torch.testing.assert_close(h.hessian("x")[1], hessian(lambda t: t[1] ** 3, x.detach()))
    s = run_ok("%jacobian y.sum() wrt x")  # an expression of the freed output
    assert_tensor(s.jacobian("x"), [3.0, 12.0, 27.0])
    assert ip.user_ns["calls"] == [1]  # f ran once, in the cell
    assert_tensor(x.grad, [3.0, 12.0, 27.0])  # never changed by the magics


def test_a_models_losses_after_backward(ip, run_vjp, run_ok):
    run_vjp("torch.manual_seed(0)\nmlp = torch.nn.Sequential(torch.nn.Linear(3, 4), "
            "torch.nn.Tanh(), torch.nn.Linear(4, 1))\ndata = torch.randn(5, 3, "
            "requires_grad=True)\nlosses = mlp(data).squeeze(1) ** 2\nlosses.sum().backward()")
    mlp, data = ip.user_ns["mlp"], ip.user_ns["data"]
    r = run_ok("%jacobian losses data")
    expected = jacobian(lambda t: mlp(t).squeeze(1) ** 2, data.detach())
    torch.testing.assert_close(r.jacobian("data"), expected)
    h = run_ok("%hessian losses.sum() wrt data")
    expected = hessian(lambda t: (mlp(t).squeeze(1) ** 2).sum(), data.detach())
    torch.testing.assert_close(h.hessian("data"), expected, rtol=1e-4, atol=1e-5)


def test_hooks_do_not_fire_when_the_record_is_replayed(ip, run_vjp, run_ok):
    run_vjp("fired = []\nx = torch.tensor([1., 2.], requires_grad=True)\n"
            "h = x * 2\nh.register_hook(lambda g: fired.append(1))\n"
            "y = h.exp()\ny.sum().backward()")
    assert ip.user_ns["fired"] == [1]
    r = run_ok("%jacobian y x")
    x = ip.user_ns["x"].detach()
    torch.testing.assert_close(r.jacobian("x"), torch.diag(2 * torch.exp(2 * x)))
    assert ip.user_ns["fired"] == [1]


# -- bounded: the output's life, the last cell ----------------------------------------------
def test_the_record_does_not_keep_the_output_alive(ip, run_vjp):
    run_vjp(CUBE_CELL)
    kept = magics(ip)._last_cell
    assert kept is not None and kept.output is ip.user_ns["y"]
    alive = weakref.ref(ip.user_ns["y"])
    ip.run_cell("del y")
    gc.collect()
    assert alive() is None and kept.output is None and kept.record() is None


def test_a_new_cell_replaces_the_kept_record(ip, run_vjp):
    run_vjp(CUBE_CELL)
    first = magics(ip)._last_cell
    run_vjp("z = torch.ones(2, requires_grad=True)\nw = z * 3")
    assert first.record() is None and magics(ip)._last_cell is not first


def test_an_output_computed_by_a_later_plain_cell_says_the_fix(ip, run_vjp, run_ok,
                                                                usage_error):
    run_vjp(CUBE_CELL)
    run_ok("z = (x**2).sum()\nz.backward()")  # a plain cell frees z's graph
    message = usage_error("%jacobian z x")
    assert "graph of z was freed" in message and "retain_graph=True" in message
    assert "compute z again" in message


# -- .data / requires_grad mistakes, coached; the user's frames only --------------------------
def test_data_in_the_cell_is_coached(ip, usage_error):
    message = usage_error("%%vjp\nx = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                          "y = x.data**2")
    assert "x.data on line 2" in message and "Use x itself: y = x**2" in message
    assert "Traceback" not in message and "y" in ip.user_ns


@pytest.mark.parametrize("cell, words", [
    ("x = torch.ones(3)\ny = (x**2).sum()\ny.backward()",
     ["y.backward() on line 3", "x = torch.ones(3, requires_grad=True)"]),
    ("x = torch.tensor([1., 2.], requires_grad=True)\nw = x.data * 2\nw.sum().backward()",
     ["w.sum().backward() on line 3", "x.data on line 2", "w = x * 2"]),
])
def test_backward_without_a_graph_is_coached(ip, capsys, cell, words):
    result = ip.run_cell(f"%%vjp\n{cell}")
    error = result.error_in_exec
    assert isinstance(error, RuntimeError) and "does not require grad" in str(error)
    shown_text = capsys.readouterr().out + capsys.readouterr().err
    for word in words:
        assert word in str(error), error
    assert "Traceback" not in shown_text and "vjp_magic" not in shown_text
    assert "x" in ip.user_ns


@pytest.mark.parametrize("cell", [
    "x = torch.ones(3, requires_grad=True)\ny = torch.nn.functional.softmax(x, dim=4)",
    "x = torch.ones(3, requires_grad=True)\nx.register_hook(lambda g: 1 / 0)\n"
    "y = (x**2).sum()\ny.backward()",
])
def test_a_users_error_shows_the_users_frames_only(ip, capsys, cell):
    result = ip.run_cell(f"%%vjp\n{cell}")
    assert result.error_in_exec is not None
    shown_text = capsys.readouterr().out
    plain = ip.run_cell(cell)  # the same cell, plain: the frames a user expects
    plain_text = capsys.readouterr().out
    assert type(plain.error_in_exec) is type(result.error_in_exec)
    for frame in ("vjp_magic", "overrides.py", "in handle_torch_function("):
        assert frame not in shown_text, shown_text
    shown_files = [line.split(",")[0] for line in shown_text.splitlines()
                   if line.startswith("File ")]
    plain_files = [line.split(",")[0] for line in plain_text.splitlines()
                   if line.startswith("File ")]
    assert shown_files == plain_files
