"""Every pass of the analysis on a user's graph runs under core.reentrant's pass guard (s31 K1):
a custom Function whose backward calls a module or enables grad only on NONZERO gradients (so
the check on zeros misses it) is stopped with the usage error by the Hessian, sparse_jacobian's
column passes, dependency's grouped probes and --gradcheck's passes alike: no module hook
fires, no forward of the block runs again, ``x.grad`` stays None."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core import torch_api
from vjp_magic.core.reentrant import reentrant_nodes, refuse_reentrant

RUNS = {"hook": 0, "block": 0}
NET = torch.nn.Linear(6, 6).double()
NET.register_forward_hook(lambda m, i, o: RUNS.__setitem__("hook", RUNS["hook"] + 1))


def _module(h, g):
    return NET(h) * g


def _enable_grad(h, g):
    with torch.enable_grad():
        RUNS["block"] += 1
        return (torch.tanh(h) * g).sum()


def _grad(h, g):
    h = h.detach().requires_grad_()
    return torch.autograd.grad(h * 3, h, g)[0]


ENTRIES = {"a module": _module, "enable_grad": _enable_grad, "torch.autograd.grad": _grad}


class Sometimes(torch.autograd.Function):
    """x ↦ x² (twice differentiable), whose backward re-enters autograd through a callable
    on the class (no name to read) where the gradient is nonzero only, or (``only_graphs``)
    in passes with ``create_graph`` only (grad mode on): the check on zeros (no grad) and the
    first-order passes never meet it, the family's own passes (second order, forward-mode
    columns by double backward, grouped probes' columns) must."""

    entry = [_module]
    only_graphs = [False]

    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        return h * h

    @staticmethod
    def backward(ctx, g):
        (h,) = ctx.saved_tensors
        if torch.is_grad_enabled() if Sometimes.only_graphs[0] else bool((g != 0).any()):
            Sometimes.entry[0](h, g)
        return 2 * h * g


def _x() -> torch.Tensor:
    return torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)


@pytest.fixture(params=[False, True], ids=["every pass", "create_graph passes only"])
def only_graphs(request):
    Sometimes.only_graphs[0] = request.param
    yield request.param
    Sometimes.only_graphs[0] = False


def _refused(run, entry: str) -> None:
    if Sometimes.only_graphs[0] and entry == "enable_grad":
        pytest.skip("in a create_graph pass grad mode is on already: no re-entry")
    Sometimes.entry[0] = ENTRIES[entry]
    x = _x()
    assert reentrant_nodes(Sometimes.apply(x * 1.0)) == ()  # (on zeros: ordinary)
    before = dict(RUNS)
    with pytest.raises(vjp_magic.VJPUsageError, match="Sometimes.*use_reentrant=False"):
        run(x)
    assert RUNS == before and x.grad is None and torch.is_grad_enabled()


def _judged(x: torch.Tensor) -> torch.Tensor:
    """Sometimes(x)·roll(x), judged by refuse_reentrant as an entry point does (the guard is
    armed for the graph it judged last)."""
    y = Sometimes.apply(x * 1.0) * x.roll(1)
    refuse_reentrant(y)
    return y


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_the_hessian_stops_it(entry, only_graphs):
    _refused(lambda x: vjp_magic.hessian((Sometimes.apply(x * 1.0) * x.roll(1)).sum(), x),
             entry)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_sparse_jacobian_stops_it(entry):
    _refused(lambda x: vjp_magic.sparse_jacobian(Sometimes.apply(x * 1.0) + x.roll(1), x),
             entry)


@pytest.mark.parametrize("only_graphs", [True], indirect=True)
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_the_column_passes_stop_it(entry, only_graphs):
    """J·u by double backward (column_passes.jvps), the rows' check (sparse_check): their
    first pass meets the backward with grad mode on (its gradient v is zero)."""
    from vjp_magic.core.column_passes import jvps
    from vjp_magic.core.sparse_check import rows_checked

    colours = torch.arange(6) % 3
    _refused(lambda x: jvps(_judged(x), x, colours, 1 << 26), entry)
    _refused(lambda x: rows_checked(_judged(x), x, torch.eye(6, dtype=torch.float64), 0),
             entry)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_dependency_stops_it(entry):
    _refused(lambda x: vjp_magic.dependency(Sometimes.apply(x * 1.0) * x.roll(1), x), entry)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_the_grouped_probes_forward_columns_stop_it(entry, only_graphs):
    """dependency's columns read in forward mode (grouptest.resolved_columns)."""
    from vjp_magic.core.grouptest import SetProber, resolved_columns

    def run(x):
        resolved_columns(SetProber(_judged(x), x, 0, 0, 1 << 26, 0), torch.arange(6))

    _refused(run, entry)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_gradchecks_passes_stop_it(entry):
    """--gradcheck's analytic passes go through materialized_grad (the analysis, the graph
    judged by refuse_reentrant): the usage error, never a run of the block."""
    def run(x):
        y = Sometimes.apply(x * 1.0) * 3.0
        refuse_reentrant(y)  # (the entry point judges the graph: the guard is armed)
        torch_api.materialized_grad([y], [x], [torch.ones_like(y)], retain_graph=True)

    _refused(run, entry)


def test_guarded_grad_is_autograd_grad_on_an_ordinary_graph():
    x = _x()
    y = torch.sin(x) * x.roll(1)
    refuse_reentrant(y)
    v = torch.arange(6, dtype=torch.float64)
    (found,) = torch_api.guarded_grad(y, x, v, retain_graph=True)
    expected = v @ torch.autograd.functional.jacobian(lambda t: torch.sin(t) * t.roll(1),
                                                       x.detach())
    torch.testing.assert_close(found, expected)
    assert x.grad is None


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_gradcheck_reports_it_without_running_it(entry):
    """run.gradcheck end to end: the replay's passes are stopped (a note, never a verdict);
    no hook fires, ``x.grad`` stays None."""
    from vjp_magic.run.gradcheck import gradcheck
    from vjp_magic.run.record import recording

    Sometimes.entry[0] = ENTRIES[entry]
    x = _x()
    with recording() as record:
        y = Sometimes.apply(x * 1.0) * 3.0
    refuse_reentrant(y)  # (as the pipeline does before --gradcheck)
    before = dict(RUNS)
    report = gradcheck(record, {"x": x}, y, ["x"], seed=0, seconds=5.0)
    assert report.ok is None and "Sometimes" in report.note, report
    assert RUNS == before and x.grad is None
