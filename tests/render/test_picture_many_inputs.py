"""--picture on a module of many parameter tensors: the few with the largest derivatives (by
torch.autograd.grad's norms), captioned in the cell's spelling, and one line for the rest."""
from __future__ import annotations

import pytest
import torch

import vjp_magic

pytest.importorskip("matplotlib")


def test_the_few_largest_are_pictured_and_the_rest_summarised():
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(6)])
    xb = torch.randn(3, 6)
    params = {f"net.{k}": v for k, v in net.named_parameters()}
    loss = net(xb).pow(2).sum()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()),
                                                 retain_graph=True)))
    r = vjp_magic.differentiate(loss, params)
    r.view.pictured = True
    pictures = r.view.pictures(r)
    drawn = [p for p in pictures if p.png is not None]
    top = sorted(grads, key=lambda k: -float(grads[k].norm()))[:len(drawn)]
    assert 1 <= len(drawn) <= 3 and len(pictures) == len(drawn) + 1
    for picture, name in zip(drawn, top):
        spelled = name.replace("net.", "net[", 1).replace(".", "].", 1)
        assert f"∂y/∂{spelled} " in picture.alt, (picture.alt, name)
        assert "net." not in picture.alt
    note = pictures[-1].alt
    assert f"the other {12 - len(drawn)}" in note and "r.picture(" in note


def test_nothing_is_drawn_where_no_input_asks_for_a_picture():
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(6)])
    params = {f"net.{k}": v for k, v in net.named_parameters()}
    r = vjp_magic.differentiate(net(torch.randn(2, 3)).pow(2).sum(), params)
    r.view.jacobian = True  # %jacobian: a picture only where the Jacobian is too large
    assert max(p.numel() for p in params.values()) <= r.view.options.threshold
    assert r.view.pictures(r) == []
