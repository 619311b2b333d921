"""The per-sample anchor the tests compare with: each sample's cross-entropy gradient by
``torch.func.vmap(grad(...))``, named as ``named_parameters()`` names them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap


def vmap_grad(model, data, targets) -> dict:
    """name → (B, *parameter shape): the gradient of sample b's loss in row b."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), t.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, data, targets)


class Attention(nn.Module):
    """nn.MultiheadAttention (4 features, 2 heads) over a (B, T, 4) batch, then a Linear of
    the mean over T: ``batch_first`` as the layer takes it, ``masked``: the last position of
    every sample is key padding."""

    def __init__(self, batch_first, masked=False):
        super().__init__()
        self.batch_first, self.masked = batch_first, masked
        self.a, self.l = nn.MultiheadAttention(4, 2, batch_first=batch_first), nn.Linear(4, 3)

    def forward(self, x):
        mask = None
        if self.masked:  # the last position of every sample is padding
            mask = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
            mask[:, -1] = True
        if self.batch_first:
            h = self.a(x, x, x, key_padding_mask=mask, need_weights=False)[0]
        else:
            s = x.transpose(0, 1)
            h = self.a(s, s, s, key_padding_mask=mask, need_weights=False)[0].transpose(0, 1)
        return self.l(h.mean(1))
