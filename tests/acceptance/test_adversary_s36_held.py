"""Adversarial review, session 36 (G17: issues 20 and 23 as they stand): what held. Functions,
models and inputs the earlier tests did not use — segment reductions, scatter_reduce,
index_put with duplicate indices, fold / dilated unfold, transposed and grouped convolutions,
pixel_unshuffle, bilinear interpolation, cummax, take, torch.sparse.mm; Hessians through
segment sums, gathers and windows; per-sample gradients of models with parametrizations
(spectral_norm's power iteration writes buffers in forward), buffers written in forward,
RReLU / AlphaDropout / Dropout1d (RNG), forward hooks, sequence-first attention and LSTM,
permuted per-sample losses. All held; these guard them.

Expected values: ``torch.autograd.functional.jacobian`` / ``hessian``, a loop of
``torch.autograd.grad`` over one plain forward, and a plain run's state.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import vjp_magic


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


N = 120
_IDX = torch.randint(0, N, (N,), generator=_generator(5))
_SEG = torch.sort(torch.randint(0, 30, (N,), generator=_generator(6))).values
_LENS = torch.bincount(_SEG, minlength=30)
_PERM = torch.randperm(N, generator=_generator(7))

_MAPS = {  # name: (f, input shape)
    "segment_reduce sum": (lambda x: torch.segment_reduce(x, "sum", lengths=_LENS).sin(), (N,)),
    "segment_reduce max": (lambda x: torch.segment_reduce(x, "max", lengths=_LENS), (N,)),
    "scatter_reduce amax": (lambda x: torch.zeros(30, dtype=x.dtype).scatter_reduce(
        0, _SEG, x, "amax", include_self=False), (N,)),
    "scatter_reduce prod": (lambda x: torch.ones(30, dtype=x.dtype).scatter_reduce(
        0, _SEG, x, "prod"), (N,)),
    "scatter_reduce mean": (lambda x: torch.zeros(30, dtype=x.dtype).scatter_reduce(
        0, _SEG, x, "mean"), (N,)),
    "index_put, duplicates, no accumulate": (
        lambda x: torch.zeros(N, dtype=x.dtype).index_put((_IDX,), x.exp()), (N,)),
    "index_put, permutation": (
        lambda x: torch.zeros(N, dtype=x.dtype).index_put((_PERM,), x.exp()), (N,)),
    "fold": (lambda x: F.fold(x, (12, 12), 3), (1, 9, 100)),
    "unfold, dilated, strided": (
        lambda x: F.unfold(x, 3, dilation=2, padding=1, stride=3).prod(1), (1, 1, 20, 20)),
    "conv_transpose1d, stride 2": (lambda x: F.conv_transpose1d(
        x, torch.tensor([[[1.0, 2.0, 3.0]]], dtype=x.dtype), stride=2), (1, 1, N)),
    "conv1d, groups": (lambda x: F.conv1d(x, torch.randn(4, 1, 3, generator=_generator(1)).to(
        x.dtype), groups=2, padding=1).tanh(), (1, 2, N // 2)),
    "pixel_unshuffle then cumsum": (
        lambda x: F.pixel_unshuffle(x.exp(), 2).cumsum(1), (1, 1, 16, 16)),
    "bilinear, align_corners": (lambda x: F.interpolate(
        x, scale_factor=2, mode="bilinear", align_corners=True), (1, 1, 10, 10)),
    "cummax": (lambda x: x.cummax(0).values, (N,)),
    "take": (lambda x: torch.take(x, _IDX.view(10, -1) % x.numel()) ** 3, (20, 10)),
    "sparse.mm": (lambda x: torch.sparse.mm(torch.eye(N, dtype=x.dtype).roll(3, 1).to_sparse(),
                                            x.view(N, 1)).squeeze(1) ** 2, (N,)),
    "reflect-padded product": (
        lambda x: (lambda p: p[..., 2:] * p[..., :-2])(F.pad(x, (1, 1), mode="reflect")),
        (1, 1, N)),
    "scatter_add_ in place on a clone": (
        lambda x: x.clone().scatter_add_(0, _IDX, x ** 2), (N,)),
}


_SLOW_MAPS = {"fold", "pixel_unshuffle then cumsum", "segment_reduce sum",
              "conv_transpose1d, stride 2"}  # over 2 s on the shared 2-core machine


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow)
                                  if case in _SLOW_MAPS else case for case in _MAPS])
def test_sparse_jacobian_equals_autograd(case, dtype):
    f, shape = _MAPS[case]
    x = torch.randn(shape, dtype=dtype, generator=_generator(1)).requires_grad_()
    y = f(x)
    expected = torch.autograd.functional.jacobian(f, x.detach()).reshape(y.numel(), x.numel())
    r = vjp_magic.differentiate(y, x, seed=0)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), expected,
                               rtol=tol, atol=tol * max(1.0, expected.abs().max().item()))
    vectors = r.gradients["x"]  # each entry of y in exactly one vector
    assert all(v.shape == y.shape for v in vectors)
    assert torch.equal(sum(vectors), torch.ones_like(y))
    assert x.grad is None


_LOW = {
    "conv2d, stride 2, two channels": (lambda x: F.conv2d(
        x, torch.randn(3, 2, 3, 3, generator=_generator(2)).to(x.dtype), stride=2,
        padding=1).relu(), (1, 2, 14, 14)),
    "block-diagonal matmul": (lambda x: torch.block_diag(
        *[torch.randn(5, 5, generator=_generator(k)).to(x.dtype) for k in range(24)])
        @ x.tanh(), (N,)),
}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(_LOW))
def test_sparse_jacobian_in_half_precision_is_near_float64(case, dtype):
    f, shape = _LOW[case]
    x64 = torch.randn(shape, generator=_generator(1)).to(dtype).double()
    expected = torch.autograd.functional.jacobian(lambda t: f(t).double(), x64)
    x = x64.to(dtype).requires_grad_()
    y = f(x)
    got = vjp_magic.differentiate(y, x, seed=0).jacobian("x", layout=torch.sparse_csr)
    assert got.dtype == dtype
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.to_dense().double(), expected.reshape(y.numel(), -1),
                               rtol=6e-2, atol=6e-2 * scale)


# -- sparse Hessians ----------------------------------------------------------------------------
_SCALARS = {
    "segment logsumexp": lambda x: torch.zeros(30, dtype=x.dtype).index_add(
        0, _SEG, x.exp()).log().sum(),
    "gathered products": lambda x: (x * x[_IDX]).sum(),
    "windowed cumsum cubed": lambda x: ((lambda c: c[4:] - c[:-4])(x.cumsum(0)) ** 3).sum(),
    "unfold product": lambda x: x.unfold(0, 3, 3).prod(1).sum(),
    "index_add cubed": lambda x: torch.zeros(N, dtype=x.dtype).index_add(0, _IDX, x).pow(3).sum(),
    "where with a roll": lambda x: torch.where(x > 0, x ** 3, x.roll(1) * x).sum(),
    "max_pool squared": lambda x: F.max_pool1d(x.view(1, 1, -1) ** 2, 4, 2).pow(2).sum(),
    "strided Rosenbrock": lambda x: ((1 - x[::2]) ** 2
                                     + 100 * (x[1::2] - x[::2] ** 2) ** 2).sum(),
    "coupling 1e-30 beside x²": lambda x: (x ** 2 + 1e-30 * x * x.roll(7)).sum(),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(_SCALARS))
def test_sparse_hessian_equals_autograd(case, dtype):
    f = _SCALARS[case]
    x = torch.randn(N, dtype=dtype, generator=_generator(1)).requires_grad_()
    expected = torch.autograd.functional.hessian(f, x.detach())
    h = vjp_magic.hessian(f(x), x, seed=0)
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    atol = tol * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(), expected,
                               rtol=tol, atol=atol)
    torch.testing.assert_close(h.hessian("x").reshape(N, N), expected, rtol=tol, atol=atol)


def test_a_hessian_through_segment_reduce_is_refused_by_name():
    x = torch.randn(N, dtype=torch.float64, generator=_generator(1)).requires_grad_()
    y = torch.segment_reduce(x.sin() + 2, "prod", lengths=_LENS).sum()
    with pytest.raises(vjp_magic.VJPUsageError, match="segment_reduce"):
        vjp_magic.hessian(y, x, seed=0)


# -- odd inputs and outputs -----------------------------------------------------------------------
def test_an_output_that_is_the_input_or_its_view():
    x = torch.randn(40, dtype=torch.float64, generator=_generator(1)).requires_grad_()
    assert torch.equal(vjp_magic.differentiate(x, x, seed=0).jacobian(
        "x", layout=torch.sparse_csr).to_dense(), torch.eye(40, dtype=torch.float64))
    y = x.view(8, 5).T
    expected = torch.autograd.functional.jacobian(lambda t: t.view(8, 5).T, x.detach())
    assert torch.equal(vjp_magic.differentiate(y, x, seed=0).jacobian(
        "x", layout=torch.sparse_csr).to_dense(), expected.reshape(40, 40))
    assert vjp_magic.dependency(x, x, seed=0).kind == "independent"


def test_an_infinite_entry_leaves_the_other_derivatives_as_mathematics_says():
    x = torch.randn(64, dtype=torch.float64, generator=_generator(1))
    x[3] = float("inf")
    x.requires_grad_()
    got = vjp_magic.differentiate(x.roll(1) + x**2, x, seed=0).jacobian(
        "x", layout=torch.sparse_csr).to_dense()
    assert got[4, 3] == 1.0 and got[3, 3] == float("inf")  # y[4] = x[3] + x[4]²
    assert got[4, 4] == 2 * x[4].item()


def test_a_transposed_leaf_gives_the_sparse_jacobian():
    x = torch.randn(30, 40, dtype=torch.float64, generator=_generator(1)).T.requires_grad_()

    def f(t):
        return t.roll(1, 0) * t
    expected = torch.autograd.functional.jacobian(f, x.detach()).reshape(1200, 1200)
    got = vjp_magic.differentiate(f(x), x, seed=0).jacobian("x", layout=torch.sparse_csr)
    torch.testing.assert_close(got.to_dense(), expected)


# -- per-sample gradients: values and the state a plain run leaves -----------------------------
class _Ema(nn.Module):
    """A buffer written in forward (an input running mean) and a call counter."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("avg", torch.zeros(4))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        with torch.no_grad():
            self.avg.mul_(0.9).add_(0.1 * x.mean(0))
            self.count += 1
        return self.lin(x - self.avg)


_MODELS = {
    "spectral_norm (power iteration in forward)": lambda: nn.Sequential(
        spectral_norm(nn.Linear(4, 5)), nn.Tanh(), nn.Linear(5, 1)),
    "weight_norm": lambda: nn.Sequential(weight_norm(nn.Linear(4, 5)), nn.Tanh(),
                                         nn.Linear(5, 1)),
    "a buffer written in forward": lambda: nn.Sequential(_Ema(), nn.Tanh(), nn.Linear(3, 1)),
    "RReLU in training": lambda: nn.Sequential(nn.Linear(4, 5), nn.RReLU(), nn.Linear(5, 1)),
    "AlphaDropout": lambda: nn.Sequential(nn.Linear(4, 5), nn.AlphaDropout(0.3), nn.Linear(5, 1)),
    "Dropout1d": lambda: nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (3, 2)), nn.Dropout1d(0.5),
                                       nn.Flatten(), nn.Linear(6, 1)),
}


def _model(case, calls):
    torch.manual_seed(0)
    model = _MODELS[case]()
    model[0].register_forward_hook(lambda *args: calls.append(1))
    return model


@pytest.mark.parametrize("batch", [6, pytest.param(48, marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(_MODELS))
def test_per_sample_gradients_of_a_callable_keep_the_plain_state(case, batch):
    data = torch.randn(batch, 4, generator=_generator(1))
    target = torch.randn(batch, generator=_generator(2))
    calls: list = []
    model = _model(case, calls)
    torch.manual_seed(7)
    losses = (model(data).squeeze(1) - target) ** 2
    names = [name for name, _ in model.named_parameters()]
    rows = [torch.autograd.grad(losses[b], list(model.parameters()), retain_graph=True)
            for b in range(batch)]
    expected = {name: torch.stack([row[k] for row in rows]) for k, name in enumerate(names)}
    plain = (torch.get_rng_state(), copy.deepcopy(model.state_dict()), len(calls))

    calls = []
    model = _model(case, calls)
    torch.manual_seed(7)
    r = vjp_magic.differentiate(lambda: (model(data).squeeze(1) - target) ** 2, model,
                                names="m", seed=0)
    assert torch.equal(torch.get_rng_state(), plain[0])
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in plain[1].items())
    assert len(calls) == plain[2] == 1
    assert all(p.grad is None for p in model.parameters())
    for name in names:
        torch.testing.assert_close(r.jacobian(f"m.{name}").reshape(expected[name].shape),
                                   expected[name], rtol=1e-4, atol=1e-5)


def _sequence_first_attention():
    torch.manual_seed(0)
    model, data = nn.MultiheadAttention(8, 2), torch.randn(5, 48, 8, generator=_generator(1))
    return model, lambda: model(data, data, data)[0].pow(2).sum((0, 2))


def _sequence_first_lstm():
    torch.manual_seed(0)
    model, data = nn.LSTM(3, 4), torch.randn(6, 48, 3, generator=_generator(1))
    return model, lambda: model(data)[0][-1].pow(2).sum(1)


def _permuted_losses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    data = torch.randn(48, 4, generator=_generator(1))
    order = torch.randperm(48, generator=_generator(3))
    return model, lambda: model(data).squeeze(1).pow(2)[order]


@pytest.mark.slow
@pytest.mark.parametrize("build", [_sequence_first_attention, _sequence_first_lstm,
                                   _permuted_losses])
def test_per_sample_gradients_where_the_sample_axis_is_not_first(build):
    model, losses_of = build()
    losses = losses_of()
    params = list(model.parameters())
    rows = [torch.autograd.grad(losses[b], params, retain_graph=True)
            for b in range(losses.numel())]
    model, losses_of = build()
    r = vjp_magic.differentiate(losses_of, model, names="m", seed=0)
    for k, (name, _) in enumerate(model.named_parameters()):
        expected = torch.stack([row[k] for row in rows])
        torch.testing.assert_close(r.jacobian(f"m.{name}").reshape(expected.shape), expected,
                                   rtol=1e-4, atol=1e-5)


# -- switches the user set before the call stay as they are ------------------------------
def _switches() -> dict:
    import random

    np = pytest.importorskip("numpy")
    return {"random": random.getstate(), "numpy": np.random.get_state()[1].tolist(),
            "torch rng": torch.get_rng_state().tolist(), "threads": torch.get_num_threads(),
            "deterministic": (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled()),
            "matmul precision": torch.get_float32_matmul_precision(),
            "default dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled(),
            "anomaly": torch.is_anomaly_enabled(), "filters": list(__import__("warnings").filters)}


@pytest.fixture
def users_switches():
    import warnings
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.get_float32_matmul_precision())
    with warnings.catch_warnings():
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_float32_matmul_precision("medium")
        warnings.filterwarnings("error", message="a filter of the user's")
        yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    torch.set_float32_matmul_precision(saved[3])


_ENTRY_POINTS = {
    "sparse jacobian": lambda x: vjp_magic.differentiate(x.roll(1) * x, x, seed=0).jacobian(
        "x", layout=torch.sparse_csr),
    "dependency": lambda x: vjp_magic.dependency(x.cumsum(0), x, seed=0),
    "sparse hessian": lambda x: vjp_magic.hessian((x.roll(1) * x).pow(2).sum(), x,
                                                  seed=0).hessian("x", layout=torch.sparse_csr),
}


@pytest.mark.parametrize("entry", list(_ENTRY_POINTS))
def test_the_users_switches_and_random_states_are_left_alone(users_switches, entry):
    x = torch.randn(200, generator=_generator(1)).requires_grad_()
    before = _switches()
    _ENTRY_POINTS[entry](x)
    assert _switches() == before and x.grad is None
