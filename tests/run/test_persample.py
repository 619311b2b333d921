"""Per-sample gradients at vectorised speed (``run/persample.py``): the record of a batch of
per-sample losses, replayed under ``vmap``, against ``torch.func``'s vmap(grad); refused where
samples mix or a module keeps batch statistics, and a custom forward never run again."""
from __future__ import annotations

import pytest
from per_sample_reference import vmap_grad
import torch
import torch.nn.functional as F
from custom_functions import COUNTED_SQUARE
from torch.autograd.functional import jacobian as reference_jacobian
from torch.func import functional_call, grad, vmap

from vjp_magic.core import analysis
from vjp_magic.run.persample import per_sample_jacobians
from vjp_magic.run.record import recording


# -- per-sample gradients against vmap(grad); where they are refused -------------------------------
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


@pytest.mark.parametrize("batch", [8, 1024])
def test_per_sample_gradients_equal_vmap_grad(batch):
    mlp, data, targets, rec, losses = _mlp_losses(batch)
    params = dict(mlp.named_parameters())
    jacobians = per_sample_jacobians(rec, params, losses)
    expected = vmap_grad(mlp, data, targets)
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


# -- through the magic and vjp_magic.differentiate -------------------------------------------------
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
    expected = vmap_grad(ns["mlp"], ns["data"], ns["targets"])
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


def test_per_sample_through_differentiate():
    mlp, data, targets, rec, losses = _mlp_losses(64)
    params = dict(mlp.named_parameters())
    import vjp_magic

    r = vjp_magic.differentiate(losses, params,
                                given=per_sample_jacobians(rec, params, losses))
    for name, tensor in vmap_grad(mlp, data, targets).items():
        torch.testing.assert_close(r.derivatives[name], tensor)

def test_the_magic_takes_the_vectorised_path(run_vjp, monkeypatch):
    from vjp_magic.run import persample

    answers = []

    def spy(*args, **kwargs):
        answers.append(per_sample_jacobians(*args, **kwargs))
        return answers[-1]

    monkeypatch.setattr(persample, "per_sample_jacobians", spy)
    run_vjp(PER_SAMPLE_CELL.format(batch=64), "--wrt mlp")
    assert len(answers) == 1 and answers[0] is not None


# -- the cell's own code runs once: a custom forward is never run again ----------------------------
def test_per_sample_path_never_runs_a_custom_forward_again(ip, run_ok, run_vjp, assert_tensor):
    """A replay would call the user's forward again: the per-sample path refuses it and the
    derivatives come from the graph, right, with the forward run once."""
    run_ok(COUNTED_SQUARE)
    r = run_vjp("w = torch.ones(3, requires_grad=True)\ndata = torch.randn(16, 3)\n"
                "y = Sq.apply(data * w).sum(1)", "--wrt w")
    assert len(ip.user_ns["calls"]) == 1
    data = ip.user_ns["data"]
    expected = torch.autograd.functional.jacobian(lambda w: ((data * w) ** 2).sum(1),
                                                  torch.ones(3))
    assert_tensor(r.derivatives["w"], expected)
