"""Paths through the analysis: a candidate pairing over the memory budget is skipped while a
later one may fit; candidates that rows of J already break are not tried; Jacobians computed
elsewhere (``given``) are used only when the probe rule accepts them. Expected numbers come
from torch.autograd.functional.jacobian."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic.core import analysis, strategies, structure
from vjp_magic.core.probes import FullProbes, probe_mismatch, probe_vector
from vjp_magic.core.errors import VJPUsageError
from vjp_magic.core.tolerances import tolerances

SEED = 2024  # the rows of J the analysis reads are drawn from the run's seed


def _columns_with_a_batch_leak(shape):
    """y = 2x, and row r of y also reads 0.1 · row 0 of x: columns (axis 1) are points,
    rows (axis 0) are not. Row r is one the analysis's sampled rows of J do not read, so
    only the probe can tell that pairing rows breaks."""
    sampled = {index[0] for index in structure.row_indices(shape, SEED)}
    r = next(i for i in range(1, shape[0]) if i not in sampled)

    def f(x):
        return torch.index_add(2 * x, 0, torch.tensor([r]), 0.1 * x[:1])
    return f, r


def _columns_derivatives(jac):
    """Derivatives under the pairing ((1, 1),): D[i, j, t] = ∂y[i, t]/∂x[j, t]."""
    b, t = jac.shape[:2]
    cols = torch.arange(t)
    return jac[:, cols, :, cols].permute(1, 2, 0)  # (i, j, t)


def test_a_candidate_over_the_budget_is_skipped_and_the_next_accepted():
    shape = (4, 300)  # J has 1.44 M entries: the probe path
    f, _ = _columns_with_a_batch_leak(shape)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3),
                    requires_grad=True)
    # pairing rows, ((0, 0),): 300 components × 1,200 entries × 8 bytes = 2.9 MB (skipped);
    # pairing columns, ((1, 1),): 4 × 1,200 × 8 = 38 kB (fits)
    r = analysis.differentiate(f(x), x, memory_budget=1_000_000, graph_proof=False, seed=SEED)
    item = r.inputs["x"]
    assert item.pairing == ((1, 1),) and item.evidence == "observed"
    torch.testing.assert_close(item.derivatives,
                               _columns_derivatives(reference_jacobian(f, x.detach())))
    # only what the probe rejected counts as rejected: the skipped pairing was never tried
    assert item.rejected == (((0, 0), (1, 1)),)
    assert x.grad is None


def test_the_same_answer_without_a_budget_to_skip_for():
    shape = (4, 300)
    f, _ = _columns_with_a_batch_leak(shape)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4),
                    requires_grad=True)
    r = analysis.differentiate(f(x), x, graph_proof=False, seed=SEED)
    assert r.inputs["x"].pairing == ((1, 1),)
    torch.testing.assert_close(r.inputs["x"].derivatives,
                               _columns_derivatives(reference_jacobian(f, x.detach())))


def test_the_last_candidate_over_the_budget_is_refused_with_the_verdict():
    shape = (4, 300)
    f, leak = _columns_with_a_batch_leak(shape)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    with pytest.raises(VJPUsageError) as info:  # columns need 38 kB, the full J 11.5 MB
        analysis.differentiate(f(x), x, memory_budget=20_000, graph_proof=False, seed=SEED)
    message = str(info.value)
    assert "(1,200 backward passes)" in message and "memory budget" in message
    assert f"y[{leak}] ← x[0]" in message
    assert info.value.dependency.witness == (leak, 0)


def test_all_candidates_over_the_budget_refuse_as_before():
    n = 10**5  # a row-wise function whose likeliest pairing fails the probe
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(5), requires_grad=True)
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(6))
    (d,) = torch.autograd.grad(torch.tanh(x @ w).sum(), x, create_graph=True)
    with pytest.raises(VJPUsageError, match="memory budget"):
        analysis.differentiate(d, x, memory_budget=2**24)


def test_candidates_the_rows_break_are_not_tried(monkeypatch):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(3, 3, dtype=torch.float64, generator=g)

    def f(x):  # rows are points but for one leak; features mix: no structure at all
        return torch.index_add(torch.tanh(x @ w), 0, torch.tensor([1]), 0.1 * x[:1])
    x = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    asked = []  # the output axes taken as points, per batch of derivatives computed
    real = strategies.component_vjps

    def spy(output, tensors, point_out, *args, **kwargs):
        asked.append(tuple(point_out))
        return real(output, tensors, point_out, *args, **kwargs)
    monkeypatch.setattr(strategies, "component_vjps", spy)
    r = analysis.differentiate(f(x), x, graph_proof=False, exact_up_to=0)  # probes per pairing
    item = r.inputs["x"]
    assert item.pairing == ()
    torch.testing.assert_close(item.derivatives, reference_jacobian(f, x.detach()))
    # ((1, 1),) (features as points) is broken in every row of J: rejected, never computed
    assert item.rejected[0] == ((0, 0), (1, 1))
    assert set(item.rejected[1:]) == {((0, 0),), ((1, 1),)}
    assert (1,) not in asked and asked[-1] == ()


# -- Jacobians computed elsewhere ------------------------------------------------------------
class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def _per_sample_problem():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)
    w = torch.randn(3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
    unused = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)

    def f(w, b):
        return torch.tanh(x @ _Square.apply(w) + b).sum(1)
    return f, {"w": w, "b": b, "u": unused}


def test_given_jacobians_the_probe_accepts_are_used_as_they_are():
    f, named = _per_sample_problem()
    losses = f(named["w"], named["b"])
    jw, jb = reference_jacobian(f, (named["w"].detach(), named["b"].detach()))
    given = {"w": jw, "b": jb, "u": torch.zeros(6, 4, dtype=torch.float64)}
    r = analysis.differentiate(losses, named, given=given)
    assert r.inputs["w"].derivatives is jw and r.inputs["b"].derivatives is jb
    assert r.inputs["w"].unverified == ("_SquareBackward",)
    assert r.inputs["b"].unverified == ()  # the custom function is not on b's way
    assert r.inputs["u"].unused and not r.inputs["w"].unused and not r.inputs["b"].unused


def test_a_wrong_given_jacobian_is_recomputed():
    f, named = _per_sample_problem()
    losses = f(named["w"], named["b"])
    jw, jb = reference_jacobian(f, (named["w"].detach(), named["b"].detach()))
    wrong = jw.clone()
    wrong[2, 1, 0] += 1e-3  # one sample's gradient off in one entry
    r = analysis.differentiate(losses, {"w": named["w"], "b": named["b"]},
                               given={"w": wrong, "b": jb})
    assert r.inputs["w"].derivatives is not wrong
    torch.testing.assert_close(r.inputs["w"].derivatives, jw)
    assert r.inputs["b"].derivatives is jb


def test_a_given_jacobian_of_an_intermediate_input():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    h = torch.sin(x)  # not a leaf
    y = (h * h).sum(1)
    jh = reference_jacobian(lambda t: (t * t).sum(1), h.detach())
    r = analysis.differentiate(y, {"h": h, "x": x}, given={"h": jh})
    assert r.inputs["h"].derivatives is jh and not r.inputs["h"].unused
    jx = reference_jacobian(lambda t: (torch.sin(t) ** 2).sum(1), x.detach())
    torch.testing.assert_close(r.inputs["x"].derivatives,
                               structure.gather_derivatives(jx, 1, r.inputs["x"].pairing))


@pytest.mark.parametrize("nonfinite", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("factor", [0.0, 0.5, 2.0, 100.0])
def test_full_probes_give_the_verdict_of_the_probe_rule(dtype, factor, nonfinite):
    """Several probes of one full Jacobian at once agree exactly when each probe alone
    agrees (probes.probe_mismatch), off by ``factor`` times the tolerance in one entry,
    with cancellation (columns summing to about 0), non-finite and all-zero columns."""
    g = torch.Generator().manual_seed(10)
    m, n = 64, 40
    d = torch.randn(m, n, dtype=dtype, generator=g)
    d[:, 1] = d[:, 1] - d[:, 1].mean()  # cancellation
    d[:, 2] = 0
    if nonfinite:
        d[3, 4] = torch.inf
        d[5, 6] = torch.nan
    probes = [probe_vector(torch.empty(m, dtype=dtype), SEED, k) for k in range(3)]
    vjps = [(p.to(torch.float64) @ d.to(torch.float64)).to(dtype) for p in probes]
    for j in (0, 1, 7):  # off in one entry of one probe, scaled to that entry's tolerance
        scale = float(probes[1].abs().to(torch.float64) @ d[:, j].abs().to(torch.float64))
        vjps[1] = vjps[1].clone()
        vjps[1][j] += factor * scale * tolerances(dtype).probe
        one_by_one = all(probe_mismatch(d, p, v, ()) <= 1.0
                         for p, v in zip(probes, vjps))
        together = FullProbes(d, probes).mismatch(vjps) <= 1.0
        # a non-finite entry never agrees: it cannot tell a coupling from none
        assert together == one_by_one == (factor <= 1.0 and not nonfinite)
