"""A re-analysed graph sizes its first batched chunk by the plain pass time of its last run:
no one-vector plain chunk the second time; the numbers stay torch.func.jacrev's."""
import torch

import vjp_magic
from vjp_magic.core import derivatives


def _dense(seed: int):
    torch.manual_seed(seed)
    w1, w2 = torch.randn(64, 64) / 8, torch.randn(64, 64) / 8
    return lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v))


def _plain_chunks(monkeypatch) -> list:
    calls = []
    real = derivatives._looped_grad
    monkeypatch.setattr(derivatives, "_looped_grad",
                        lambda o, i, g: calls.append(len(g)) or real(o, i, g))
    return calls


def test_second_run_of_a_graph_has_no_timing_chunk(monkeypatch):
    f = _dense(0)
    x = torch.randn(64, dtype=torch.float32, requires_grad=True)
    derivatives._pass_seconds.clear()
    calls = _plain_chunks(monkeypatch)
    first = vjp_magic.differentiate(f(x), x, seed=1)
    assert calls[:1] == [1]  # nothing remembered: one plain pass, timed
    calls.clear()
    again = vjp_magic.differentiate(f(x), x, seed=2)
    assert calls == []  # the remembered time sized one batched chunk for all 64
    expected = torch.func.jacrev(f)(x.detach())
    torch.testing.assert_close(first.jacobian("x"), expected)
    torch.testing.assert_close(again.jacobian("x"), expected)
    assert x.grad is None


def test_another_shape_is_not_taken_for_the_same_graph(monkeypatch):
    f = _dense(1)
    x = torch.randn(64, requires_grad=True)
    derivatives._pass_seconds.clear()
    vjp_magic.differentiate(f(x), x, seed=1)
    calls = _plain_chunks(monkeypatch)
    w = torch.randn(64, 32) / 6
    x2 = torch.randn(32, requires_grad=True)  # another input shape: nothing remembered
    r = vjp_magic.differentiate(torch.tanh(w @ torch.tanh(x2)), x2, seed=1)
    assert calls[:1] == [1]
    torch.testing.assert_close(
        r.jacobian("x"), torch.func.jacrev(lambda v: torch.tanh(w @ torch.tanh(v)))(x2.detach()))


def test_the_memory_keeps_no_tensor():
    f = _dense(2)
    x = torch.randn(64, requires_grad=True)
    derivatives._pass_seconds.clear()
    vjp_magic.differentiate(f(x), x, seed=1)
    assert len(derivatives._pass_seconds) == 1

    def tensors(value):
        if isinstance(value, (tuple, list)):
            return any(tensors(v) for v in value)
        return isinstance(value, torch.Tensor)

    assert not any(tensors(key) for key in derivatives._pass_seconds)  # no graph pinned
