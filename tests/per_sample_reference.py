"""The per-sample anchor the tests compare with: each sample's cross-entropy gradient by
``torch.func.vmap(grad(...))``, named as ``named_parameters()`` names them."""
from __future__ import annotations

import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def vmap_grad(model, data, targets) -> dict:
    """name → (B, *parameter shape): the gradient of sample b's loss in row b."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), t.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, data, targets)
