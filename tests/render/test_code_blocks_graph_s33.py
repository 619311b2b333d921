"""Every code block a display shows runs when pasted one after another (session 33, G11): a
plain input's block keeps the graph when a sparse input's colour loop comes after it on the
same graph (it called backward without retain_graph, so the colour loop raised 'Trying to
backward through the graph a second time')."""
from __future__ import annotations

import torch

from jupyter_harness import python_fences
from sparse_cells_s31 import bundle


def test_a_plain_block_before_a_colour_loop_keeps_the_graph(ip, run_ok, run_vjp):
    run_ok("c = torch.rand(400, requires_grad=True)\nu = torch.rand(400, requires_grad=True)")
    magics = ip.magics_manager.registry["VJPMagics"]
    before, magics.height = magics.height, 1300  # tall enough to show both blocks
    try:
        r = run_vjp("y = c**2 + (u.roll(1) - 2*u + u.roll(-1))", "--wrt c,u")
    finally:
        magics.height = before
    blocks = python_fences(bundle(r)["text/markdown"])
    assert len(blocks) >= 2, blocks  # c's block and u's colour loop
    c = ip.user_ns["c"]
    for k, code in enumerate(blocks):  # pasted one after another, as the display shows them
        result = ip.run_cell(code)
        assert result.success, (code, result.error_in_exec)
        if k == 0:  # c's block: with v = 1, c.grad is dy/dc = 2c
            torch.testing.assert_close(c.grad, 2 * c.detach())
