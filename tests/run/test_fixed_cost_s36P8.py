"""Session 36, P8: a ``%%vjp --wrt model`` cell's fixed cost trimmed without weakening a check.

- ``--wrt model`` (a module the namespace binds): its parameters are held by the namespace by
  construction, so the namespace is not scanned again to learn so (``run/choose.named``); an
  expression that makes a new tensor is still refused.
- The per-layer rules' check weights on the CPU are indexed by numpy (``run/expanded``): still
  ±2^k, |k| ≤ 40, every pair of samples told apart in some pass, probe 0 first; bfloat16 (no
  numpy dtype) still gets them from torch.

Expected values come from ``torch.func.vmap(grad(...))`` and from the weights' definition.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from vjp_magic.core.probes import probe_vector
from vjp_magic.run import choose
from vjp_magic.run.expanded import check_weights

SETUP = """
import torch, torch.nn.functional as F
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
data, targets = torch.randn(40, 6), torch.randint(0, 3, (40,))
"""
CELL = "losses = F.cross_entropy(model(data), targets, reduction='none')"


def _vmap_grad(model, data, targets) -> dict:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), t.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, data, targets)


def test_wrt_a_namespace_module_reads_no_namespace_scan(ip, monkeypatch):
    ip.run_cell(SETUP)

    def scanned(scope):
        raise AssertionError("the namespace was scanned for a module's own parameters")

    monkeypatch.setattr(choose, "_namespace_parameter_names", scanned)
    result = ip.run_cell_magic("vjp", "--wrt model", CELL)
    expected = _vmap_grad(ip.user_ns["model"], ip.user_ns["data"], ip.user_ns["targets"])
    assert set(result.derivatives) == {f"model.{name}" for name in expected}
    for name, value in expected.items():
        torch.testing.assert_close(result.derivatives[f"model.{name}"], value,
                                   rtol=1e-4, atol=1e-6)


def test_an_expression_making_a_new_tensor_is_still_refused(ip, usage_error):
    ip.run_cell(SETUP)
    message = usage_error(f"%%vjp --wrt model[0].weight.T\n{CELL}")
    assert "model[0].weight.T" in message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16])
@pytest.mark.parametrize("batch", [40, 1024])
def test_check_weights_after_probe_zero_tell_every_pair_apart(dtype, batch):
    value = torch.zeros(batch, dtype=dtype)
    first = probe_vector(value, 7, 0).reshape(-1)
    passes = check_weights(batch, dtype, value.device, first=first)
    assert passes[0] is first
    assert all(w.dtype == dtype and w.shape == (batch,) for w in passes)
    codes = torch.stack([w.double() for w in passes], 1)
    assert len(torch.unique(codes, dim=0)) == batch  # every pair differs in some pass
    magnitudes = torch.log2(codes[:, 1:].abs())
    assert bool((magnitudes == magnitudes.round()).all())  # powers of two: exact scaling
    span = 4 if dtype == torch.float16 else 40
    assert float(magnitudes.abs().max()) <= span


def test_check_weights_are_fresh_arrays_each_call():
    """The numpy table is shared: a pass's weights written by a backward must not change the
    next call's."""
    first = check_weights(64, torch.float32)
    for w in first:
        w.fill_(3.0)
    again = torch.stack(check_weights(64, torch.float32), 1)
    assert not bool((again == 3.0).any())
