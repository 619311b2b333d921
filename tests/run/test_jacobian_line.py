"""``%jacobian``'s line (``run/jacobian_line.py``): OUTPUT read as Python however it is
written, INPUTs after ``wrt``, and options that cannot be read refused with a message."""
from __future__ import annotations

import pytest
import torch
from coached import refused
from torch.autograd.functional import jacobian as reference_jacobian

JACOBIAN_EXPRESSIONS = [  # (line, function of the input, input name): '-' inside is Python
    ("torch.clamp(t, -0.5, 0.5) wrt t", lambda t: torch.clamp(t, -0.5, 0.5), "t"),
    ("torch.where(t < 0, -t, t**2) wrt t", lambda t: torch.where(t < 0, -t, t**2), "t"),
    ("-p 3 torch.maximum(t, -t) wrt t", lambda t: torch.maximum(t, -t), "t"),
    ("--threshold 4 -t.flip(0) wrt t", lambda t: -t.flip(0), "t"),
    ("-p3 torch.clamp(t, min=-1) * t[-1] wrt t", lambda t: torch.clamp(t, min=-1) * t[-1], "t"),
    ("--precision=2 torch.nn.functional.leaky_relu(t, 0.1) + (t > 0) wrt t",
     lambda t: torch.nn.functional.leaky_relu(t, 0.1) + (t > 0), "t"),
    ("t.cumsum(-1)", lambda t: t.cumsum(-1), "t"),  # no 'wrt': inputs from the graph
]


@pytest.mark.parametrize("line, fn, name", JACOBIAN_EXPRESSIONS)
def test_jacobian_reads_the_expression_as_python(ip, run_ok, line, fn, name):
    run_ok("t = torch.tensor([-1.5, -0.2, 0.3, 2.0], requires_grad=True)")
    r = run_ok(f"%jacobian {line}")
    t = ip.user_ns["t"]
    torch.testing.assert_close(r.jacobian(name), reference_jacobian(fn, t.detach()))
    assert t.grad is None


def test_jacobian_several_inputs_after_wrt_with_commas_and_brackets(assert_tensor, run_ok):
    run_ok("a = torch.tensor([1., -2.], requires_grad=True)\n"
           "bs = [torch.tensor([3., 4.], requires_grad=True)]")
    r = run_ok("%jacobian (a - bs[0]).abs() * -1 wrt a, bs[0]")
    assert list(r.derivatives) == ["a", "bs[0]"]
    # -|a - b| with a < b: d/da = 1, d/db = -1
    assert_tensor(r.jacobian("a"), torch.eye(2))
    assert_tensor(r.jacobian("bs[0]"), -torch.eye(2))


@pytest.mark.parametrize("line, words", [
    ("--bogus q", ["Unknown option --bogus", "--symbolic", "-p N"]),
    ("--precision q", ["--precision takes a whole number"]),
    ("-p x q", ["-p takes a whole number"]),
    ("--threshold=many q", ["--threshold takes a whole number", "'many'"]),
    ("-p 40 q", ["from 1 to 17"]),
    ("", ["Name the output"]),
    ("q wrt", ["inputs after"]),
    ("wrt q", ["output before"]),
])
def test_jacobian_options_that_cannot_be_read(ip, run_ok, capsys, line, words):
    run_ok("q = torch.ones(2, requires_grad=True)")
    msg = refused(ip, capsys, f"%jacobian {line}", keep=["q"])
    for word in words:
        assert word in msg, msg


def test_jacobian_help_still_documents_the_syntax(ip):
    doc = ip.magics_manager.magics["line"]["jacobian"].__doc__
    assert "wrt" in doc and "--symbolic" in doc and "torch.clamp(x, -1, 1)" in doc


def test_vjp_flags_take_expressions_with_spaces_and_quotes(ip, run_vjp, run_ok):
    run_ok("torch.manual_seed(1)\nnet = torch.nn.Sequential(torch.nn.Linear(3, 2))\n"
           "u = torch.randn(4, 3)")
    r = run_vjp("outs = {'hidden layer': net(u)}\nscore = outs['hidden layer'].sum()",
                line="--wrt net[0].weight net[0].bias --of outs['hidden layer']")
    assert r.output_name == "outs['hidden layer']"
    assert r.derivatives["net[0].weight"].shape[-2:] == (2, 3)
    u, w, b = ip.user_ns["u"], ip.user_ns["net"][0].weight, ip.user_ns["net"][0].bias
    ref = reference_jacobian(lambda b: u @ w.detach().T + b, b.detach())
    torch.testing.assert_close(r.jacobian("net[0].bias"), ref)
    assert w.grad is None
