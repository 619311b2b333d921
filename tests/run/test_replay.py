"""The replay of a recorded cell (``run/replay.py``, and the symbolic replay of the same
record): custom Functions, modules, in-place writes and views, and what it refuses to follow.
"""
from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as F
from closed_forms import run_recorded, same, words, x
from custom_functions import Jitter, square
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic import differentiate
from vjp_magic.run import record as record_module
from vjp_magic.run.record import FunctionApply, recording
from vjp_magic.run.refusals import NotReplayable
from vjp_magic.run.replay import build, replayable
from vjp_magic.symbolic import derive


# -- the replay: custom Functions, modules, in-place writes and views; what it refuses -------------
def test_custom_function_apply_is_recorded_as_one_call_and_apply_restored():
    original = torch.autograd.Function.__dict__["apply"]
    x = torch.randn(3, requires_grad=True)
    function = square(2.0)
    with recording() as rec:
        y = function.apply(x)
    assert len(rec.calls) == 1 and isinstance(rec.calls[0].func, FunctionApply)
    assert rec.calls[0].func.function is function and rec.calls[0].result is y
    assert torch.autograd.Function.__dict__["apply"] is original


def test_replay_uses_the_custom_backward_and_matches_the_graph():
    wrong = square(5.0)
    x = torch.randn(4, 3, requires_grad=True)
    with recording() as rec:
        y = torch.tanh(wrong.apply(x)).sum(1)
    replay = build(rec, {"x": x}, y)
    fresh = x.detach().requires_grad_()
    replayed = torch.autograd.grad(replay(x=fresh).sum(), fresh)[0]
    # the wrong backward's answer (5·x instead of 2·x), by mathematics
    expected = (1 - torch.tanh(x.detach() ** 2) ** 2) * 5 * x.detach()
    torch.testing.assert_close(replayed, expected)


def test_replay_of_module_in_place_writes_and_float64():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x = torch.randn(5, 3, requires_grad=True)
    with recording() as rec:
        h = mlp(x)
        out = torch.zeros(5, 2)
        out[1:] = h[1:] * 2  # a live value written into a constant tensor
        out[0] = h[0].exp()
        y = out.sum(1)
    replay = build(rec, {"x": x}, y)
    torch.testing.assert_close(replay(x=x), y)

    def pure(x):
        h = mlp(x)
        return torch.cat([h[:1].exp(), h[1:] * 2]).sum(1)

    r64 = replay.with_dtype(torch.float64)
    x64 = x.detach().double()
    assert r64(x=x64).dtype == torch.float64
    jac = reference_jacobian(lambda t: r64(x=t), x64)
    torch.testing.assert_close(jac.float(), reference_jacobian(pure, x.detach()))


def test_replay_never_changes_batch_norm_running_statistics():
    bn = torch.nn.BatchNorm1d(3)
    x = torch.randn(6, 3, requires_grad=True)
    with recording() as rec:
        y = bn(x).sum(1)
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    replay = build(rec, {"x": x}, y)
    torch.testing.assert_close(replay(x=x * 3), F.batch_norm(x * 3, None, None, training=True)
                               .sum(1))
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)


@pytest.mark.parametrize("case", ["no_grad_write", "computed_before", "unrelated"])
def test_replay_refuses_what_it_cannot_follow(case):
    x = torch.randn(1000, requires_grad=True)
    before = x * 3  # computed outside the record
    with recording() as rec:
        if case == "no_grad_write":
            h = x * 2
            with torch.no_grad():
                h.mul_(3)
            y = h.sin()
        elif case == "computed_before":
            y = before.sin() + x
        else:
            y = torch.ones(1000)
    assert replayable(rec, {"x": x}, y) is None


def test_a_custom_forward_that_draws_replays_its_draws_in_its_own_dtype_only():
    """Jitter's forward draws u: replayed from the generator state the cell's call saw, the
    same u (the replay reproduces y); in float64, rand_like draws other numbers from that
    state, so the float64 replay is refused, saying why (R2-6)."""
    torch.manual_seed(0)
    x = torch.randn(1000, requires_grad=True)
    with recording() as rec:
        y = Jitter.apply(x * 2)
    state = torch.get_rng_state()
    replay = build(rec, {"x": x}, y)
    assert torch.equal(replay(x=x.detach()), y.detach())
    with pytest.raises(NotReplayable, match="Jitter .* random draws"):
        replay.with_dtype(torch.float64)
    assert torch.equal(torch.get_rng_state(), state)  # the replays moved no generator


class _PythonDraws(torch.autograd.Function):
    """x·(a + b) with a from Python's random and b from numpy's global generator."""

    @staticmethod
    def forward(ctx, x):
        import random

        import numpy
        scale = random.random() + float(numpy.random.rand())
        ctx.scale = scale
        return x * scale

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale


def test_a_custom_forward_drawing_from_python_and_numpy_replays_the_cells_draws():
    import random

    import numpy
    random.seed(1)
    numpy.random.seed(1)
    x = torch.randn(50, requires_grad=True)
    with recording() as rec:
        y = _PythonDraws.apply(x)
    states = random.getstate(), numpy.random.get_state()[1].copy()
    replay = build(rec, {"x": x}, y)
    assert torch.equal(replay(x=x.detach()), y.detach())  # the cell's a and b again
    assert random.getstate() == states[0]
    assert numpy.array_equal(numpy.random.get_state()[1], states[1])


@pytest.mark.parametrize("read_after", [True, False])
def test_replay_follows_in_place_writes_seen_through_a_view(read_after):
    x = torch.randn(4, requires_grad=True)
    with recording() as rec:
        h = x * 2
        v = h[:2]  # a view of h, which then changes in place
        h.mul_(3)
        y = v.sin() if read_after else v
    replay = build(rec, {"x": x}, y)
    fresh = x.detach().requires_grad_()
    jac = reference_jacobian(lambda t: replay(x=t), fresh)
    expected = torch.zeros(2, 4)  # mathematics: y = sin(6 x[:2]) or 6 x[:2]
    six_x = 6 * x.detach()[:2]
    expected[:, :2] = torch.diag(6 * torch.cos(six_x) if read_after else torch.full((2,), 6.0))
    torch.testing.assert_close(jac, expected)


def test_replay_of_a_record_that_gave_up():
    assert replayable(record_module.OpRecord(failed="too many"), {}, torch.ones(1)) is None


# -- the symbolic replay reads each constant as it was at the call ---------------------------------
def test_a_constant_changed_in_place_later_is_read_as_it_was_used():
    ns, record = run_recorded("w = torch.ones(3)\n"
                              "x = torch.tensor([1., 2., 3.], requires_grad=True)"
                              "\ny = x + w\nw.add_(1)")
    r = differentiate(ns["y"], {"x": ns["x"]})
    report = derive(r, record=record, namespace=ns)
    assert same(report.function, x + 1)  # w was 1 when y was computed, 2 now
    assert report.crosscheck["x"] is True


def test_a_constant_changed_in_place_without_a_copy_is_named(monkeypatch):
    from vjp_magic.run import record as record_module

    monkeypatch.setattr(record_module, "MAX_COPY_ENTRIES", 0)
    ns, record = run_recorded("w = torch.ones(3)\n"
                              "x = torch.tensor([1., 2., 3.], requires_grad=True)"
                              "\ny = x * 2 + w\nw.add_(1)")
    r = differentiate(ns["y"], {"x": ns["x"]})
    report = derive(r, record=record, namespace=ns)
    assert report.formulas["x"] is None
    assert "w was changed in place after the cell used it" in report.note


def test_jacobian_replays_the_recorded_expression():
    ns, _ = run_recorded("z = torch.tensor([1.0, 2.0], requires_grad=True)")
    with recording() as record:
        output = eval("torch.stack([z.prod(), (z**2).sum()])", ns)  # noqa: S307
    r = differentiate(output, {"z": ns["z"]})
    report = derive(r, record=record, namespace=ns, jacobian=True,
                    output_source="torch.stack([z.prod(), (z**2).sum()])")
    z1, z2 = sympy.symbols("z_1 z_2", real=True)
    assert same(report.formulas["z"], [[z2, z1], [2 * z1, 2 * z2]])
    assert report.crosscheck["z"] is True
    assert "J_f(z) = [[z_2, z_1], [2*z_1, 2*z_2]]" in words(report)
