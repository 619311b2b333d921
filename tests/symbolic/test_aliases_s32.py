"""One tensor under two names (b = a; --wrt a b): --symbolic gives each name the tensor's own
formula (SymPy's derivative of b*sin(a) with a = b is a cos a + sin a), agreeing with
autograd, not 0 under one name beside a disagreement warning."""
from __future__ import annotations

import torch


def test_both_names_of_one_tensor_get_its_formula(ip):
    ip.run_cell("import torch\na = torch.linspace(0.1, 1, 3, dtype=torch.float64, "
                "requires_grad=True)\nb = a")
    r = ip.run_cell_magic("vjp", "--wrt a b --symbolic", "y = b*torch.sin(a)")
    a = ip.user_ns["a"].detach()
    expected = a * torch.cos(a) + torch.sin(a)
    for name in ("a", "b"):
        torch.testing.assert_close(r.derivatives[name], expected)
    shown = r._repr_mimebundle_()
    text = (shown[0] if isinstance(shown, tuple) else shown)["text/plain"]
    assert text.count("a*cos(a) + sin(a)") == 2, text
    assert "disagree" not in text.lower() and "= 0\n" not in text, text
