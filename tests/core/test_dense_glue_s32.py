"""The dense row's glue made leaner (issue 20, s32): the graph's fingerprint read once per
analysis and the next run's chunk sized by it as before; no given Jacobians, no look at them;
the vectorised-replay hint still for per-sample losses of a module, never for a tensor input.
Expected values from torch.func.jacrev."""
from __future__ import annotations

import torch

import vjp_magic
from vjp_magic.core import analysis, derivatives, given


def _dense(n=24):
    g = torch.Generator().manual_seed(4)
    w1 = torch.randn(n, n, generator=g) / n**0.5
    w2 = torch.randn(n, n, generator=g) / n**0.5
    x = torch.randn(n, generator=g, requires_grad=True)
    return (lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v))), x


def test_the_plain_pass_is_remembered_under_the_graphs_fingerprint():
    f, x = _dense()
    derivatives._pass_seconds.clear()
    y = f(x)
    r = analysis.differentiate(y, x, keep_graph=True)
    torch.testing.assert_close(r.derivatives["x"], torch.func.jacrev(f)(x.detach()))
    workspace = analysis.axisflow.prove(y, x).workspace
    assert derivatives.remembered_seconds(derivatives.pass_key(y, [x], workspace)) is not None


def test_no_given_jacobians_are_not_looked_at(monkeypatch):
    f, x = _dense()

    def split(*args):
        raise AssertionError("no given Jacobian to split")

    monkeypatch.setattr(given, "split", split)
    r = vjp_magic.differentiate(f(x), x)
    torch.testing.assert_close(r.derivatives["x"], torch.func.jacrev(f)(x.detach()))


def test_the_replay_hint_is_for_modules_only():
    model = torch.nn.Linear(3, 1)
    data = torch.randn(40, 3)
    losses = model(data).squeeze(1).tanh()
    hinted = vjp_magic.differentiate(losses, model)
    assert any("pass the computation as a function" in n for n in hinted.notes)
    x = torch.randn(40, requires_grad=True)
    plain = vjp_magic.differentiate(x.tanh(), x)
    assert not any("pass the computation as a function" in n for n in plain.notes)


def test_the_batching_vector_of_a_vector_output_is_a_tensor_of_its_own():
    # no view, so a plain pass takes it as it is (a view would be copied first); the same
    # draw as the generator's, shaped like the output
    from vjp_magic.core import checked_batches
    from vjp_magic.core.probes import probe_generator, probe_values

    for shape in [(7,), (3, 5)]:
        y = torch.zeros(shape)
        v = checked_batches.batching_vector(y, 9)
        values = probe_values(torch.float32)
        codes = torch.randint(len(values), (y.numel(),),
                              generator=probe_generator(9, "batching"))
        assert v.shape == y.shape
        assert torch.equal(v.reshape(-1), values[codes])
        assert (v._base is None) == (len(shape) == 1)
