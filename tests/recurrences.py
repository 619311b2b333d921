"""A scalar recurrence whose Jacobian is known in closed form, for the underflow tests."""
from __future__ import annotations

import torch


def recurrence(x: torch.Tensor, decay: float) -> torch.Tensor:
    """h[t] = decay·h[t-1] + x[t]: dh[t]/dx[s] = decay^(t-s) for s ≤ t (lower-triangular)."""
    states, h = [], torch.zeros((), dtype=x.dtype)
    for t in range(x.shape[0]):
        h = decay * h + x[t]
        states.append(h)
    return torch.stack(states)
