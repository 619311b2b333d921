"""A kept graph is freed as the cell's own backward frees it though a hook of the user's sits on
a tensor the cell never touched (s42 left item): a tensor hook on an earlier cell's tensor
(alive, or deleted: only its node holds the hooks), a multi-grad hook. None of those hooks
runs in the freeing pass, and every node the plain pass frees is freed.

Expected: a plain run of the same cells (the later backward's error or none, the hooks'
calls, the ``.grad`` values), PyTorch's own behaviour.
"""
from __future__ import annotations

import pytest
import torch

SETUP = '''
import torch
calls = []
x = torch.linspace(-1, 1, 5, requires_grad=True)
b = x.exp()
'''
HOOKS = {
    "a tensor hook, tensor kept": "b.register_hook(lambda g: calls.append('b'))",
    "a tensor hook, tensor deleted": "b.register_hook(lambda g: calls.append('b'))",
    "two hooks on one tensor": ("b.register_hook(lambda g: calls.append('b1'))\n"
                                "b.register_hook(lambda g: calls.append('b2'))"),
    "a multi-grad hook": ("torch.autograd.graph.register_multi_grad_hook("
                          "(b,), lambda gs: calls.append('multi'))"),
    "a bound method hook": ("class Noter:\n    def note(self, g):\n        calls.append('m')\n"
                            "b.register_hook(Noter().note)"),
    "a partial hook": ("import functools\n"
                       "b.register_hook(functools.partial(lambda tag, g: calls.append(tag), 'p'))"),
    "a post-accumulate-grad hook on a leaf": (
        "w = torch.ones(5, requires_grad=True)\n"
        "w.register_post_accumulate_grad_hook(lambda t: calls.append('acc'))\n"
        "b = b * w"),
    "a hook on a deeper tensor": ("b2 = b * 1\n"
                                  "b2.register_hook(lambda g: calls.append('deep'))\n"
                                  "b = b2"),
}
EARLIER = "c = b.exp()\nd = b.cos()\n"  # c: on the cell's graph; d: on b's node only
CELL = "y = (c * x.sin()).sin()\ny.sum().backward()\n"


def _outcome(ip, hooks: str, magic: bool, deleted: bool):
    assert ip.run_cell(SETUP).success
    assert ip.run_cell(hooks).success
    assert ip.run_cell(EARLIER + ("del b\n" if deleted else "")).success
    ran = ip.run_cell(("%%vjp\n" if magic else "") + CELL)  # (%%vjp: refused, the hook is
    assert ran.success or "your hook" in str(ran.error_in_exec)  # on the output's graph)
    first = ip.user_ns["x"].grad.clone()
    later = ip.run_cell("d.sum().backward()")  # through b's node: freed by the cell's pass
    error = type(later.error_in_exec).__name__ if later.error_in_exec else None
    return error, list(ip.user_ns["calls"]), first, ip.user_ns["x"].grad.clone()


@pytest.mark.parametrize("kind", list(HOOKS))
def test_a_hook_on_a_tensor_the_cell_never_touched_does_not_stop_the_freeing(ip, kind):
    deleted = "deleted" in kind or "deeper" in kind
    plain = _outcome(ip, HOOKS[kind], magic=False, deleted=deleted)
    assert plain[0] == "RuntimeError"  # PyTorch freed b's node in the cell's pass
    magic = _outcome(ip, HOOKS[kind], magic=True, deleted=deleted)
    assert magic[:2] == plain[:2]
    torch.testing.assert_close(magic[2], plain[2])
    torch.testing.assert_close(magic[3], plain[3])
