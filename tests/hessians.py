"""What the second-derivative tests share: a leaf tensor of a dtype, and Hessians compared
within that dtype's tolerance, the weights of a layer, a result's display, and whether a
message is one sentence."""
from __future__ import annotations

import re

import torch

from vjp_magic.render.view import View

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-9)}


def leaf(values, dtype):
    return torch.as_tensor(values, dtype=dtype).clone().requires_grad_(True)


def close(actual, expected, dtype):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected.to(actual.dtype), **TOL[dtype])


W = torch.tensor([[0.5, -1.0, 0.3], [1.5, 0.2, -0.7], [-0.4, 0.8, 1.1], [0.9, -0.3, 0.6]])


def displayed(h):
    h.view = View()
    return h._repr_mimebundle_()


def one_sentence(text: str) -> bool:
    return len(re.findall(r"[.!?](\s|$)", text.strip())) == 1
