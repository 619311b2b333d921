"""One tensor under two names (``b = a``; a layer's parameters under ``enc`` and ``dec.0``; a
list ``[a, a]``): every name gets that tensor's derivatives, as ``torch.autograd.grad`` with
the tensor listed twice gives, on every path that maps user tensors onto replay leaves (the
hook-free graph, per-sample rules and vmap, gradcheck, cuts), and the display says once that
the names are one tensor.

Expected values: loops of ``torch.autograd.grad`` over the output's rows on the graph the
code built, or calculus (d sin a / da = cos a).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import vjp_magic
from vjp_magic.run.cuts import cut_inputs, find_cuts
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.hookfree import analysed_graph, fresh_leaves
from vjp_magic.run.persample import per_sample_jacobians, rules_capture
from vjp_magic.run.record import recording
from vjp_magic.run.replay import aliases, build, distinct, one_tensor_names

B = 40  # samples: over the pipeline's threshold for per-sample gradients


def _rows(output, tensors) -> list[torch.Tensor]:
    """d output[b] / d tensor for every b, stacked per tensor, by plain backward passes."""
    flat = output.reshape(-1)
    rows = [torch.autograd.grad(flat[b], tensors, retain_graph=True, allow_unused=True,
                                materialize_grads=True) for b in range(flat.numel())]
    return [torch.stack([row[i] for row in rows]).reshape(tuple(output.shape) + tuple(t.shape))
            for i, t in enumerate(tensors)]


def _model():
    torch.manual_seed(0)
    enc = nn.Linear(3, 4)
    dec = nn.Sequential(enc, nn.Tanh(), nn.Linear(4, 2))
    data, targets = torch.randn(B, 3), torch.randint(0, 2, (B,))
    return enc, dec, data, targets


def _shared_names(enc, dec) -> dict:
    """enc's parameters under two names each, and dec's own last layer."""
    return {"enc.weight": enc.weight, "enc.bias": enc.bias, "dec.0.weight": dec[0].weight,
            "dec.0.bias": dec[0].bias, "dec.2.weight": dec[2].weight}


def test_names_of_one_tensor():
    a, w = torch.ones(2), torch.zeros(2)
    inputs = {"a": a, "w": w, "b": a}
    assert list(distinct(inputs)) == ["a", "w"]
    assert aliases(inputs) == {"a": "a", "w": "w", "b": "a"}
    assert one_tensor_names(inputs) == [["a", "b"]]
    assert one_tensor_names({"a": a, "w": w}) == []


def test_fresh_leaves_one_per_tensor():
    a, w = torch.ones(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    leaves = fresh_leaves({"a": a, "b": a, "w": w})
    assert leaves["a"] is leaves["b"] and leaves["a"] is not a
    assert leaves["w"] is not leaves["a"] and leaves["a"].is_leaf


def test_the_analysed_graph_reads_every_name():
    a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    with recording() as record:
        y = torch.sin(a) * a
    graph = analysed_graph(record, {"p": a, "q": a}, y)
    assert graph.replayed
    got = torch.autograd.grad(graph.output.sum(), [graph.inputs["p"], graph.inputs["q"]],
                              allow_unused=True)
    expected = torch.cos(a.detach()) * a.detach() + torch.sin(a.detach())
    for g in got:
        torch.testing.assert_close(g, expected)


def test_a_replay_given_one_value_per_tensor():
    """Names of one tensor given different values: the first name's is read, never a mix."""
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    with recording() as record:
        y = a * 3
    replay = build(record, {"p": a, "q": a}, y)
    torch.testing.assert_close(replay.run({"p": torch.ones(2), "q": torch.zeros(2)}),
                               torch.full((2,), 3.0))
    torch.testing.assert_close(replay.run({"q": torch.ones(2)}), torch.full((2,), 3.0))


def test_per_sample_gradients_under_both_names():
    """By the rules on the analysed graph, and by the rules' own replay: each name of a shared
    layer gets the per-sample gradients (was zeros under the first name)."""
    enc, dec, data, targets = _model()
    with recording() as record:
        losses = F.cross_entropy(dec(data), targets, reduction="none")
    inputs = _shared_names(enc, dec)
    expected = dict(zip(inputs, _rows(losses, list(inputs.values()))))
    graph = analysed_graph(record, inputs, losses, interpreter=rules_capture(inputs, losses))
    for found in (per_sample_jacobians(record, inputs, losses, graph=graph),
                  per_sample_jacobians(record, inputs, losses)):
        assert found is not None and list(found) == list(inputs)
        for name, rows in expected.items():
            torch.testing.assert_close(found[name], rows, rtol=1e-5, atol=1e-6)


def test_per_sample_by_vmap_under_both_names():
    """A model without a rule for every parameter (an elementwise scale) goes by vmap."""
    torch.manual_seed(0)
    scale = torch.randn(3, requires_grad=True)
    data = torch.randn(B, 3)
    with recording() as record:
        losses = (torch.tanh(data * scale) ** 2).sum(1)
    inputs = {"scale": scale, "same": scale}
    expected, _ = _rows(losses, [scale, scale])
    found = per_sample_jacobians(record, inputs, losses)
    assert found is not None
    for name in inputs:
        torch.testing.assert_close(found[name], expected, rtol=1e-5, atol=1e-6)


def test_differentiate_a_function_of_a_shared_layer():
    enc, dec, data, targets = _model()
    inputs = _shared_names(enc, dec)
    r = vjp_magic.differentiate(lambda: F.cross_entropy(dec(data), targets, reduction="none"),
                                list(inputs.values()), names=list(inputs))
    losses = F.cross_entropy(dec(data), targets, reduction="none")
    for name, rows in zip(inputs, _rows(losses, list(inputs.values()))):
        torch.testing.assert_close(r.jacobian(name), rows, rtol=1e-5, atol=1e-6)
    assert enc.weight.grad is None


def test_the_note_says_once_which_names_are_one_tensor():
    a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    w = torch.ones(4, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(lambda: torch.sin(a) * w, [a, w, a], names=["p", "w", "q"])
    notes = [n for n in r.notes if "one tensor" in n]
    assert notes == ["p and q are one tensor: each name gets all of its derivatives."]
    text = r._repr_mimebundle_()["text/plain"]
    assert text.count("one tensor") == 1 and "does not depend" not in text
    plain = vjp_magic.differentiate(lambda: torch.sin(a) * w, [a, w], names=["p", "w"])
    assert not any("one tensor" in n for n in plain.notes)


def test_the_note_names_parameters_as_python_reaches_them():
    enc, dec, data, _ = _model()
    names = ["enc.weight", "enc.bias", "dec.0.weight", "dec.0.bias"]
    r = vjp_magic.differentiate(lambda: dec(data[:2]), [enc.weight, enc.bias, enc.weight,
                                                        enc.bias], names=names)
    assert [n for n in r.notes if "one tensor" in n] == [
        "enc.weight and dec[0].weight are one tensor, as are enc.bias and dec[0].bias: each "
        "name gets all of its derivatives."]


def test_two_names_one_spelling():
    """--wrt net net[0].weight: the keys net.0.weight and net[0].weight, one spelling."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    data = torch.randn(2, 3)
    r = vjp_magic.differentiate(lambda: net(data).sum(1), [net[0].weight, net[0].weight],
                                names=["net.0.weight", "net[0].weight"])
    assert [n for n in r.notes if "named twice" in n] == [
        "net[0].weight is named twice: each name gets all of its derivatives."]
    rows, = _rows(net(data).sum(1), [net[0].weight])
    for name in ("net.0.weight", "net[0].weight"):
        torch.testing.assert_close(r.jacobian(name), rows)


def test_gradcheck_checks_both_names():
    a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    with recording() as record:
        y = torch.sin(a) * w
    report = gradcheck(record, {"a": a, "b": a, "w": w}, y)
    assert report.ok is True
    assert list(report.checked) == ["a", "b", "w"] and report.checked["b"] == 4
    assert report.max_error["a"] == report.max_error["b"] < 1e-8


class _Doubled(torch.autograd.Function):
    """x * 2 whose backward is wrong (3 g): a check must fail under every name of x."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 3


def test_gradcheck_fails_under_both_names():
    a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    with recording() as record:
        y = _Doubled.apply(a)
    report = gradcheck(record, {"a": a, "b": a}, y)
    assert report.ok is False and set(report.failed) == {"a", "b"}


def test_a_cut_names_both_names():
    a = torch.linspace(0.1, 1, 4, dtype=torch.float64, requires_grad=True)
    with recording() as record:
        y = a.detach() ** 2 * a
    cuts = find_cuts(record, {"a": a, "b": a}, y)
    assert cuts and cut_inputs(cuts) == {"a", "b"}


def test_a_cell_with_a_shared_layer_per_sample(ip, run_ok):
    """%%vjp --wrt enc dec on per-sample losses (the per-sample path): the same numbers
    under enc.* and dec.0.*, and the note once."""
    run_ok("import torch.nn as nn, torch.nn.functional as F\ntorch.manual_seed(0)\n"
           "enc = nn.Linear(3, 4)\ndec = nn.Sequential(enc, nn.Tanh(), nn.Linear(4, 2))\n"
           f"X, t = torch.randn({B}, 3), torch.randint(0, 2, ({B},))")
    cell = 'losses = F.cross_entropy(dec(X), t, reduction="none")'
    run_ok(cell)
    enc, dec, losses = (ip.user_ns[k] for k in ("enc", "dec", "losses"))
    weight, bias, last = _rows(losses, [enc.weight, enc.bias, dec[2].weight])
    r = run_ok("%%vjp --wrt enc dec\n" + cell)
    for name in ("enc", "dec.0"):
        torch.testing.assert_close(r.jacobian(f"{name}.weight"), weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.jacobian(f"{name}.bias"), bias, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.jacobian("dec.2.weight"), last, rtol=1e-5, atol=1e-6)
    assert enc.weight.grad is None
    assert sum("one tensor" in n for n in r.notes) == 1
