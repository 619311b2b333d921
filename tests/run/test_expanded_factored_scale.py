"""The per-layer rules' factored |v|ᵀM for a Linear weight (``run/expanded.py``) is never below
|v|ᵀ|D| read from the very per-sample gradients handed over (equal to it with one position per
sample: one term per entry), so judging probe 0 against it is at least as strict as the plain
rule; and the MLP path (one position, the outer product written straight into the result)
still refuses a wrong entry of the tensor it returns. Expected values from
``torch.func.vmap(grad(...))`` and from ``d.abs()`` of the returned tensor."""
from __future__ import annotations

import pytest
from per_sample_reference import vmap_grad
import torch
import torch.nn.functional as F

from vjp_magic.core import analysis
from vjp_magic.core import given as given_jacobians
from vjp_magic.core.probes import Probes
from vjp_magic.run import persample
from vjp_magic.run.record import recording


class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(5, 7)
        self.head = torch.nn.Linear(7, 3)

    def forward(self, x):
        hidden = torch.tanh(self.inner(x))
        return self.head(hidden.mean(1) if hidden.dim() == 3 else hidden)


def _given(seed: int, shape: tuple, dtype=torch.float32):
    torch.manual_seed(seed)
    model = Tokens().to(dtype)
    x = torch.randn(*shape, 5, dtype=dtype)
    targets = torch.randint(0, 3, (shape[0],))
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    params = dict(model.named_parameters())
    return model, x, targets, losses, params, persample.per_sample_given(record, params, losses)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(48,), (40, 3)])  # one position per sample; three
@pytest.mark.parametrize("rows", [1, 3])
def test_the_factored_scale_is_at_least_the_gradients_own(dtype, shape, rows):
    _, _, _, _, _, given = _given(11, shape, dtype)
    for name in ("inner.weight", "head.weight"):
        scale = given[name].weighted_magnitudes
        assert scale is not None
        d = given[name].jacobian.reshape(shape[0], -1)
        v = torch.randn(rows, shape[0], dtype=dtype).abs()
        plain = v @ d.abs()  # |v|ᵀ|D| from the returned tensor itself
        found = scale(v)
        assert found.shape == plain.shape
        eps = torch.finfo(dtype).eps * 8
        assert bool((found >= plain * (1 - eps)).all())  # |Σ_t x_t| ≤ Σ_t |x_t|
        if len(shape) == 1 or name == "head.weight":  # one term per entry: the same sizes
            torch.testing.assert_close(found, plain, rtol=eps, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_mlp_path_gives_the_vmap_values_contiguous_and_accepted(seed):
    model, x, targets, losses, params, given = _given(seed, (64,))
    weight = given["inner.weight"].jacobian
    assert weight.is_contiguous() and tuple(weight.shape) == (64, 7, 5)
    r = analysis.differentiate(losses, params, given=given, seed=seed)
    for name, value in vmap_grad(model, x, targets).items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-4, atol=1e-5)
    j, m, s = given_jacobians.split(given)
    assert given_jacobians.at_once(Probes(losses, params, seed), j, m) == set(params)


@pytest.mark.parametrize("where", [(0, 0, 0), (31, 4, 2), (63, 6, 4)])
def test_a_wrong_entry_of_the_returned_tensor_is_refused(where):
    """A change in the tensor handed over (after the rules wrote it) shows in vᵀD: probe 0
    reads that tensor, not the rules' factors."""
    model, x, targets, losses, params, given = _given(2, (64,))
    wrong = given["inner.weight"].jacobian.clone()
    b, o, i = where
    wrong[b, o, i] += 0.02 * float(wrong[:, o, i].abs().sum()) + 1e-3
    bad = {**given, "inner.weight": given["inner.weight"]._replace(jacobian=wrong)}
    j, m, s = given_jacobians.split(bad)
    assert given_jacobians.at_once(Probes(losses, params, 2), j, m) == set()
    assert "inner.weight" not in given_jacobians.agreed(Probes(losses, params, 2), j, m, s)
    r = analysis.differentiate(losses, params, given=bad, seed=2)
    torch.testing.assert_close(r.derivatives["inner.weight"],
                               vmap_grad(model, x, targets)["inner.weight"],
                               rtol=1e-4, atol=1e-5)  # recomputed: right again
