"""Adversarial review, session 30 (second pass): caches keyed by a cell's or a line's text
(core/cell.py parse_cell, magics/options.py read_cell_line) must not give a cell whose text
is the same but whose namespace differs a stale answer. Expected values: jacrev."""
from __future__ import annotations

import torch

BODY = "%%vjp --wrt x\ny = torch.sin(x) * w\n"


def _jac(x, w):
    return torch.func.jacrev(lambda t: torch.sin(t) * w)(x)


def test_same_text_new_namespace_gets_fresh_derivatives(ip, run_ok):
    for n, scale in ((3, 1.0), (5, -2.0), (3, 7.0)):
        x = torch.linspace(0.1, 1, n, dtype=torch.float64, requires_grad=True)
        w = torch.full((n,), scale, dtype=torch.float64)
        ip.user_ns.update(x=x, w=w)
        r = run_ok(BODY)
        torch.testing.assert_close(r.jacobian("x"), _jac(x.detach(), w))
        assert x.grad is None


def test_same_text_where_a_name_becomes_an_input(ip, run_ok):
    """w a constant, then w a tensor that requires grad: the second run differentiates it."""
    x = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    ip.user_ns.update(x=x, w=torch.ones(4, dtype=torch.float64))
    body = "%%vjp\ny = torch.sin(x) * w\n"
    assert set(run_ok(body).derivatives) == {"x"}
    w = torch.linspace(2, 3, 4, dtype=torch.float64, requires_grad=True)
    ip.user_ns["w"] = w
    r = run_ok(body)
    assert set(r.derivatives) == {"x", "w"}
    torch.testing.assert_close(r.jacobian("w"), torch.diag(torch.sin(x.detach())))


def test_a_line_read_before_keeps_no_shared_state(ip, run_ok):
    """The same --wrt line twice, the first answer's options changed by nothing the user sees."""
    x = torch.linspace(0.1, 1, 3, dtype=torch.float64, requires_grad=True)
    ip.user_ns.update(x=x, w=torch.ones(3, dtype=torch.float64))
    first = run_ok(BODY)
    second = run_ok(BODY)
    torch.testing.assert_close(first.jacobian("x"), second.jacobian("x"))
    torch.testing.assert_close(second.jacobian("x"), torch.diag(torch.cos(x.detach())))
