"""The cells and helpers of session 31's adversarial review of sparse displays (issue 20):
the stencils and the gather a student types, the display's code as copied from the markdown,
and the analytic Jacobians the tests compare with. Used by tests/acceptance/
test_adversary_s31_ux_sparse.py and test_adversary_s31_ux_screens.py."""
from __future__ import annotations

import re

import torch

TERMINAL = 100  # columns a terminal gives the plain rendering
TRIDIAGONAL = """import torch.nn.functional as F
x = torch.linspace(0, 1, {n}, requires_grad=True)
p = F.pad(x, (1, 1))
y = p[:-2] - 2*p[1:-1] + p[2:] + x**3"""
CYCLIC = """x = torch.linspace(0, 1, {n}, requires_grad=True)
y = x.roll(1) - 2*x + x.roll(-1) + x**3"""
LAPLACIAN = """import torch.nn.functional as F
u = torch.rand({n}, {n}, requires_grad=True)
q = F.pad(u, (1, 1, 1, 1))
lap = q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:] - 4*u + u**3"""
GATHER = """torch.manual_seed(0)
idx = torch.randint(0, 50000, (100000,))
x = torch.rand(50000, requires_grad=True)
y = x[idx] * x[(idx + 7) % 50000]"""


def bundle(result) -> dict:
    bundle = result._repr_mimebundle_()
    return bundle[0] if isinstance(bundle, tuple) else bundle


def plain(result) -> str:
    return bundle(result)["text/plain"]


def flat(text: str) -> str:
    return " ".join(text.split())


def shown_code(result) -> str:
    """The display's code, as the student copies it from the markdown's fenced block."""
    blocks = re.findall(r"```python\n(.*?)```", bundle(result)["text/markdown"], flags=re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


def stencil_1d(x: torch.Tensor, cyclic: bool) -> torch.Tensor:
    """The analytic Jacobian of x[i-1] - 2 x[i] + x[i+1] + x[i]**3 (dense, small n only)."""
    n = x.numel()
    j = torch.diag(-2 + 3 * x.detach() ** 2)
    j += torch.diag(torch.ones(n - 1), 1) + torch.diag(torch.ones(n - 1), -1)
    if cyclic:
        j[0, n - 1] += 1
        j[n - 1, 0] += 1
    return j


def rows_from_compressed(g: torch.Tensor, colour: torch.Tensor, pattern: torch.Tensor):
    """J[p, q] = g[colour[p], q] on the pattern's nonzeros (the display's own last comment)."""
    p, q = pattern.nonzero(as_tuple=True)
    return p, q, g[colour[p], q]




TALL = {
    "cyclic tridiagonal, 10^5": CYCLIC.format(n=10**5),
    "5-point Laplacian, 100^2": LAPLACIAN.format(n=100),
    "two width-5 Conv1d, L = 4096": "import torch.nn as nn\n"
    "x = torch.randn(1, 1, 4096, requires_grad=True)\nconv = nn.Conv1d(1, 1, 5, padding=2)\n"
    "y = conv(torch.tanh(conv(x)))",
    "batch leak y[t] <- x[t-1], B = 64": "torch.manual_seed(0)\n"
    "x = torch.randn(64, 8, requires_grad=True)\nW = torch.randn(8, 3)\n"
    "z = (x @ W).tanh()\ny = z + torch.cat([torch.zeros(1, 3), z[:-1]]) * 0.1",
}
