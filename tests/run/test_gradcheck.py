"""Practitioners' questions: is my custom backward right (``--gradcheck``), per-sample
gradients at vectorised speed, and modules as inputs (``--wrt mlp``).

Expected values come from mathematics, torch.func (vmap/grad/jacrev) and
torch.autograd.functional.jacobian, never from the code under test.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian as reference_jacobian
from torch.func import functional_call, grad, vmap

from vjp_magic.core import analysis
from vjp_magic.core.validation import named_inputs
from vjp_magic.core.errors import VJPUsageError
from vjp_magic.run import record as record_module
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.persample import per_sample_jacobians
from vjp_magic.run.record import FunctionApply, recording
from vjp_magic.run.replay import build, replayable


# -- custom autograd.Functions, right and wrong ---------------------------------------------------
def _square(factor: float):
    class Square(torch.autograd.Function):
        """x ↦ x², backward ``factor``·g·x (right when factor is 2)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return factor * g * x

    return Square


def _matmul(transposed: bool):
    class MatMul(torch.autograd.Function):
        """x @ w; the backward for x uses w (wrong) instead of wᵀ when ``transposed``."""

        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g @ (w if transposed else w.T), x.T @ g

    return MatMul


def _x_sin(missing: bool):
    class XSin(torch.autograd.Function):
        """x·sin x; the backward forgets the x·cos x term when ``missing``."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (torch.sin(x) if missing else torch.sin(x) + x * torch.cos(x))

    return XSin


SIZES = {"small": 4, "large": 48}  # square sizes: 16 and 2,304 entries (64 of them sampled)


def _checked(build_output, inputs: dict):
    with recording() as rec:
        y = build_output()
    return gradcheck(rec, inputs, y, list(inputs)), y


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("case", ["times_two", "transposed", "missing_term"])
def test_wrong_custom_backward_is_caught(case, size):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(size, size, generator=g, requires_grad=True)
    w = torch.randn(size, size, generator=g, requires_grad=True)
    function, inputs, args = {
        "times_two": (_square(4.0), {"x": x}, (x,)),
        "transposed": (_matmul(True), {"x": x, "w": w}, (x, w)),
        "missing_term": (_x_sin(True), {"x": x}, (x,)),
    }[case]
    report, _ = _checked(lambda: function.apply(*args) * 1.5, inputs)
    assert report.ok is False
    assert report.max_error["x"] > 1e-2
    assert report.custom == (f"{function.__name__}Backward",)
    assert report.checked["x"] == min(size * size, 64)
    if case == "transposed":  # w's own backward is right
        assert report.max_error["w"] < 1e-6


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("case", ["square", "matmul", "x_sin"])
def test_right_custom_backward_passes(case, size):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(size, size, generator=g, requires_grad=True)
    w = torch.randn(size, size, generator=g, requires_grad=True)
    function, inputs, args = {
        "square": (_square(2.0), {"x": x}, (x,)),
        "matmul": (_matmul(False), {"x": x, "w": w}, (x, w)),
        "x_sin": (_x_sin(False), {"x": x}, (x,)),
    }[case]
    report, _ = _checked(lambda: torch.tanh(function.apply(*args)), inputs)
    assert report.ok is True
    assert set(report.max_error) == set(inputs)
    assert all(error < 1e-6 for error in report.max_error.values())
    assert report.note is None


def test_gradcheck_max_error_per_input_without_custom_functions():
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(5, 100, requires_grad=True)
    report, _ = _checked(lambda: torch.sigmoid(x @ w).sum(0), {"x": x, "w": w})
    assert report.ok and report.custom == ()
    assert report.checked == {"x": 15, "w": 64}
    assert report.max_error["x"] < 1e-7 and report.max_error["w"] < 1e-7


def test_wrong_backward_error_is_the_missing_factor():
    # y = Σ x² with a backward 3·g·x instead of 2·g·x: for a scalar output the error at
    # entry k is |3x_k − 2x_k| = |x_k| (mathematics); the largest is 3.
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    report, _ = _checked(lambda: _square(3.0).apply(x).sum(), {"x": x})
    assert not report.ok
    assert report.max_error["x"] == pytest.approx(3.0, rel=1e-6)
    assert report.checked == {"x": 3}


def test_gradcheck_sampling_stops_at_its_time_limit():
    x = torch.randn(100, requires_grad=True)
    w = torch.randn(100, requires_grad=True)
    with recording() as rec:
        y = x * w
    report = gradcheck(rec, {"x": x, "w": w}, y, ["x", "w"], seconds=0.0)
    assert report.checked == {"x": 1, "w": 1} and report.ok  # and the random direction
    assert "stopped" in report.note


def _written_under_no_grad(x):
    h = x * 2
    with torch.no_grad():
        h[0] = 5.0  # autograd does not see this write: no pure function of x repeats it
    return h * 3


def test_gradcheck_says_why_it_did_not_run():
    x = torch.randn(1000, requires_grad=True)
    report, _ = _checked(lambda: _written_under_no_grad(x), {"x": x})
    assert report.ok is None and report.max_error == {}  # not run: neither passed nor failed
    assert "no_grad" in report.note
    y = x * 2
    assert "not recorded" in gradcheck(None, {"x": x}, y, ["x"]).note


def test_gradcheck_replays_the_cells_own_random_draws():
    """A dropout mask is drawn again from the generator's state kept at the call: the replay
    is the cell's function at its mask, whose derivative is mask·2/(1−p) (mathematics)."""
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    state = torch.get_rng_state()
    report, y = _checked(lambda: F.dropout(x, 0.5, training=True) * 2, {"x": x})
    assert report.ok is True and report.max_error["x"] < 1e-6
    assert not torch.equal(state, torch.get_rng_state())  # the cell's own draw moved it once
    torch.set_rng_state(state)
    mask = F.dropout(torch.ones(1000, dtype=torch.float64), 0.5, training=True) != 0
    torch.testing.assert_close(y.detach() != 0, mask)


# -- the replay --------------------------------------------------------------------------------
def test_custom_function_apply_is_recorded_as_one_call_and_apply_restored():
    original = torch.autograd.Function.__dict__["apply"]
    x = torch.randn(3, requires_grad=True)
    square = _square(2.0)
    with recording() as rec:
        y = square.apply(x)
    assert len(rec.calls) == 1 and isinstance(rec.calls[0].func, FunctionApply)
    assert rec.calls[0].func.function is square and rec.calls[0].result is y
    assert torch.autograd.Function.__dict__["apply"] is original


def test_replay_uses_the_custom_backward_and_matches_the_graph():
    wrong = _square(5.0)
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


class _Jitter(torch.autograd.Function):
    """x ↦ x·u with u drawn inside the forward: the record keeps no generator state for a
    draw inside a custom Function, so a replay draws other numbers (all but surely)."""

    @staticmethod
    def forward(ctx, x):
        u = torch.rand_like(x)
        ctx.save_for_backward(u)
        return x * u

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * u


@pytest.mark.parametrize("case", ["random_draws", "no_grad_write", "computed_before",
                                  "unrelated"])
def test_replay_refuses_what_it_cannot_follow(case):
    x = torch.randn(1000, requires_grad=True)
    before = x * 3  # computed outside the record
    with recording() as rec:
        if case == "random_draws":  # a dropout's mask is replayed as drawn; these are not
            y = _Jitter.apply(x * 2)
        elif case == "no_grad_write":
            h = x * 2
            with torch.no_grad():
                h.mul_(3)
            y = h.sin()
        elif case == "computed_before":
            y = before.sin() + x
        else:
            y = torch.ones(1000)
    assert replayable(rec, {"x": x}, y) is None


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


def test_record_gives_up_past_its_memory_cap(monkeypatch):
    monkeypatch.setattr(record_module, "MAX_HELD_BYTES", 1000)
    dataset = torch.zeros(10_000)  # the cell's own memory: a view of it pins nothing new
    x = torch.randn(10)
    with recording() as rec:
        for _ in range(5):
            x = x * 2  # 40 bytes a result
        batch = dataset[:100] + 0  # 400 bytes
        assert rec.failed is None and rec.held_bytes == 5 * 40 + 400
        big = torch.zeros(1000)  # 4,000 bytes: past the cap, the record gives up
    assert rec.failed is not None and "more than a record may hold" in rec.failed
    assert rec.calls == [] and rec.held_bytes == 0
    assert big.shape == (1000,) and batch.shape == (100,)


# -- per-sample gradients ----------------------------------------------------------------------
def _mlp_losses(batch: int, seed: int = 0):
    """The whole cell recorded, as a notebook runs it: the model is built (its parameters
    initialised in place) in the same cell as the losses."""
    with recording() as rec:
        torch.manual_seed(seed)
        mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 10))
        data = torch.randn(batch, 32)
        targets = torch.randint(0, 10, (batch,))
        losses = F.cross_entropy(mlp(data), targets, reduction="none")
    return mlp, data, targets, rec, losses


def _vmap_grad(model, data, targets) -> dict:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), t.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, data, targets)


@pytest.mark.parametrize("batch", [8, 1024])
def test_per_sample_gradients_equal_vmap_grad(batch):
    mlp, data, targets, rec, losses = _mlp_losses(batch)
    params = dict(mlp.named_parameters())
    jacobians = per_sample_jacobians(rec, params, losses)
    expected = _vmap_grad(mlp, data, targets)
    assert jacobians is not None and set(jacobians) == set(expected)
    for name, tensor in expected.items():
        assert jacobians[name].shape == (batch,) + tuple(params[name].shape)
        torch.testing.assert_close(jacobians[name], tensor)
    r = analysis.differentiate(losses, params, given=jacobians)
    for name, tensor in expected.items():
        torch.testing.assert_close(r.derivatives[name], tensor)


@pytest.mark.parametrize("flatten", ["view_size", "reshape_len", "reshape_tuple"])
def test_per_sample_gradients_of_a_conv_net_that_reshapes_by_batch_size(flatten):
    torch.manual_seed(5)
    conv, lin = torch.nn.Conv2d(1, 3, 3), torch.nn.Linear(3 * 4 * 4, 5)
    data, targets = torch.randn(8, 1, 6, 6), torch.randint(0, 5, (8,))

    def model(x, conv_params, lin_params):
        h = torch.relu(functional_call(conv, conv_params, (x,)))
        h = {"view_size": lambda: h.view(h.size(0), -1),
             "reshape_len": lambda: h.reshape(len(h), -1),
             "reshape_tuple": lambda: torch.reshape(h, (h.shape[0], -1))}[flatten]()
        return functional_call(lin, lin_params, (h,))

    conv_params, lin_params = dict(conv.named_parameters()), dict(lin.named_parameters())
    with recording() as rec:
        losses = F.cross_entropy(model(data, conv_params, lin_params), targets, reduction="none")
    params = {**{f"conv.{k}": v for k, v in conv_params.items()},
              **{f"lin.{k}": v for k, v in lin_params.items()}}
    got = per_sample_jacobians(rec, params, losses)

    def loss(p, x, t):
        c = {k[5:]: v for k, v in p.items() if k.startswith("conv.")}
        f = {k[4:]: v for k, v in p.items() if k.startswith("lin.")}
        return F.cross_entropy(model(x.unsqueeze(0), c, f), t.unsqueeze(0))

    detached = {k: v.detach() for k, v in params.items()}
    expected = vmap(grad(loss), in_dims=(None, 0, 0))(detached, data, targets)
    assert got is not None
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor)


def test_per_sample_keeps_a_trailing_axis_of_one():
    torch.manual_seed(1)
    net = torch.nn.Linear(4, 1)
    x = torch.randn(6, 4)
    with recording() as rec:
        y = torch.tanh(net(x))  # (6, 1)
    params = dict(net.named_parameters())
    got = per_sample_jacobians(rec, params, y)
    jac = reference_jacobian(lambda w, b: torch.tanh(F.linear(x, w, b)),
                             (params["weight"].detach(), params["bias"].detach()))
    torch.testing.assert_close(got["weight"], jac[0])
    torch.testing.assert_close(got["bias"], jac[1])


def test_batch_norm_in_training_mode_is_refused_and_the_slow_path_is_right():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 3))
    data, targets = torch.randn(6, 5), torch.randint(0, 3, (6,))
    with recording() as rec:
        losses = F.cross_entropy(model(data), targets, reduction="none")
    params = dict(model.named_parameters())
    assert per_sample_jacobians(rec, params, losses) is None
    names = list(params)

    def pure(*values):
        out = functional_call(model, dict(zip(names, values)), (data,))
        return F.cross_entropy(out, targets, reduction="none")

    expected = reference_jacobian(pure, tuple(p.detach() for p in params.values()))
    r = analysis.differentiate(losses, params)
    for name, tensor in zip(names, expected):
        torch.testing.assert_close(r.derivatives[name], tensor)


def test_a_loss_that_mixes_samples_is_refused():
    torch.manual_seed(3)
    net = torch.nn.Linear(3, 2)
    x = torch.randn(5, 3)
    with recording() as rec:
        h = net(x)
        losses = (h - h.mean(0)).pow(2).sum(1)  # centred over the batch
    assert per_sample_jacobians(rec, dict(net.named_parameters()), losses) is None


def test_per_sample_does_not_apply_to_other_shapes():
    net = torch.nn.Linear(3, 2)
    x = torch.randn(5, 3)
    with recording() as rec:
        y = net(x)  # (5, 2): not a vector of per-sample losses
    assert per_sample_jacobians(rec, dict(net.named_parameters()), y) is None
    assert per_sample_jacobians(None, dict(net.named_parameters()), y.sum(1)) is None


# -- modules as inputs -------------------------------------------------------------------------
def _model():
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def test_named_inputs_expands_a_module():
    mlp = _model()
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(named_inputs(mlp, None)) == names
    assert list(named_inputs(mlp, "mlp")) == [f"mlp.{n}" for n in names]
    x = torch.randn(2, requires_grad=True)
    both = named_inputs({"mlp": mlp, "x": x}, None)
    assert list(both) == [f"mlp.{n}" for n in names] + ["x"]
    assert both["mlp.2.bias"] is mlp[2].bias
    assert list(named_inputs(mlp.parameters(), None)) == ["x1", "x2", "x3", "x4"]
    mlp[0].bias.requires_grad_(False)
    assert "0.bias" not in named_inputs(mlp, None)
    with pytest.raises(VJPUsageError, match="no parameters"):
        named_inputs(torch.nn.ReLU(), "relu")


def _expected_module_jacobians(mlp, x) -> dict:
    names = [n for n, _ in mlp.named_parameters()]
    values = tuple(p.detach() for p in mlp.parameters())

    def pure(*ps):
        return functional_call(mlp, dict(zip(names, ps)), (x,)).squeeze(1)

    return {f"mlp.{n}": j for n, j in zip(names, reference_jacobian(pure, values))}


MODEL_CELL = """
torch.manual_seed(4)
mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
x = torch.randn(5, 3)
y = mlp(x).squeeze(1)
"""


@pytest.mark.parametrize("line", ["--wrt mlp", "--wrt mlp.parameters()"])
def test_wrt_module_in_the_magic(run_vjp, ip, line):
    r = run_vjp(MODEL_CELL, line)
    expected = _expected_module_jacobians(ip.user_ns["mlp"], ip.user_ns["x"])
    assert list(r.derivatives) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(r.jacobian(name), tensor)
    bundle = r._repr_mimebundle_()
    assert "mlp.0.weight" in bundle["text/plain"]
    assert {"text/markdown", "text/latex", "text/plain"} <= set(bundle)


@pytest.mark.parametrize("line", ["--wrt mlp.named_parameters()", "--wrt ps"])
def test_wrt_parameter_iterators_are_named_after_their_module(run_vjp, line):
    r = run_vjp(MODEL_CELL + "ps = list(mlp.parameters())\n", line)
    assert list(r.derivatives) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


def test_wrt_module_with_other_inputs_and_no_parameters(run_vjp, usage_error):
    r = run_vjp(MODEL_CELL.replace("torch.randn(5, 3)", "torch.randn(5, 3, requires_grad=True)"),
                "--wrt mlp x")
    assert list(r.derivatives)[-1] == "x" and "mlp.2.bias" in r.derivatives
    message = usage_error("%%vjp --wrt relu\nrelu = torch.nn.ReLU()\n"
                          "x = torch.randn(3, requires_grad=True)\ny = relu(x)")
    assert "no parameters" in message


PER_SAMPLE_CELL = """
import torch.nn.functional as F
torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
data, targets = torch.randn({batch}, 32), torch.randint(0, 10, ({batch},))
losses = F.cross_entropy(mlp(data), targets, reduction="none")
"""


@pytest.mark.parametrize("batch", [8, 1024])
def test_per_sample_gradients_through_the_magic(run_vjp, ip, batch):
    r = run_vjp(PER_SAMPLE_CELL.format(batch=batch), "--wrt mlp")
    ns = ip.user_ns
    expected = _vmap_grad(ns["mlp"], ns["data"], ns["targets"])
    assert list(r.derivatives) == [f"mlp.{n}" for n in expected]
    for name, tensor in expected.items():
        torch.testing.assert_close(r.derivatives[f"mlp.{name}"], tensor)


def test_batch_norm_per_sample_through_the_magic_is_right(run_vjp, ip):
    cell = PER_SAMPLE_CELL.format(batch=6).replace(
        "torch.nn.ReLU()", "torch.nn.BatchNorm1d(64)")
    r = run_vjp(cell, "--wrt mlp")
    mlp, data, targets = (ip.user_ns[n] for n in ("mlp", "data", "targets"))
    names = [n for n, _ in mlp.named_parameters()]

    def pure(*values):
        out = functional_call(mlp, dict(zip(names, values)), (data,))
        return F.cross_entropy(out, targets, reduction="none")

    expected = reference_jacobian(pure, tuple(p.detach() for p in mlp.parameters()))
    for name, tensor in zip(names, expected):
        torch.testing.assert_close(r.derivatives[f"mlp.{name}"], tensor)


class TestWiredByLead:
    """The magic's --gradcheck and per-sample path, and r.code with module names."""

    def test_gradcheck_flag_catches_a_wrong_backward(self, run_vjp, ip):
        ip.user_ns["Wrong"] = _square(3.0)
        r = run_vjp("x = torch.linspace(1, 2, 5, requires_grad=True)\ny = Wrong.apply(x)",
                    "--gradcheck")
        assert r.gradcheck.ok is False and r.gradcheck.max_error["x"] > 0.5
        ip.user_ns["Right"] = _square(2.0)
        r = run_vjp("x = torch.linspace(1, 2, 5, requires_grad=True)\ny = Right.apply(x)",
                    "--gradcheck")
        assert r.gradcheck.ok is True and r.gradcheck.max_error["x"] < 1e-6

    def test_per_sample_through_differentiate(self):
        mlp, data, targets, rec, losses = _mlp_losses(64)
        params = dict(mlp.named_parameters())
        import vjp_magic

        r = vjp_magic.differentiate(losses, params,
                                    given=per_sample_jacobians(rec, params, losses))
        for name, tensor in _vmap_grad(mlp, data, targets).items():
            torch.testing.assert_close(r.derivatives[name], tensor)

    def test_the_magic_takes_the_vectorised_path(self, run_vjp, monkeypatch):
        from vjp_magic.run import persample

        answers = []

        def spy(*args, **kwargs):
            answers.append(per_sample_jacobians(*args, **kwargs))
            return answers[-1]

        monkeypatch.setattr(persample, "per_sample_jacobians", spy)
        run_vjp(PER_SAMPLE_CELL.format(batch=64), "--wrt mlp")
        assert len(answers) == 1 and answers[0] is not None

    def test_code_runs_with_module_parameter_names(self, run_vjp, ip):
        r = run_vjp(MODEL_CELL, "--wrt mlp")
        namespace = dict(ip.user_ns)
        exec(r.code, namespace)  # noqa: S102 - the generated code must run as shown
        expected = _expected_module_jacobians(ip.user_ns["mlp"], ip.user_ns["x"])
        assert math.isclose(float(namespace["d_mlp_2_bias"].sum()),
                            float(expected["mlp.2.bias"].sum()), rel_tol=1e-5)


def test_differentiate_accepts_a_module():
    import vjp_magic

    mlp = _model()
    x = torch.randn(5, 3)
    y = mlp(x).squeeze(1)
    expected = _expected_module_jacobians(mlp, x)
    r = vjp_magic.differentiate(y, mlp, names="mlp")
    assert list(r.derivatives) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(r.jacobian(name), tensor)
    assert list(vjp_magic.differentiate(y, mlp).derivatives)[0] == "0.weight"


@pytest.mark.parametrize("how", ["detach", "no_grad"])
def test_gradcheck_failing_through_a_detach_says_so(how):
    x = torch.randn(5, requires_grad=True)

    def centred():
        if how == "detach":
            return x - x.mean().detach()
        with torch.no_grad():
            m = x.mean()
        return x - m

    report, _ = _checked(centred, {"x": x})
    # autograd: the identity; the function: I − 1/5 (mathematics); the entries differ by 1/5·v
    assert report.ok is False and report.custom == ()
    assert "detaches" in report.note and report.max_error["x"] > 1e-2


def test_gradcheck_of_batch_norm_in_training_mode_leaves_its_statistics():
    with recording() as rec:  # the model built in the cell: its parameters change there
        torch.manual_seed(6)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        x = torch.randn(6, 3)
        y = torch.tanh(model(x)).sum(1)
    mean, var = model[1].running_mean.clone(), model[1].running_var.clone()
    params = dict(model.named_parameters())
    report = gradcheck(rec, params, y)
    assert report.ok and set(report.max_error) == set(params)
    assert torch.equal(model[1].running_mean, mean) and torch.equal(model[1].running_var, var)


def test_gradcheck_refuses_a_replay_that_stays_in_float32():
    class Float32Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.float() ** 2

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * g * x

    x = torch.randn(4, requires_grad=True)
    report, _ = _checked(lambda: Float32Square.apply(x), {"x": x})
    assert report.ok is None and report.max_error == {} and "float32" in report.note


def test_wrt_a_tuple_of_tensors_names_each(run_vjp):
    r = run_vjp("x = torch.randn(3, requires_grad=True)\nw = torch.randn(3, requires_grad=True)\n"
                "y = x * w", "--wrt (x, w)")
    assert list(r.derivatives) == ["x", "w"]
    torch.testing.assert_close(r.derivatives["x"], r.inputs["w"].tensor.detach())


def test_gradcheck_catches_an_error_in_one_entry_of_many():
    class OneEntryWrong(torch.autograd.Function):
        """x ↦ x², backward right except at the last entry (×3): 1 entry of 2,304."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            grad = 2 * g * x
            grad.view(-1)[-1] *= 3
            return grad

    x = torch.linspace(-1, 1.5, 48 * 48).reshape(48, 48).requires_grad_()
    report, _ = _checked(lambda: OneEntryWrong.apply(x).sin(), {"x": x})
    assert report.ok is False and report.checked == {"x": 64}


# -- the cell's own code runs once ------------------------------------------------------------
_COUNTED_SQUARE = """
calls = []
class Sq(torch.autograd.Function):
    generate_vmap_rule = True
    @staticmethod
    def forward(x):
        calls.append(1)
        return x * x
    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2 * g * x
"""


def test_per_sample_path_never_runs_a_custom_forward_again(ip, run_ok, run_vjp, assert_tensor):
    """A replay would call the user's forward again: the per-sample path refuses it and the
    derivatives come from the graph, right, with the forward run once."""
    run_ok(_COUNTED_SQUARE)
    r = run_vjp("w = torch.ones(3, requires_grad=True)\ndata = torch.randn(16, 3)\n"
                "y = Sq.apply(data * w).sum(1)", "--wrt w")
    assert len(ip.user_ns["calls"]) == 1
    data = ip.user_ns["data"]
    expected = torch.autograd.functional.jacobian(lambda w: ((data * w) ** 2).sum(1),
                                                  torch.ones(3))
    assert_tensor(r.derivatives["w"], expected)


def test_gradcheck_refuses_a_function_applied_through_an_earlier_reference(ip, run_ok, run_vjp):
    """``sq = Sq.apply`` before the cell: the record holds only the forward's inner ops, so
    the check says it cannot replay instead of reporting a correct backward as FAILED."""
    run_ok(_COUNTED_SQUARE + "sq = Sq.apply")
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = sq(x)", "--gradcheck")
    assert r.gradcheck.ok is None and r.gradcheck.max_error == {}
    assert "reference made before the cell" in r.gradcheck.note
    assert "FAILED" not in r._repr_mimebundle_()["text/plain"]


# -- --gradcheck at kinks: inconclusive, never FAILED for a right derivative -------------------
def _relu_with_backward(at_zero: float, slope: float = 1.0):
    class CustomRelu(torch.autograd.Function):
        """relu, backward ``slope`` on x > 0 and ``at_zero`` at x = 0 (right: slope 1 and
        anything in [0, 1] at 0, the one-sided slopes)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.where(x == 0, at_zero, (x > 0).to(x.dtype) * slope)

    return CustomRelu


def test_gradcheck_at_the_tutorials_relu_kink_is_inconclusive(run_vjp):
    """linspace(-1, 1, 5) holds 0 exactly: relu has no derivative there to check."""
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = torch.relu(x)",
                "--gradcheck")
    assert r.gradcheck.ok is None and r.gradcheck.inconclusive == {"x": (2,)}
    assert r.gradcheck.max_error["x"] < 1e-6 and r.gradcheck.kinks == ("relu",)
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "inconclusive at x[2] (a kink: relu is not differentiable there)" in text
    assert "FAILED" not in text and "custom autograd.Function" not in text
    markdown = r._repr_mimebundle_()["text/markdown"]
    assert "inconclusive at `x[2]` (a kink: relu is not differentiable there)" in markdown


@pytest.mark.parametrize("near", [5e-7, -5e-7, 1e-7, 3e-7 - 1e-6])
def test_gradcheck_steps_around_a_kink_within_one_step(near):
    """The kink of relu at 0 lies within the step 1e-6 of x: a one-sided difference (or a
    smaller step) that does not cross it is used, and agrees (relu' = 1 or 0: mathematics)."""
    x = torch.tensor([near, 0.3, -0.2], dtype=torch.float64, requires_grad=True)
    report, _ = _checked(lambda: torch.relu(x) * 2, {"x": x})
    assert report.ok is True and report.inconclusive == {}
    assert report.max_error["x"] < 1e-6


def test_gradcheck_of_relu_near_its_kink_passes_through_the_magic(run_vjp):
    r = run_vjp("x = torch.tensor([5e-7, -5e-7, 0.3], requires_grad=True)\ny = torch.relu(x)",
                "--gradcheck")
    assert r.gradcheck.ok is True and r.gradcheck.inconclusive == {}
    assert "Gradient check passed" in r._repr_mimebundle_()["text/plain"]


def test_gradcheck_of_clamp_is_inconclusive_only_at_its_bounds():
    x = torch.tensor([[0.5, -0.5], [0.5 + 3e-7, 0.2]], requires_grad=True)
    report, _ = _checked(lambda: torch.clamp(x, -0.5, 0.5), {"x": x})
    assert report.ok is None and report.inconclusive == {"x": ((0, 0), (0, 1))}
    assert report.kinks == ("clamp",)


def test_gradcheck_of_abs_at_zero_takes_autograds_subgradient():
    """|x|' at 0 is 0 in autograd: between the one-sided slopes -1 and 1, so inconclusive."""
    x = torch.tensor([0.0, 1.5, -2.0], dtype=torch.float64, requires_grad=True)
    report, _ = _checked(lambda: torch.abs(x).sum(), {"x": x})
    assert report.ok is None and report.inconclusive == {"x": (0,)}


@pytest.mark.parametrize("at_zero, slope, ok", [(0.0, 1.0, None), (0.5, 1.0, None),
                                                (5.0, 1.0, False), (0.0, 2.0, False)])
def test_a_wrong_custom_backward_at_a_kink_still_fails(at_zero, slope, ok):
    """FAILED where every safe difference disagrees: a slope of 2, or 5 at the kink (outside
    the one-sided slopes 0 and 1); a right backward there is only inconclusive."""
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    function = _relu_with_backward(at_zero, slope)
    report, _ = _checked(lambda: function.apply(x), {"x": x})
    assert report.ok is ok
    assert report.custom == ("CustomReluBackward",)
    if ok is False and slope == 2.0:
        assert report.max_error["x"] > 0.5  # relu' = 1 at x = 0.5, 1: off by 1


def test_a_failure_at_a_kink_without_custom_functions_blames_none(run_vjp, ip):
    ip.user_ns["Wrong"] = _relu_with_backward(5.0)
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = Wrong.apply(x)",
                "--gradcheck")
    assert r.gradcheck.ok is False
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "custom autograd.Function's backward is the likely culprit" in text
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = torch.relu(x) * 3",
                "--gradcheck")
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert r.gradcheck.ok is None and "inconclusive at x[2]" in text
    assert "custom" not in text and "FAILED" not in text


# -- --gradcheck leaves the global RNG as a plain run does -------------------------------------
_RANDOM_CELLS = {
    "rand_like_dropout": "x = torch.linspace(-1, 1, 6, requires_grad=True)\n"
                         "noise = torch.rand_like(x)\n"
                         "y = F.dropout(x * noise, 0.5, training=True)",
    "drawn_in_a_function": "x = torch.linspace(-1, 1, 6, requires_grad=True)\n"
                           "y = Jitter.apply(x) * 2",
}


@pytest.mark.parametrize("line", ["--gradcheck", "--gradcheck --wrt x", "--check x"])
@pytest.mark.parametrize("cell", _RANDOM_CELLS)
def test_the_rng_after_the_magic_is_as_after_a_plain_run(ip, run_ok, cell, line):
    run_ok("import torch.nn.functional as F")
    ip.user_ns["Jitter"] = _Jitter
    body = _RANDOM_CELLS[cell]
    torch.manual_seed(5)
    run_ok(body)
    plain = torch.get_rng_state()
    torch.manual_seed(5)
    run_ok(f"%%vjp {line}\n{body}")
    assert torch.equal(torch.get_rng_state(), plain)


def test_gradcheck_itself_restores_the_rng():
    """A replay that draws (a custom Function's forward) runs under fork_rng."""
    x = torch.linspace(-1, 1, 6, requires_grad=True)
    with recording() as rec:
        y = _Jitter.apply(x)
    state = torch.get_rng_state()
    report = gradcheck(rec, {"x": x}, y)
    assert report.ok is None and "random draws" in report.note
    assert torch.equal(torch.get_rng_state(), state)
