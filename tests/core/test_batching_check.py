"""The batching check of the exact path (core.checked_batches): the probe rule's verdict, with
its own vector where no structure is probed; a wrong batching rule still caught."""
import pytest
import torch

from vjp_magic import differentiate
from vjp_magic.core import checked_batches, derivatives
from vjp_magic.core.probes import probe_agrees, probe_values


def _dense(seed, dtype=torch.float32, n=64):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    w2 = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    x = torch.randn(n, generator=g, dtype=dtype, requires_grad=True)
    return (lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v))), x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(6))
def test_verdict_is_the_probe_rules(dtype, seed):
    f, x = _dense(seed, dtype)
    y = f(x)
    flat = torch.func.jacrev(f)(x.detach())
    v = checked_batches.batching_vector(y, seed)
    (vjp,) = torch.autograd.grad(y, x, v)
    wrong_entry = vjp.clone()
    wrong_entry[seed] += 1e-3 * vjp.abs().max()
    nan = vjp.clone()
    nan[1] = float("nan")
    for got in (vjp, wrong_entry, nan, vjp.flip(0)):
        assert checked_batches.batching_agrees(flat, v, got) == probe_agrees(
            flat, v, got, (), nonfinite_agree=True)
    assert checked_batches.batching_agrees(flat, v, vjp)
    assert not checked_batches.batching_agrees(flat, v, wrong_entry)


def test_transposed_layout_and_many_columns_off():
    f, x = _dense(3)
    y = f(x)
    flat = torch.func.jacrev(f)(x.detach()).t().contiguous().t()  # column-major
    v = checked_batches.batching_vector(y, 1)
    (vjp,) = torch.autograd.grad(y, x, v)
    assert checked_batches.batching_agrees(flat, v, vjp)
    assert not checked_batches.batching_agrees(flat, v, vjp * 1.01)


def test_vector_values_shape_and_seed():
    y = torch.zeros(5, 7)
    a, b = (checked_batches.batching_vector(y, 11) for _ in range(2))
    assert a.shape == y.shape and torch.equal(a, b)
    assert not torch.equal(a, checked_batches.batching_vector(y, 12))
    assert set(a.reshape(-1).tolist()) <= set(probe_values(torch.float32).tolist())


def test_a_wrong_batched_jacobian_is_recomputed(monkeypatch):
    # a batching rule that gets a row's signs wrong (as vmap does for cdist(p=1)): the plain
    # probe sees it whatever its values (none is 0), plain passes compute those rows again
    f, x = _dense(5)
    original = derivatives._vmap_grad

    def signs_wrong(output, inputs, grad_outputs):
        grads = original(output, inputs, grad_outputs)
        return [torch.cat([-g[:1], g[1:]]) for g in grads]

    monkeypatch.setattr(derivatives, "_vmap_grad", signs_wrong)
    # tanh and mv batch right under vmap: no node trusted, so the wrong rule is probed
    monkeypatch.setattr(checked_batches, "TRUSTED_BATCHING", frozenset())
    monkeypatch.setattr(derivatives.Batching, "__init__", lambda self: (
        setattr(self, "methods", [signs_wrong]), setattr(self, "vectorised", False)) and None)
    r = differentiate(f(x), x, seed=4)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(f)(x.detach()))


def test_dense_result_unchanged_by_the_own_vector():
    f, x = _dense(7)
    r = differentiate(f(x), x, seed=9)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(f)(x.detach()))
    assert r.inputs["x"].evidence == "proved" and r.point_axes["x"] == ()
    assert x.grad is None


def test_an_output_of_several_axes(strategy):
    # the probe flattened as the Jacobian's rows are (output entries first)
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda t: torch.tanh(t @ t.T)  # noqa: E731
    r = differentiate(fn(x), x, **strategy)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(fn)(x.detach()))
