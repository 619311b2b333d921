"""The colours a sparse display states in closed form are r.gradients' (session 33, F2; G10's
Laplacian): class c of the formula the code computes is r.gradients[name][c], so the code's
g[c] is vᵀJ for v = r.gradients[name][c]. Truth: torch.autograd.functional.jacobian."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

import vjp_magic


def laplacian(u):
    q = F.pad(u, (1, 1, 1, 1))
    return q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:] - 4 * u + u**3


def test_the_stated_colours_number_the_classes_as_r_gradients_does():
    u = torch.rand(40, 40, generator=torch.Generator().manual_seed(0)).requires_grad_()
    lap = laplacian(u)
    r = vjp_magic.differentiate(lap, {"u": u}, output_name="lap", seed=0)
    shown = r._repr_mimebundle_()
    markdown = (shown[0] if isinstance(shown, tuple) else shown)["text/markdown"]
    (code,) = re.findall(r"```python\n(.*?)```", markdown, flags=re.S)
    assert "colour = (" in code  # a closed form, not read off the result
    namespace = {"torch": torch, "u": u, "lap": lap, "_": r}
    exec(compile(code, "<shown>", "exec"), namespace)  # noqa: S102 - written to run
    J = jacobian(laplacian, u.detach()).reshape(1600, 1600)
    colour, g = namespace["colour"], namespace["g"]
    assert len(r.gradients["u"]) == 5
    for c, v in enumerate(r.gradients["u"]):
        assert torch.equal(v.reshape(-1) != 0, colour.reshape(-1) == c), c
        torch.testing.assert_close(g[c], v.reshape(-1) @ J)
    u.grad = None
