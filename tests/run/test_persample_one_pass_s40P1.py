"""The per-layer rules take one backward pass where the graph proves the samples apart
(:func:`vjp_magic.run.expanded.proved_apart`: every layer output's batch axis carried alone to
the losses' axis 0, no custom Function, no node without an axis rule), and keep the weighted
check passes everywhere else: a custom Function or a node without a rule on the way, and a
coupling hidden inside a custom Function is still caught.

Expected per-sample gradients: the float64 Jacobian of the B per-sample losses of the true
batch function (``torch.autograd.functional.jacobian``; row b is sample b's gradient), and
``torch.func.vmap(grad(...))`` for the independent models.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic
from pass_counter import counted
from per_sample_reference import vmap_grad
from vjp_magic.core import axisflow
from vjp_magic.run import expanded, persample
from vjp_magic.run.record import recording

B = 48


class _Identity(torch.autograd.Function):
    """x itself, through a custom backward (no coupling: each row's gradient is its own)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


class _Coupled(torch.autograd.Function):
    """x + eps · the batch mean of x (every sample reads every other), with its true backward."""

    eps = 1e-3

    @staticmethod
    def forward(ctx, x):
        return x + _Coupled.eps * x.mean(0, keepdim=True)

    @staticmethod
    def backward(ctx, grad):
        return grad + _Coupled.eps * grad.mean(0, keepdim=True)


class _Mlp(nn.Module):
    """Linear, ``between`` (relu, or relu then a custom Function or a pad), Linear."""

    def __init__(self, between: str = "plain"):
        super().__init__()
        self.between = between
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(8 if between == "pad" else 7, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.between == "identity":
            h = _Identity.apply(h)
        elif self.between == "coupled":
            h = _Coupled.apply(h)
        elif self.between == "pad":  # ConstantPadNd: a node without an axis rule
            h = F.pad(h, (0, 1))
        return self.b(h)


def _model(between: str, dtype=torch.float64):
    torch.manual_seed(0)
    model = _Mlp(between).to(dtype)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(B, 5, generator=g, dtype=dtype), \
        torch.randint(0, 3, (B,), generator=g)


def _reference(model, x, t) -> dict:
    names, params = zip(*model.named_parameters())

    def losses(*values):
        found = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        return F.cross_entropy(found, t, reduction="none")

    return dict(zip(names, torch.autograd.functional.jacobian(losses, params)))


def _rules(model, x, t):
    """(the rules' per-sample gradients on their own replay, the backward passes they made,
    whether :func:`expanded.proved_apart` held)."""
    with recording() as record:
        losses = F.cross_entropy(model(x), t, reduction="none")
    params = dict(model.named_parameters())
    proved = []
    original = expanded.proved_apart

    def spy(value, outs):
        proved.append(original(value, outs))
        return proved[-1]
    expanded.proved_apart = spy
    try:
        found, passes = counted(lambda: persample.per_sample_jacobians(record, params, losses))
    finally:
        expanded.proved_apart = original
    return found, passes, proved


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_proved_mlp_takes_one_pass_and_equals_vmap_grad(dtype):
    model, x, t = _model("plain", dtype)
    found, passes, proved = _rules(model, x, t)
    assert proved == [True] and passes == 1
    assert found is not None and found.separated
    expected = vmap_grad(model, x, t)
    tolerance = {} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for name, value in expected.items():
        torch.testing.assert_close(found[name], value, **tolerance)


def test_an_unruled_node_keeps_the_check_passes():
    model, x, t = _model("pad")
    found, passes, proved = _rules(model, x, t)
    assert proved == [False]
    assert passes == 1 + len(expanded.check_weights(B, torch.float64))  # ones + check passes
    assert found is not None  # nothing couples the samples: the check passes accept
    for name, value in _reference(model, x, t).items():
        torch.testing.assert_close(found[name], value, rtol=1e-10, atol=1e-12)


def test_the_pad_has_no_axis_rule():
    """The premise of the ``pad`` case: its node claims no carry (else pick another op)."""
    losses, outs = _by_hand("pad")
    assert axisflow.prove(losses, outs[0][0]).unknown


def _by_hand(between: str):
    """(the per-sample losses, the two Linear outputs with their batch axis 0), by hand."""
    model, x, t = _model(between)
    h1 = model.a(x)
    h = torch.relu(h1)
    if between == "identity":
        h = _Identity.apply(h)
    elif between == "coupled":
        h = _Coupled.apply(h)
    elif between == "pad":
        h = F.pad(h, (0, 1))
    h2 = model.b(h)
    return F.cross_entropy(h2, t, reduction="none"), [(h1, 0), (h2, 0)]


def test_a_custom_function_keeps_the_check_passes():
    """(A cell with a custom Function never reaches the rules today: its backward is user
    code, so neither replay nor own graph is taken; the proof refuses it all the same.)"""
    losses, outs = _by_hand("identity")
    assert not expanded.proved_apart(losses, outs)
    found, passes = counted(lambda: expanded._output_gradients(losses, outs, keep_graph=True))
    assert passes == 1 + len(expanded.check_weights(B, torch.float64))
    expected = torch.autograd.grad(losses.sum(), [out for out, _ in outs])
    for got, want in zip(found[0], expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_coupling_hidden_in_a_custom_function_is_still_caught():
    losses, outs = _by_hand("coupled")
    assert not expanded.proved_apart(losses, outs)
    assert expanded._output_gradients(losses, outs, keep_graph=True) is None
    model, x, t = _model("coupled")
    r = vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model, names="m")
    for name, value in _reference(model, x, t).items():
        torch.testing.assert_close(r.derivatives[f"m.{name}"], value, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_whole_analysis_takes_one_pass_on_a_proved_graph(dtype):
    model, x, t = _model("plain", dtype)
    r, passes = counted(lambda: vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model, names="m"))
    assert passes == 2  # the unweighted pass to the layer outputs and probe 0's own (G1-4)
    tolerance = {} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for name, value in _reference(model.double(), x.double(), t).items():
        torch.testing.assert_close(r.derivatives[f"m.{name}"].double(), value,
                                   **tolerance)


def test_user_state_is_as_a_plain_run_leaves_it():
    model, x, t = _model("plain", torch.float32)
    model.a.weight.grad = torch.full_like(model.a.weight, 3.0)
    before = {n: (p.detach().clone(), p._version) for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model, names="m")
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model.a.weight.grad, torch.full_like(model.a.weight, 3.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "a.weight")
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name][0]) and p._version == before[name][1]
        assert not p._backward_hooks if hasattr(p, "_backward_hooks") else True
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


class _Encoder(nn.Module):
    """A batch-first encoder layer (the attention rule reads its batch on axis 1), a head."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


MODELS = {
    "cnn with pooling": (lambda: nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)), (1, 8, 8)),
    "encoder layer": (_Encoder, (5, 8)),
}


@pytest.mark.parametrize("name", MODELS)
def test_proved_conv_and_attention_models_take_one_pass_exactly(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn((12,) + shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3, (12,), generator=g)
    found, passes, proved = _rules(model, x, t)
    assert proved == [True] and passes == 1
    for key, value in _reference(model, x, t).items():
        torch.testing.assert_close(found[key], value, rtol=1e-10, atol=1e-12)


def test_more_layer_outputs_than_the_proof_walks_keep_the_check_passes():
    """The proof walks the graph once per layer output: past ``PROOF_WALKS`` it is not tried
    and the check passes run (the same values)."""
    torch.manual_seed(0)
    layers = [nn.Linear(5, 5) for _ in range(expanded.PROOF_WALKS)] + [nn.Linear(5, 3)]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.Tanh())][:-1]).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3, (B,), generator=g)
    found, passes, proved = _rules(model, x, t)
    assert proved == [False]
    assert passes == 1 + len(expanded.check_weights(B, torch.float64))
    for key, value in _reference(model, x, t).items():
        torch.testing.assert_close(found[key], value, rtol=1e-10, atol=1e-12)


def test_a_nan_gradient_refuses_the_one_pass_as_the_check_passes_do(monkeypatch):
    model, x, t = _model("plain")
    x[3, 2] = float("nan")  # sample 3's layer-output gradients are NaN
    h1 = model.a(x)
    h2 = model.b(torch.relu(h1))
    losses, outs = F.cross_entropy(h2, t, reduction="none"), [(h1, 0), (h2, 0)]
    assert expanded.proved_apart(losses, outs)
    probe = torch.ones(B, dtype=torch.float64).index_fill_(0, torch.arange(0, B, 2), -2.0)
    assert expanded._output_gradients(losses, outs, True, probe) is None
    monkeypatch.setattr(expanded, "proved_apart", lambda value, outs: False)
    assert expanded._output_gradients(losses, outs, True, probe) is None
