"""Cut notes and refusal advice name what the cell did, in its own spelling, and advise code
that runs and does what it says (R3-5..R3-9, session 43), more members of each class.

The advice is run in the notebook and the cut checked gone: the advised tensor carries the
graph back to the input (``torch.autograd.grad`` gives the mathematics' derivative). The
Hessian's non-finite note counts as ``torch.autograd.functional.hessian`` does.
"""
from __future__ import annotations

import re

import pytest
import torch

COPIES = "a = torch.randn(3, 4, requires_grad=True)\nb = torch.randn(5, 4, requires_grad=True)"


def _plain(r) -> str:
    return " ".join(r._repr_mimebundle_()["text/plain"].split())


def _refusal(ip, cell: str) -> str:
    result = ip.run_cell(cell)
    assert result.error_in_exec is not None, "the cell was not refused"
    return str(result.error_in_exec)


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
@pytest.mark.parametrize("copy, values", [
    ("torch.tensor(a.detach())", "a"),
    ("torch.tensor(a.detach().numpy())", "a"),
    ("torch.tensor(a.data.tolist())", "a"),
    ("torch.tensor([v.item() for v in a[0]])", "a[0]"),
    ("torch.tensor([a[0, 0].item(), a[1, 1].item()])", "torch.stack([a[0, 0], a[1, 1]])"),
])
def test_the_advised_fix_for_a_copy_runs_and_keeps_the_graph(ip, run_ok, copy, values):
    run_ok(COPIES)
    message = _refusal(ip, f"%%vjp --wrt a\nc = {copy}\ny = (c * 2).tanh()")
    fix = re.search(r"Keep the computation: (.+?)\.?$", message)
    assert fix, message
    run_ok(fix.group(1))
    ns = ip.user_ns
    torch.testing.assert_close(ns["c"], eval(values, {"torch": torch, "a": ns["a"]}))
    (grad,) = torch.autograd.grad(ns["c"].sum(), ns["a"])  # d sum(c) / da: 1 where c reads a
    assert float(grad.sum()) == ns["c"].numel(), message


def test_the_advised_fix_for_a_nested_tensor_copy_keeps_each_graph(ip, run_ok):
    run_ok(COPIES)
    message = _refusal(ip, "%%vjp --wrt a b\nnt = torch.nested.nested_tensor([a, b], "
                           "layout=torch.jagged)\ny = (nt * 2).values().tanh()")
    assert message.startswith("nt = torch.nested.nested_tensor(...) (line 1)"), message
    fix = re.search(r"Keep the computation: (.+?)\.?$", message)
    run_ok(fix.group(1))
    ns = ip.user_ns
    ga, gb = torch.autograd.grad((ns["nt"].values() * 2).sum(), (ns["a"], ns["b"]))
    torch.testing.assert_close(ga, torch.full((3, 4), 2.0))  # d(2 sum)/da = 2 everywhere
    torch.testing.assert_close(gb, torch.full((5, 4), 2.0))


ENC = ("from torch import nn\ntorch.manual_seed(0)\n"
       "enc = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))\n"
       "a, b = torch.randn(6, 4), torch.randn(6, 4)\n")


@pytest.mark.parametrize("freeze, said", [
    ("for p in enc.parameters():\n    p.requires_grad = False\n", "p.requires_grad = False"),
    ("for p in enc.parameters(): p.requires_grad_(False)\n", "p.requires_grad_(False)"),
])
def test_a_freeze_loop_is_named_with_its_line(ip, run_ok, freeze, said):
    run_ok(ENC)
    thaw = freeze.replace("False", "True")
    r = run_ok(f"%%vjp --wrt enc\n{freeze}za = enc(a)\n{thaw}"
               "losses = (za - enc(b)).pow(2).sum(1)")
    plain = _plain(r)
    line = 2 if "\n    " in freeze else 1
    assert f"{said} on line {line}" in plain and "makes enc(a) a constant" in plain, plain


def test_a_tensor_frozen_by_attribute_is_named(run_ok):
    run_ok("torch.manual_seed(0)\nx = torch.randn(3, 2)\nw = torch.randn(2, requires_grad=True)")
    r = run_ok("%%vjp --wrt w\nw.requires_grad = False\nz = x @ w\nw.requires_grad = True\n"
               "y = z * (x @ w)")
    plain = _plain(r)
    assert "w.requires_grad = False on line 1 makes x @ w a constant" in plain, plain
    x, w = run_ok("x"), run_ok("w")  # the graph as computed: dy_i/dw_j = z_i x_ij, z constant
    torch.testing.assert_close(r.jacobian("w"), (x @ w).unsqueeze(1) * x)


def test_an_in_place_detach_of_a_name_is_taken_apart(run_ok):
    run_ok("torch.manual_seed(0)\nx = torch.randn(4, requires_grad=True)")
    r = run_ok("%%vjp --wrt x\nh = x.sin()\nh.detach_()\ny = h * x")
    plain = _plain(r)
    said = re.search(r"(\S+) on line (\d+) makes (.+?) a constant", plain)
    assert said and "detach_()" in said.group(1) and said.group(3) != said.group(1), plain


@pytest.mark.parametrize("values", ["[0.0, 1.0, 4.0]", "[0.0, 0.0, 4.0]", "[0.0, 0.0, 0.0]"])
@pytest.mark.parametrize("fmt", ["text/plain", "text/markdown", "text/latex"])
def test_the_hessian_non_finite_note_counts_in_words_and_sets_the_name(run_ok, values, fmt):
    """d²/dx_i² of sum(sqrt(x)) = -x_i^(-3/2) / 4: infinite at each x_i = 0, the rest 0."""
    run_ok(f"x = torch.tensor({values}, requires_grad=True)")
    inf = eval(values).count(0.0)
    h = run_ok("%hessian x.sqrt().sum() wrt x")
    text = " ".join(h._repr_mimebundle_()[fmt].split())
    name = "x" if fmt == "text/plain" else "$x$"
    word = "entry" if inf == 1 else "entries"
    assert f"with respect to {name} have {inf} infinite {word}:" in text, text
