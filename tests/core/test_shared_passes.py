"""One backward pass serves every input: inputs whose pairings have the same output point axes
share their component VJPs, their probes and their checks (module parameters, many tensors
and no batch axis, cost B passes and a few probes in all). Passes are counted at autograd's
engine; expected numbers come from a loop of torch.autograd.grad or
torch.autograd.functional.jacobian, in float64."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic.core import analysis, derivatives, strategies
from vjp_magic.core.probes import probe_plan
from pass_counter import counted

PROBES = probe_plan(torch.float64).probes  # probe 0 and the confirming ones




def _mlp(batch: int, widths=(6, 5, 7, 9, 4, 3)):
    """Five linear layers (10 parameter tensors), per-sample losses (B,), float64."""
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    net = nn.Sequential(*layers[:-1]).double()
    data = torch.randn(batch, widths[0], dtype=torch.float64, generator=g)
    targets = torch.randint(0, widths[-1], (batch,), generator=g)
    losses = nn.functional.cross_entropy(net(data), targets, reduction="none")
    return net, losses


def _looped(losses, params: dict) -> dict:
    """Per-sample gradients from one torch.autograd.grad per sample."""
    rows = [torch.autograd.grad(losses[i], list(params.values()), retain_graph=True)
            for i in range(losses.numel())]
    return {name: torch.stack(column) for name, column in zip(params, zip(*rows))}


@pytest.mark.parametrize("batched", [True, False])
def test_ten_parameter_tensors_cost_b_passes_and_a_probe(batched):
    batch = 8
    net, losses = _mlp(batch)
    params = dict(net.named_parameters())
    assert len(params) == 10
    r, passes = counted(lambda: analysis.differentiate(
        losses, params, exact_up_to=0, batched=batched, keep_graph=True, seed=0))
    # one pass per sample for all ten tensors at once (batched: fewer), and probe 0 where a
    # vectorised run is to be checked (a proved structure needs no other)
    assert passes <= batch + 1
    expected = _looped(losses, params)
    for name in params:
        assert r.inputs[name].pairing == ()
        torch.testing.assert_close(r.inputs[name].derivatives, expected[name])


def test_parameters_shaped_like_the_batch_are_judged_together():
    # widths of 8 at B = 8: the shapes propose pairing the batch axis with a parameter's
    # axis 0; the probe rejects it for every tensor at once, the rows of J that propose the
    # next pairing are read for all of them at once, then B passes serve all ten
    batch = 8
    net, losses = _mlp(batch, widths=(6, 8, 8, 8, 8, 3))
    params = dict(net.named_parameters())
    r, passes = counted(lambda: analysis.differentiate(
        losses, params, exact_up_to=0, batched=False, keep_graph=True, seed=0))
    assert any(item.rejected for item in r.inputs.values())
    rows = 4  # structure.row_indices: at most 4 rows of J
    # B passes, one for the rejected pairing's component, the rows, the probes
    assert passes <= batch + 1 + rows + PROBES
    expected = _looped(losses, params)
    for name in params:
        assert r.inputs[name].pairing == ()
        torch.testing.assert_close(r.inputs[name].derivatives, expected[name])


def test_ten_parameter_tensors_on_the_exact_path_too():
    batch = 8
    net, losses = _mlp(batch)
    params = dict(net.named_parameters())
    r, passes = counted(lambda: analysis.differentiate(losses, params, keep_graph=True))
    assert passes <= batch + 3
    expected = _looped(losses, params)
    for name in params:
        torch.testing.assert_close(r.inputs[name].derivatives, expected[name])


def test_chunks_from_plain_passes_are_not_checked_as_batched(monkeypatch):
    # where no vectorised backward works (each raises at once here), every chunk comes from
    # plain passes: each method is tried once, not per chunk, and no batching check (and no
    # per-tensor recomputation) follows. BatchNorm in training mode, float32: its per-sample
    # derivatives cancel, and the probe rule's float32 tolerance may not hold for them
    tried = []

    def refused(output, inputs, grad_outputs):
        tried.append(grad_outputs.shape[0])
        raise RuntimeError("no batching rule here")
    monkeypatch.setattr(derivatives, "_vmap_grad", refused)
    monkeypatch.setattr(derivatives, "_legacy_batched_grad", refused)
    for module in (derivatives, strategies):  # chunks of max_chunk = 2 vectors: four
        monkeypatch.setattr(module, "CHUNK_SECONDS", 1e9)
    torch.manual_seed(5)
    batch = 8
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                        nn.Linear(4 * 25, 3))
    data = torch.randn(batch, 2, 5, 5)
    targets = torch.randint(0, 3, (batch,))
    losses = nn.functional.cross_entropy(net(data), targets, reduction="none")
    params = dict(net.named_parameters())
    r, passes = counted(lambda: analysis.differentiate(losses, params, exact_up_to=0,
                                                       keep_graph=True, max_chunk=2))
    assert len(tried) == 2  # vmap once, is_grads_batched once
    assert passes == batch  # one per sample: no probe (nothing vectorised to check)
    expected = _looped(losses, params)
    for name in params:
        torch.testing.assert_close(r.inputs[name].derivatives, expected[name],
                                   rtol=1e-4, atol=1e-6)


def _spy(monkeypatch) -> list:
    """The tensors and point axes of every call to component_vjps."""
    calls = []
    real = strategies.component_vjps

    def spy(output, tensors, point_out, *args, **kwargs):
        calls.append((len(tensors), tuple(point_out), kwargs.get("batched")))
        return real(output, tensors, point_out, *args, **kwargs)
    monkeypatch.setattr(strategies, "component_vjps", spy)
    return calls


def test_two_inputs_of_a_product_share_every_pass(monkeypatch):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    calls = _spy(monkeypatch)
    # graph proof off: both pairings probed, each probe one backward for both inputs
    r, passes = counted(lambda: analysis.differentiate(
        x * w, {"x": x, "w": w}, graph_proof=False, exact_up_to=0, seed=0))
    assert r.inputs["x"].pairing == r.inputs["w"].pairing == ((0, 0), (1, 1))
    assert calls == [(2, (0, 1), True)]  # one component pass for both
    assert passes == 1 + PROBES  # not 1 + 1 + 2 · (PROBES − 1)
    torch.testing.assert_close(r.derivatives["x"], w.detach())
    torch.testing.assert_close(r.derivatives["w"], x.detach())


def test_an_input_whose_pairing_fails_moves_on_alone(monkeypatch):
    # y[b, i] = x[b, i] · w[b, i] + 0.1 · x[b + 1, i]: rows are not points for x (a hidden
    # coupling the probe finds), they are for w
    g = torch.Generator().manual_seed(12)
    x0 = torch.randn(6, 3, dtype=torch.float64, generator=g)
    w0 = torch.randn(6, 3, dtype=torch.float64, generator=g)

    def f(x, w):
        return x * w + 0.1 * torch.roll(x, -1, 0)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    calls = _spy(monkeypatch)
    r = analysis.differentiate(f(x, w), {"x": x, "w": w}, graph_proof=False, exact_up_to=0)
    assert r.inputs["w"].pairing == ((0, 0), (1, 1))
    assert ((0, 0), (1, 1)) in r.inputs["x"].rejected
    assert 0 not in r.inputs["x"].pairing.in_axes
    assert calls[0] == (2, (0, 1), True)  # both computed together first
    assert all(n == 1 for n, _, _ in calls[1:])  # then x alone
    jx, jw = reference_jacobian(f, (x0, w0))
    torch.testing.assert_close(r.jacobian("x"), jx)
    torch.testing.assert_close(r.jacobian("w"), jw)


def test_batching_bugs_are_recomputed_together(monkeypatch):
    # vmap over autograd.grad gets torch.cdist(p=1)'s signs wrong; a plain backward does not:
    # both inputs' batched derivatives fail the plain probe, and the components a vectorised
    # backward computed are computed again by plain passes, each for both inputs
    g = torch.Generator().manual_seed(13)
    a0 = torch.randn(6, 2, dtype=torch.float64, generator=g)
    b0 = torch.randn(6, 2, dtype=torch.float64, generator=g)

    def f(a, b):
        return torch.cdist(a * b, a + b, p=1)
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    redone = []
    real = strategies.plain_components

    def spy(output, tensors, point_out, start, stop):
        redone.append((len(tensors), start, stop))
        return real(output, tensors, point_out, start, stop)
    monkeypatch.setattr(strategies, "plain_components", spy)
    calls = _spy(monkeypatch)
    r = analysis.differentiate(f(a, b), {"a": a, "b": b}, exact_up_to=0, seed=0)
    ja, jb = reference_jacobian(f, (a0, b0))
    torch.testing.assert_close(r.jacobian("a"), ja)
    torch.testing.assert_close(r.jacobian("b"), jb)
    assert all(n == 2 for n, _, _ in calls)  # the components run for both at once
    assert redone and all(n == 2 for n, _, _ in redone)  # each redone pass serves both
    assert sum(stop - start for _, start, stop in redone) <= 36  # no component twice
