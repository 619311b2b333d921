"""Autograd's global modes the user set for their own code, off for the analysis' own work.

A notebook may leave ``torch.autograd.set_detect_anomaly(True)`` on (debugging NaNs) or enter
``torch.autograd.graph.saved_tensors_hooks`` / ``save_on_cpu`` around its cells. The cell runs
under them as it would without vjp_magic; the analysis' own replays and passes must not:
anomaly mode raises on a NaN that a probe's 0 times an infinite derivative makes (the
derivative shown is inf, as the cell's own backward gives it), and the user's pack/unpack
hooks would count, move or change the analysis' saved tensors. :func:`quiet_autograd` turns
both off and puts them back as they were, whatever happens inside. Likewise grad mode: called
inside ``torch.no_grad()`` / ``inference_mode()`` (or after ``torch.set_grad_enabled(False)``),
the analysis' own passes still build their graphs (a Hessian's ``create_graph`` pass read
all zeros without one).
"""
from __future__ import annotations

import contextlib

import torch

_hooks = torch._C._autograd  # the stack saved_tensors_hooks pushes onto (no public reader)


@contextlib.contextmanager
def quiet_autograd():
    """Anomaly detection off, no default saved-tensor hooks, grad mode on and inference mode
    off inside; all restored after (also as a decorator)."""
    anomaly = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    popped = []
    # (older PyTorch, before 2.6, has no reader of the stack: its hooks are left in place)
    top = getattr(_hooks, "_top_saved_tensors_default_hooks", lambda _: None)
    while (hooks := top(True)) is not None:
        popped.append(hooks)
        _hooks._pop_saved_tensors_default_hooks()
    torch.set_anomaly_enabled(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():  # our passes build graphs
            yield
    finally:
        torch.set_anomaly_enabled(*anomaly)
        for pack, unpack in reversed(popped):
            _hooks._push_saved_tensors_default_hooks(pack, unpack)


__all__ = ["quiet_autograd"]
