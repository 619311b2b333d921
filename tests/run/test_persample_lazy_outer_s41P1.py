"""Session 41, P1: a Linear weight's per-sample gradients G (one position per sample: g_b ⊗ a_b)
are kept as their factors and written when first read (:mod:`vjp_magic.core.outer`); probe 0
judges vᵀG from the factors at the cell, and the written G is held to that same bound when it
is written. Checked here: no G is written during the cell; the values read equal
``torch.func.vmap(grad(...))`` in float64 (and the Jacobian of the true batch function where a
custom Function couples the samples); a G written wrong from right factors is never handed
over (it raises); the user's later in-place write to the data changes no G not yet written;
the user's state is as a plain run leaves it.

Expected values: ``torch.func.vmap(grad(...))`` (``per_sample_reference``) and
``torch.autograd.functional.jacobian``, both in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic
from per_sample_reference import vmap_grad
from vjp_magic.core import outer
from vjp_magic.core.outer import OuterProducts, WrittenCheckFailed

B = 64


class _Coupled(torch.autograd.Function):
    """x + eps · the batch mean of x (every sample reads every other), with its true backward."""

    @staticmethod
    def forward(ctx, x):
        return x + 1e-3 * x.mean(0, keepdim=True)

    @staticmethod
    def backward(ctx, grad):
        return grad + 1e-3 * grad.mean(0, keepdim=True)


class _Mlp(nn.Module):
    def __init__(self, coupled: bool = False):
        super().__init__()
        self.coupled = coupled
        self.a, self.b = nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(_Coupled.apply(h) if self.coupled else h)


def _model(dtype=torch.float64, coupled: bool = False):
    torch.manual_seed(0)
    model = _Mlp(coupled).to(dtype)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(B, 5, generator=g, dtype=dtype), \
        torch.randint(0, 3, (B,), generator=g)


def _writes(monkeypatch) -> list:
    """Each OuterProducts written, counted."""
    found, original = [], OuterProducts._write
    monkeypatch.setattr(OuterProducts, "_write",
                        lambda self: found.append(self) or original(self))
    return found


def _differentiate(model, x, t):
    return vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model, names="m")


def test_no_g_is_written_in_the_cell_and_what_is_read_equals_vmap_grad(monkeypatch):
    model, x, t = _model()
    writes = _writes(monkeypatch)
    r = _differentiate(model, x, t)
    assert writes == []  # the two weights' G: factors only, so far
    expected = vmap_grad(model, x, t)
    for name, value in expected.items():
        got = r.derivatives[f"m.{name}"]
        assert type(got) is torch.Tensor and got.is_contiguous() and got.dtype == torch.float64
        torch.testing.assert_close(got, value, rtol=1e-10, atol=1e-12)
    assert len(writes) == 2  # written once each, on first read, and kept
    assert r.derivatives["m.a.weight"] is r.derivatives["m.a.weight"]
    assert len(writes) == 2


def test_a_per_sample_output_of_shape_b_1_reads_the_same():
    model, x, t = _model()
    r = vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none").unsqueeze(1), model, names="m")
    for name, value in vmap_grad(model, x, t).items():
        got = r.derivatives[f"m.{name}"]
        assert got.shape == (B, 1) + value.shape[1:]
        torch.testing.assert_close(got[:, 0], value, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("how", ["transposed", "swapped", "scaled row"])
def test_g_written_wrong_from_right_factors_is_never_handed_over(monkeypatch, how):
    """The factors are judged at the cell; a write that goes wrong after (a bug) fails the
    same bound on the written tensor and raises instead of giving its numbers."""
    model, x, t = _model(torch.float32)
    original = OuterProducts._write

    def wrong(self):
        found = original(self)
        if how == "transposed":  # a square per-sample block is not: take a 7 x 5 one's rows
            return found.flip(1)
        if how == "swapped":
            return found[torch.arange(found.shape[0]).roll(1)]
        found = found.clone()
        found[3] *= 1.5
        return found
    monkeypatch.setattr(OuterProducts, "_write", wrong)
    r = _differentiate(model, x, t)
    with pytest.raises(WrittenCheckFailed):
        r.derivatives["m.a.weight"]


def test_a_coupling_hidden_in_a_custom_function_is_still_caught():
    model, x, t = _model(coupled=True)
    r = _differentiate(model, x, t)
    names, params = zip(*model.named_parameters())

    def losses(*values):
        found = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        return F.cross_entropy(found, t, reduction="none")
    for name, value in zip(names, torch.autograd.functional.jacobian(losses, params)):
        torch.testing.assert_close(r.derivatives[f"m.{name}"], value, rtol=1e-10, atol=1e-12)


def test_a_later_in_place_write_to_the_data_changes_no_g_not_yet_written(monkeypatch):
    model, x, t = _model()
    expected = vmap_grad(model, x, t)
    writes = _writes(monkeypatch)
    r = _differentiate(model, x, t)
    x.mul_(2.0)  # the first layer's input is the user's own tensor
    model.b.weight.data.mul_(3.0)
    assert writes == []
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[f"m.{name}"], value, rtol=1e-10, atol=1e-12)


def test_user_state_is_as_a_plain_run_leaves_it():
    model, x, t = _model(torch.float32)
    model.a.weight.grad = torch.full_like(model.a.weight, 3.0)
    before = {n: (p.detach().clone(), p._version) for n, p in model.named_parameters()}
    data = (x.clone(), x._version)
    rng = torch.get_rng_state()
    r = _differentiate(model, x, t)
    for name in r.derivatives:  # and after G is written
        r.derivatives[name]
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, data[0]) and x._version == data[1]
    assert torch.equal(model.a.weight.grad, torch.full_like(model.a.weight, 3.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "a.weight")
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name][0]) and p._version == before[name][1]


def test_written_gives_tensors_as_they_are_and_writes_outer_products():
    g, a = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    lazy = OuterProducts(g, a)
    assert lazy.shape == (4, 3, 2) and lazy.numel() == 24
    expected = torch.einsum("bi,bj->bij", g, a)
    assert torch.equal(outer.written(lazy), expected)
    assert torch.equal(outer.written(lazy.reshape(4, 1, 3, 2)), expected.reshape(4, 1, 3, 2))
    v = torch.tensor([[1.0, -2.0, 0.5, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(lazy.product(v), v @ expected.reshape(4, -1))
    plain = torch.ones(2)
    assert outer.written(plain) is plain


@pytest.mark.parametrize("row", [0, 17])
def test_a_wrong_factor_row_is_refused_and_recomputed(monkeypatch, row):
    """One sample's layer input off in the factors kept for a weight: vᵀG from the factors
    is no longer autograd's bit for bit, the bound then refuses it, no direct result is made
    and the analysis computes the right derivatives."""
    from vjp_magic.run import expanded, persample
    model, x, t = _model(torch.float32)

    def wrong(g, a, shape=None):
        a = a.clone()
        a[row] += 0.5 * float(a.abs().max()) + 1.0
        return OuterProducts(g, a, shape)
    monkeypatch.setattr(expanded, "OuterProducts", wrong)
    made, original = [], persample.accepted_result
    monkeypatch.setattr(persample, "accepted_result",
                        lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    r = _differentiate(model, x, t)
    assert made and made[-1] is None
    for name, value in vmap_grad(model, x, t).items():
        torch.testing.assert_close(r.derivatives[f"m.{name}"], value, rtol=1e-4, atol=1e-5)
