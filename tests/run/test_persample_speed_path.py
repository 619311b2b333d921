"""Per-sample gradients by per-layer rules (``run/expanded.py``): Linear, convolutions (groups,
stride, dilation, ``padding='same'``) and LayerNorm, from one replay of the batch, against a
loop of ``torch.autograd.grad`` per sample (float64); the rules refuse samples that mix after a
layer; the analysis fires no user hook and leaves every ``.grad`` alone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from vjp_magic.run import persample
from vjp_magic.run.expanded import per_sample_by_rules, rule_uses
from vjp_magic.run.record import recording


def _models():
    return {
        "mlp": (lambda: torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(),
                                            torch.nn.Linear(7, 3)), (6, 5)),
        "cnn": (lambda: torch.nn.Sequential(
            torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(4, 6, 3, stride=2, groups=2, padding="valid"), torch.nn.Flatten(),
            torch.nn.Linear(6, 3)), (5, 2, 6, 6)),
        "cnn_strided_dilated": (lambda: torch.nn.Sequential(
            torch.nn.Conv2d(2, 3, 3, stride=2, dilation=2, padding=1), torch.nn.Tanh(),
            torch.nn.Flatten(), torch.nn.Linear(3 * 3 * 3, 3)), (5, 2, 7, 7)),
        "conv1d_same": (lambda: torch.nn.Sequential(
            torch.nn.Conv1d(2, 4, 4, padding="same", dilation=2), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(4 * 9, 3)), (5, 2, 9)),
        "layer_norm": (lambda: torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.LayerNorm(6),
                                                   torch.nn.Linear(6, 3)), (6, 4, 5)),
    }


def _recorded(model, x, targets):
    with recording() as record:
        out = model(x)
        out = out.mean(1) if out.dim() > 2 else out
        losses = F.cross_entropy(out, targets, reduction="none")
    return record, losses


def _loop(losses, params: dict) -> dict:
    """The expected: one torch.autograd.grad per sample."""
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
            for b in range(losses.shape[0])]
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(params)}


@pytest.mark.parametrize("which", list(_models()))
def test_rules_equal_a_loop_of_per_sample_backward_passes(which):
    make, shape = _models()[which]
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    targets = torch.randint(0, 3, (shape[0],))
    record, losses = _recorded(model, x, targets)
    params = dict(model.named_parameters())
    replay, data = persample.sample_data(record, params, losses)
    assert rule_uses(replay, params, shape[0]) is not None  # every parameter has a rule
    by_rules = per_sample_by_rules(replay, params, data, losses)
    expected = _loop(losses, params)
    assert by_rules is not None
    for name, value in expected.items():
        torch.testing.assert_close(by_rules[name], value, rtol=1e-10, atol=1e-12)
    public = persample.per_sample_jacobians(record, params, losses)
    for name, value in expected.items():
        torch.testing.assert_close(public[name], value, rtol=1e-10, atol=1e-12)


def test_samples_mixed_after_a_layer_are_refused():
    torch.manual_seed(1)
    first, second = torch.nn.Linear(5, 7).double(), torch.nn.Linear(7, 3).double()
    x, targets = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    with recording() as record:
        h = torch.tanh(first(x))
        losses = F.cross_entropy(second(h - h.mean(0)), targets, reduction="none")
    params = {"w1": first.weight, "b1": first.bias, "w2": second.weight, "b2": second.bias}
    replay, data = persample.sample_data(record, params, losses)
    assert per_sample_by_rules(replay, params, data, losses) is None
    assert persample.per_sample_jacobians(record, params, losses) is None


def test_data_mixed_before_the_first_layer_gives_the_true_jacobian():
    """Normalising the batch before the model mixes data, not parameters: each loss still
    reads the parameters through its own rows only, and the rules give the Jacobian."""
    torch.manual_seed(2)
    first, second = torch.nn.Linear(5, 7).double(), torch.nn.Linear(7, 3).double()
    x, targets = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    with recording() as record:
        centred = x - x.mean(0)
        losses = F.cross_entropy(second(torch.tanh(first(centred))), targets, reduction="none")
    params = {"w1": first.weight, "b1": first.bias, "w2": second.weight, "b2": second.bias}
    got = persample.per_sample_jacobians(record, params, losses)

    def pure(w1, b1, w2, b2):
        hidden = torch.tanh(F.linear(x - x.mean(0), w1, b1))
        return F.cross_entropy(F.linear(hidden, w2, b2), targets, reduction="none")

    expected = jacobian(pure, tuple(p.detach() for p in params.values()))
    assert got is not None
    for name, value in zip(params, expected):
        torch.testing.assert_close(got[name], value)


def test_a_parameter_without_a_rule_is_left_to_vmap():
    torch.manual_seed(3)
    layer = torch.nn.Linear(4, 3).double()
    scale = torch.nn.Parameter(torch.rand(3, dtype=torch.float64))
    x, targets = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    with recording() as record:
        losses = F.cross_entropy(layer(x) * scale, targets, reduction="none")
    params = {"weight": layer.weight, "bias": layer.bias, "scale": scale}
    replay, _ = persample.sample_data(record, params, losses)
    assert rule_uses(replay, params, 5) is None
    got = persample.per_sample_jacobians(record, params, losses)
    expected = _loop(losses, params)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value)


CELL = "losses = F.cross_entropy(model(data), targets, reduction='none')"


def test_the_analysis_fires_no_user_hook_and_changes_no_grad(ip, run_ok):
    """Hooks fire as in a plain run of the cell (forward hooks once, backward ones never),
    and no ``.grad`` appears, on the parameters or on the data."""
    run_ok("""
import torch.nn.functional as F
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(3 * 4 * 4, 4))
data = torch.randn(40, 1, 6, 6, requires_grad=True)
targets = torch.randint(0, 4, (40,))
fired = {"forward": 0, "backward": 0, "tensor": 0}
def forward_hook(module, args, out):
    fired["forward"] += 1
def backward_hook(module, grad_in, grad_out):
    fired["backward"] += 1
def tensor_hook(grad):
    fired["tensor"] += 1
model[0].register_forward_hook(forward_hook)
model[3].register_full_backward_hook(backward_hook)
model[3].weight.register_hook(tensor_hook)
data.register_hook(tensor_hook)
""")
    run_ok(CELL)
    plain = dict(ip.user_ns["fired"])
    result = run_ok(f"%%vjp --wrt model\n{CELL}")
    fired = ip.user_ns["fired"]
    assert fired["forward"] == 2 * plain["forward"] == 2  # the cell's own run, once each
    assert fired["backward"] == plain["backward"] == 0
    assert fired["tensor"] == plain["tensor"] == 0
    assert ip.user_ns["data"].grad is None
    assert all(p.grad is None for p in ip.user_ns["model"].parameters())
    losses, params = ip.user_ns["losses"], dict(ip.user_ns["model"].named_parameters())
    expected = _loop(losses, params)
    for name, value in expected.items():
        torch.testing.assert_close(result.derivatives[f"model.{name}"], value)


def test_dropout_in_training_mode_uses_the_cells_own_mask():
    """The rules replay the batch with the cell's random draws (vmap over samples cannot:
    each sample would draw its own mask); the global RNG is left as it was."""
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(7, 3)).double()
    x, targets = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    params = dict(model.named_parameters())
    state = torch.get_rng_state()
    got = persample.per_sample_jacobians(record, params, losses)
    assert torch.equal(state, torch.get_rng_state())
    expected = _loop(losses, params)
    assert got is not None
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12)
