"""A cut through a callable a reentrant checkpoint is given, where the block is reached only by
a global name inside it (a lambda, a function defined in the cell): the same one walk of what
an object holds (core.reach) that the backward-write guard uses, reads names the code loads
(s42 left item). Expected: the cut names m[0]'s parameters; derivatives of the graph as
computed (zero for the cut-off block, ``torch.func.jacrev`` for the kept one).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.run.cuts import CutKind

SETUP = '''import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
block = m[:2]
x, t = torch.randn(5, 4), torch.randint(0, 3, (5,))'''
LOSS = 'losses = F.cross_entropy(m[2](h), t, reduction="none")'
BY_NAME = {
    "a lambda": "h = checkpoint(lambda v: block(v), x, use_reentrant=True)",
    "a cell's function": ("def run_block(v):\n    return block(v)\n"
                          "h = checkpoint(run_block, x, use_reentrant=True)"),
    "a lambda's default": "h = checkpoint(lambda v, b=block: b(v), x, use_reentrant=True)",
    "a lambda indexing the global": ("h = checkpoint(lambda v: m[1](m[0](v)), x, "
                                     "use_reentrant=True)"),  # m[2]: not read, not cut
}
pytestmark = pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")


def _kept_block(m, x, t) -> torch.Tensor:
    h = torch.tanh(F.linear(x, m[0].weight, m[0].bias)).detach()
    return torch.func.jacrev(lambda w: F.cross_entropy(
        F.linear(h, w, m[2].bias.detach()), t, reduction="none"))(m[2].weight.detach())


@pytest.mark.parametrize("spelling", list(BY_NAME))
def test_a_block_read_by_a_global_name_inside_the_callable_is_a_cut(ip, run_ok, spelling):
    run_ok(SETUP)
    r = run_ok(f"%%vjp --wrt m\n{BY_NAME[spelling]}\n{LOSS}")
    cuts = [c for c in r.cuts if c.kind is CutKind.FUNCTION]
    assert len(cuts) == 1, r.cuts
    assert set(cuts[0].inputs) == {"m.0.weight", "m.0.bias"}, cuts
    assert float(r.derivatives["m.0.weight"].abs().max()) == 0.0  # the graph as computed
    ns = ip.user_ns
    torch.testing.assert_close(r.derivatives["m.2.weight"], _kept_block(ns["m"], ns["x"], ns["t"]))
    plain = r._repr_mimebundle_()["text/plain"]
    assert "does not depend on m[0]" not in plain, plain
