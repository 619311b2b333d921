"""Review, session 40 (R2), of issue 23 as a practitioner meets it: per-sample gradients
(``differentiate(losses, model)``, ``differentiate(fn, model)``, ``%%vjp --wrt net``) through
models that couple samples subtly, losses spelled by indexing, loss vectors not aligned with
the batch, norm reparametrisations; ``--gradcheck`` on wrong and right custom backwards of new
kinds; the ``--wrt net`` display of a 50-tensor model; the user's state after the cell (flags,
hooks, RNG, Ctrl-C in a per-sample pass, a custom Function run by the analysis).

Expected values come from a float64 loop of ``torch.autograd.grad`` over each loss of the
batch's own graph, from ``torch.func.jacrev`` or from mathematics; never from the code under
test. Strict xfails are findings (``R2-n`` in their reasons); unmarked tests held and guard it.
"""
from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jacrev

import vjp_magic

B = 16
_POSITIONS = sys.version_info >= (3, 11)  # expressions as written need positions


def _loop(losses, model) -> dict:
    """name → (B, *shape): torch.autograd.grad of each loss in the batch's own graph."""
    params = {k: v for k, v in model.named_parameters() if v.requires_grad}
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True,
                                allow_unused=True) for b in range(len(losses))]
    return {k: torch.stack([torch.zeros_like(params[k]) if r[i] is None else r[i]
                            for r in rows]) for i, k in enumerate(params)}


def _assert_same(r, expected, **tol):
    assert set(r.derivatives) == set(expected), (set(r.derivatives), set(expected))
    for k, v in expected.items():
        assert r.derivatives[k].shape == v.shape, (k, r.derivatives[k].shape, v.shape)
        torch.testing.assert_close(r.derivatives[k], v, msg=k, **tol)


class _Net(nn.Module):
    """Modules a, l (and what ``extra`` adds) around ``f(self, x)``."""

    def __init__(self, f, **extra):
        super().__init__()
        self.f, self.a, self.l = f, nn.Linear(4, 4), nn.Linear(4, 3)
        for k, v in extra.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.f(self, x)


def _shifted_in_place(h):
    h = h.clone()
    h[1:] += 0.5 * h[:-1]  # an in-place op on a view across samples
    return h


# Each reads other samples of the batch in a way a per-sample rule could miss.
COUPLINGS = {
    "h - h.mean(0).detach()": lambda s, x: s.l(s.a(x) - s.a(x).mean(0).detach()),
    "h - h.mean(0)": lambda s, x: s.l(s.a(x) - s.a(x).mean(0)),
    "sort over the batch": lambda s, x: s.l(torch.sort(s.a(x), dim=0).values),
    "mask from a comparison with the batch mean":
        lambda s, x: s.l(s.a(x) * (s.a(x) > s.a(x).mean(0)).float()),
    "layer_norm over the batch axis": lambda s, x: s.l(F.layer_norm(s.a(x).T, (x.shape[0],)).T),
    "instance_norm over the batch axis":
        lambda s, x: s.l(F.instance_norm(s.a(x).T.unsqueeze(0)).squeeze(0).T),
    "einsum mixing b": lambda s, x: s.l(torch.einsum("bi,ci->bi", s.a(x), s.a(x))),
    "in-place on a view across samples": lambda s, x: s.l(_shifted_in_place(s.a(x))),
    "a conv along the batch axis":
        lambda s, x: s.l(s.c(x.T.unsqueeze(0)).squeeze(0).T),
    "a shared submodule called twice": lambda s, x: s.l(torch.tanh(s.a(torch.tanh(s.a(x))))),
    "a tied transposed weight": lambda s, x: F.linear(torch.tanh(s.a(x)), s.a.weight.T)[:, :3],
    "a Linear reused on a flipped batch": lambda s, x: s.l(s.a(x) + s.a(x.flip(0))),
}


def _coupled(name):
    extra = {"c": nn.Conv1d(4, 4, 3, padding=1)} if "conv" in name else {}
    return _Net(COUPLINGS[name], **extra)


@pytest.mark.parametrize("given", ["losses", "function"])
@pytest.mark.parametrize("name", list(COUPLINGS))
def test_per_sample_through_a_coupling_equals_the_batch_graph_loop(name, given):
    torch.manual_seed(1)
    model = _coupled(name).double()
    x, t = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))

    def fn():
        return F.cross_entropy(model(x), t, reduction="none")
    expected = _loop(fn(), model)
    r = vjp_magic.differentiate(fn if given == "function" else fn(), model)
    _assert_same(r, expected, atol=1e-9, rtol=1e-7)


class _GRUh0(nn.Module):
    """A GRU whose learned h0 is shared by every sample (expanded over the batch)."""

    def __init__(self):
        super().__init__()
        self.r, self.l = nn.GRU(3, 4, batch_first=True), nn.Linear(4, 3)
        self.h0 = nn.Parameter(torch.randn(1, 1, 4))

    def forward(self, x):
        h0 = self.h0.expand(1, x.shape[0], 4).contiguous()
        return self.l(self.r(x, h0)[0][:, -1])


def test_per_sample_of_a_gru_with_a_shared_learned_h0():
    torch.manual_seed(1)
    model = _GRUh0().double()
    x, t = torch.randn(6, 5, 3, dtype=torch.float64), torch.randint(0, 3, (6,))
    expected = _loop(F.cross_entropy(model(x), t, reduction="none"), model)
    r = vjp_magic.differentiate(F.cross_entropy(model(x), t, reduction="none"), model)
    _assert_same(r, expected, atol=1e-9, rtol=1e-7)
    assert expected["h0"].abs().sum() > 0  # premise: every sample reads h0


# --------------------------------------------------------------------------------------------
# Losses spelled by indexing, gather, nll_loss, label smoothing, ignore_index, class weights
# --------------------------------------------------------------------------------------------

def _ignored(t):
    return torch.where(torch.arange(len(t)) % 2 == 0, torch.full_like(t, -100), t)


LOSSES = {
    "logp[arange(B), t]": lambda o, t: -F.log_softmax(o, 1)[torch.arange(len(t)), t],
    "logp[range(B), t]": lambda o, t: -F.log_softmax(o, 1)[range(len(t)), t],
    "logp.gather": lambda o, t: -F.log_softmax(o, 1).gather(1, t[:, None]).squeeze(1),
    "nll_loss": lambda o, t: F.nll_loss(F.log_softmax(o, 1), t, reduction="none"),
    "label smoothing": lambda o, t: F.cross_entropy(o, t, reduction="none", label_smoothing=0.1),
    "ignore_index": lambda o, t: F.cross_entropy(o, _ignored(t), reduction="none"),
    "ignore_index, mean": lambda o, t: F.cross_entropy(o, _ignored(t)),
    "class weights, mean": lambda o, t: F.cross_entropy(
        o, t, weight=torch.tensor([1., 2., 3.], dtype=o.dtype)),
    "nll class weights, sum": lambda o, t: F.nll_loss(
        F.log_softmax(o, 1), t, weight=torch.tensor([1., 2., 3.], dtype=o.dtype), reduction="sum"),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_losses_spelled_by_indexing_give_the_loop_of_backward_calls(loss, dtype):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    x, t = torch.randn(B, 4, dtype=dtype), torch.randint(0, 3, (B,))
    f = LOSSES[loss]
    value = f(model(x), t)
    if value.dim() == 0:
        names = [k for k, _ in model.named_parameters()]
        expected = dict(zip(names, torch.autograd.grad(value, list(model.parameters()))))
    else:
        expected = _loop(value, model)
    tol = dict(atol=1e-9, rtol=1e-7) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-4)
    _assert_same(vjp_magic.differentiate(f(model(x), t), model), expected, **tol)
    _assert_same(vjp_magic.differentiate(lambda: f(model(x), t), model), expected, **tol)


def test_ignored_samples_have_zero_gradients():
    """Mathematics: a sample whose target is ignore_index has loss 0 whatever the weights."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, t = torch.randn(B, 4), torch.randint(0, 3, (B,))
    r = vjp_magic.differentiate(F.cross_entropy(model(x), _ignored(t), reduction="none"), model)
    for k, v in r.derivatives.items():
        assert torch.equal(v[0::2], torch.zeros_like(v[0::2])), k


# --------------------------------------------------------------------------------------------
# Loss vectors not aligned with the batch (per-layer rules pair loss i with sample i)
# --------------------------------------------------------------------------------------------

_G = torch.Generator().manual_seed(0)
_X, _T = torch.randn(B, 4, generator=_G), torch.randint(0, 3, (B,), generator=_G)
_PERM, _XS = torch.randperm(B, generator=_G), torch.randn(5, B, 4, generator=_G)


def _ce(out, t):
    return F.cross_entropy(out, t, reduction="none")


MISALIGNED = {
    "permuted": lambda f: _ce(f(_X), _T)[_PERM],
    "flipped": lambda f: _ce(f(_X), _T).flip(0),
    "every other sample": lambda f: _ce(f(_X), _T)[::2],
    "a batch of the samples twice": lambda f: _ce(f(torch.cat([_X, _X])), torch.cat([_T, _T])),
    "two copies summed": lambda f: _ce(f(torch.cat([_X, _X[_PERM]])),
                                       torch.cat([_T, _T[_PERM]])).view(2, B).sum(0),
    "centred losses": lambda f: (lambda v: v - v.mean())(_ce(f(_X), _T)),
    "inputs rolled": lambda f: _ce(f(_X.roll(1, 0)), _T),
    "(T, B) sequence, (B, T) losses": lambda f: F.cross_entropy(
        f(_XS).permute(1, 2, 0), _T[:, None].expand(B, 5), reduction="none"),
    "(T, B) sequence, (T, B) losses": lambda f: F.cross_entropy(
        f(_XS).permute(1, 2, 0), _T[:, None].expand(B, 5), reduction="none").T,
    "a column of losses": lambda f: _ce(f(_X), _T)[:, None],
    "the model on the batch and its flip": lambda f: _ce(f(_X) + f(_X.flip(0)), _T),
}


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("case", list(MISALIGNED))
def test_losses_not_aligned_with_the_batch_equal_jacrev(case, norm):
    torch.manual_seed(1)
    layers = [nn.Linear(4, 8)] + ([nn.LayerNorm(8)] if norm else [nn.Tanh()]) + [nn.Linear(8, 3)]
    model = nn.Sequential(*layers)
    fn = MISALIGNED[case]
    params = {k: v.detach() for k, v in model.named_parameters()}
    expected = jacrev(lambda p: fn(lambda x: functional_call(model, p, (x,))))(params)
    tol = dict(atol=2e-5, rtol=1e-4)
    _assert_same(vjp_magic.differentiate(fn(model), model), expected, **tol)
    _assert_same(vjp_magic.differentiate(lambda: fn(model), model), expected, **tol)


# --------------------------------------------------------------------------------------------
# Norm reparametrisations and tied layers: values, and the state a plain call leaves
# --------------------------------------------------------------------------------------------

def _tied_linear():
    a = nn.Linear(4, 4)
    return nn.Sequential(a, nn.Tanh(), a, nn.Tanh(), nn.Linear(4, 3))


def _tied_conv():
    c = nn.Conv1d(2, 2, 3, padding=1)
    return nn.Sequential(c, nn.Tanh(), c, nn.Flatten(), nn.Linear(16, 3))


REPARAMETRISED = {
    "nn.utils.weight_norm (a forward pre-hook)": lambda: nn.Sequential(
        nn.utils.weight_norm(nn.Linear(4, 8)), nn.Tanh(), nn.Linear(8, 3)),
    "parametrizations.weight_norm": lambda: nn.Sequential(
        nn.utils.parametrizations.weight_norm(nn.Linear(4, 8)), nn.Tanh(), nn.Linear(8, 3)),
    "nn.utils.spectral_norm (power iteration in place)": lambda: nn.Sequential(
        nn.utils.spectral_norm(nn.Linear(4, 8)), nn.Tanh(), nn.Linear(8, 3)),
    "parametrizations.spectral_norm": lambda: nn.Sequential(
        nn.utils.parametrizations.spectral_norm(nn.Linear(4, 8)), nn.Tanh(), nn.Linear(8, 3)),
    "parametrizations.orthogonal": lambda: nn.Sequential(
        nn.utils.parametrizations.orthogonal(nn.Linear(4, 4)), nn.Tanh(), nn.Linear(4, 3)),
    "one Linear applied twice": _tied_linear,
    "one Conv1d applied twice": _tied_conv,
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("given", ["losses", "function"])
@pytest.mark.parametrize("name", list(REPARAMETRISED))
def test_reparametrised_per_sample_values_and_buffers(name, given):
    """Values equal the batch graph's loop; buffers (spectral_norm's u, v) are as after one
    plain call of the model (the cell's own)."""
    torch.manual_seed(1)
    model = REPARAMETRISED[name]()
    x = torch.randn(B, 2, 8) if "Conv1d" in name else torch.randn(B, 4)
    t = torch.randint(0, 3, (B,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _loop(F.cross_entropy(model(x), t, reduction="none"), model)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(before)

    def fn():
        return F.cross_entropy(model(x), t, reduction="none")
    r = vjp_magic.differentiate(fn if given == "function" else fn(), model)
    _assert_same(r, expected, atol=2e-5, rtol=1e-4)
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, plain[k])] == []


# --------------------------------------------------------------------------------------------
# --gradcheck: wrong backwards of new kinds fail, right ones returning views pass
# --------------------------------------------------------------------------------------------

FUNCTIONS = '''
class Swapped(torch.autograd.Function):      # wrong: the two inputs' gradients swapped
    @staticmethod
    def forward(ctx, x, w): ctx.save_for_backward(x, w); return x * w.exp()
    @staticmethod
    def backward(ctx, g): x, w = ctx.saved_tensors; return g*x*w.exp(), g*w.exp()
class NanAt0(torch.autograd.Function):       # wrong at x = 0 only (0/0)
    @staticmethod
    def forward(ctx, x): ctx.save_for_backward(x); return x**2
    @staticmethod
    def backward(ctx, g): x, = ctx.saved_tensors; return g*2*x*x/x
class SecondWrong(torch.autograd.Function):  # wrong for the second input only
    @staticmethod
    def forward(ctx, x, w): ctx.save_for_backward(x, w); return x * w
    @staticmethod
    def backward(ctx, g): x, w = ctx.saved_tensors; return g*w, 1.1*(g*x).sum(0)
class SignOnly(torch.autograd.Function):     # wrong: keeps only the sign of grad_output
    @staticmethod
    def forward(ctx, x): ctx.save_for_backward(x); return x**2
    @staticmethod
    def backward(ctx, g): x, = ctx.saved_tensors; return 2*x*g.sign()
class ClampedG(torch.autograd.Function):     # wrong where |grad_output| > 1 only
    @staticmethod
    def forward(ctx, x): ctx.save_for_backward(x); return x**2
    @staticmethod
    def backward(ctx, g): x, = ctx.saved_tensors; return 2*x*g.clamp(-1, 1)
class RawStrides(torch.autograd.Function):   # wrong where grad_output is not contiguous
    @staticmethod
    def forward(ctx, x): return 3*x
    @staticmethod
    def backward(ctx, g): return 3*torch.as_strided(g, g.shape, (g.shape[1], 1))
class Transposed(torch.autograd.Function):   # right: returns a non-contiguous view
    @staticmethod
    def forward(ctx, x): return (2*x).t().contiguous()
    @staticmethod
    def backward(ctx, g): return 2*g.t()
class Summed(torch.autograd.Function):       # right: returns an expanded (stride 0) view
    @staticmethod
    def forward(ctx, x): ctx.shape = x.shape; return x.sum()
    @staticmethod
    def backward(ctx, g): return g.expand(ctx.shape)
class Identity(torch.autograd.Function):     # right: returns grad_output itself
    @staticmethod
    def forward(ctx, x): return x.clone()
    @staticmethod
    def backward(ctx, g): return g
'''
_XW = ("x = torch.linspace(1., 2., 4, requires_grad=True)\n"
       "w = torch.linspace(.5, 1., 4, requires_grad=True)\n")
_X34 = "x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)\n"
_W4 = "w = torch.randn(4, generator=torch.Generator().manual_seed(1), requires_grad=True)\n"
_X5 = "x = torch.linspace(1., 2., 5, requires_grad=True)\n"


@pytest.mark.parametrize("body", [
    _XW + "y = Swapped.apply(x, w)",
    _XW + "y = Swapped.apply(x, w).sum()",
    "x = torch.linspace(-1., 1., 5, requires_grad=True)\ny = NanAt0.apply(x)",
    "x = torch.linspace(-1., 1., 5, requires_grad=True)\ny = NanAt0.apply(x).sum()",
    _X34 + _W4 + "y = SecondWrong.apply(x, w)",
    _X34 + _W4 + "y = SecondWrong.apply(x, w).sum()",
    _X5 + "y = SignOnly.apply(x)",
    _X5 + "y = SignOnly.apply(x).sum()",
    _X5 + "y = ClampedG.apply(x)",
    _X5 + "y = ClampedG.apply(x).sum()",
    _X34 + "y = RawStrides.apply(x).t().sin()",
])
def test_gradcheck_fails_a_wrong_backward_of_a_new_kind(run_ok, body):
    run_ok(FUNCTIONS)
    check = run_ok("%%vjp --gradcheck\n" + body).gradcheck
    assert check.ok is False and check.custom


@pytest.mark.parametrize("body", [
    _X34 + "y = Transposed.apply(x)",
    _X34 + "y = (Transposed.apply(x) ** 2).sum()",
    _X34 + "y = Summed.apply(x)",
    _X34 + "y = Summed.apply(x) ** 2",
    _X34 + "y = Identity.apply(x).sin()",
])
def test_gradcheck_passes_a_right_backward_returning_a_view(run_ok, body):
    run_ok(FUNCTIONS)
    assert run_ok("%%vjp --gradcheck\n" + body).gradcheck.ok is True


@pytest.mark.parametrize("name", ["Swapped", "SecondWrong"])
def test_torch_gradcheck_agrees_that_the_two_input_backwards_are_wrong(ip, run_ok, name):
    """The premise of two cases above, by torch.autograd.gradcheck in float64."""
    run_ok(FUNCTIONS)
    x = torch.linspace(1., 2., 4, dtype=torch.float64, requires_grad=True)
    w = torch.linspace(.5, 1., 4, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(ip.user_ns[name].apply, (x[None].repeat(3, 1), w),
                                        raise_exception=False)


# --------------------------------------------------------------------------------------------
# The user's state after --wrt net: flags, hooks (counts and firings), RNGs, buffers
# --------------------------------------------------------------------------------------------

HOOKED = '''import torch.nn as nn, torch.nn.functional as F, random, numpy as np
COUNTS = {"fwd": [], "pre": [], "tensor": [], "back": [], "param": []}
class Net(nn.Module):
    def __init__(s):
        super().__init__(); s.a = nn.Linear(4, 8); s.n = nn.LayerNorm(8); s.l = nn.Linear(8, 3)
    def forward(s, x):
        h = s.n(s.a(x))
        if h.requires_grad: h.register_hook(lambda g: COUNTS["tensor"].append(1))
        return s.l(torch.tanh(h))
torch.manual_seed(0); np.random.seed(0); random.seed(0)
net = Net()
net.a.register_forward_hook(lambda m, i, o: COUNTS["fwd"].append(1))
net.l.register_forward_pre_hook(lambda m, i: COUNTS["pre"].append(1))
net.n.register_full_backward_hook(lambda m, gi, go: COUNTS["back"].append(1))
net.l.weight.register_hook(lambda g: COUNTS["param"].append(1))
X = torch.randn(16, 4); t = torch.randint(0, 3, (16,))
'''
_FLAGS_ON = ("torch.set_default_dtype(torch.float64)\ntorch.use_deterministic_algorithms(True)\n"
             "torch.set_float32_matmul_precision('medium')\n")
_FLAGS_OFF = ("torch.set_default_dtype(torch.float32)\ntorch.use_deterministic_algorithms(False)\n"
              "torch.set_float32_matmul_precision('highest')\n")


def _state(ns) -> dict:
    net = ns["net"]
    return {
        "flags": (torch.are_deterministic_algorithms_enabled(), torch.get_default_dtype(),
                  torch.get_float32_matmul_precision(), torch.is_anomaly_enabled(),
                  torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                  torch._C._is_fwd_grad_enabled(), torch.backends.mkldnn.enabled),
        "rngs": (torch.get_rng_state().tolist(), np.random.get_state()[1].tolist(),
                 random.getstate()),
        "counts": {k: len(v) for k, v in ns["COUNTS"].items()},
        "modules": [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks),
                     len(m._backward_hooks)) for m in net.modules()],
        "params": [(n, p.requires_grad, p.grad is None, p._version, p.detach().tolist())
                   for n, p in net.named_parameters()],
    }


@pytest.mark.parametrize("flags", [False, True])
@pytest.mark.parametrize("line", ["--wrt net", "--wrt net --gradcheck"])
@pytest.mark.parametrize("cell", [
    "losses = F.cross_entropy(net(X), t, reduction='none')\n",
    "loss = F.cross_entropy(net(X), t)\n",
    "losses = F.cross_entropy(net(X), t, reduction='none') * float(np.random.rand())"
    " * random.random()\n",
])
def test_wrt_net_leaves_the_state_of_a_plain_run(ip, run_ok, cell, line, flags):
    """Forward hooks, forward pre-hooks, a tensor hook registered inside forward, a module
    backward hook and a parameter hook fire as often as in a plain run (the cell's forward
    only); the three RNGs, default dtype, deterministic algorithms, matmul precision and grad
    modes are as the plain cell leaves them."""
    try:
        run_ok(HOOKED + (_FLAGS_ON if flags else ""))
        run_ok(cell)
        plain = _state(ip.user_ns)
        run_ok(_FLAGS_OFF + HOOKED + (_FLAGS_ON if flags else ""))
        run_ok(f"%%vjp {line}\n{cell}")
        after = _state(ip.user_ns)
    finally:
        run_ok(_FLAGS_OFF)
    assert [k for k in plain if plain[k] != after[k]] == []


class _Interrupting:
    """Autograd's engine, raising KeyboardInterrupt at its ``at``-th pass (a Ctrl-C then)."""

    def __init__(self, engine, at: int):
        self.engine, self.at, self.calls = engine, at, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run_backward(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.engine.run_backward(*args, **kwargs)


_TRAINING = '''import torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 6), NORM, nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)).train()
X = torch.randn(8, 4); t = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
COUNTS = {}
torch.manual_seed(5)
'''


def _snapshot(ns) -> dict:
    net = ns["net"]
    return {"rng": torch.get_rng_state().tolist(), "grad": torch.is_grad_enabled(),
            "params": [(n, p.detach().tolist(), p.requires_grad, p.grad is None, p._version)
                       for n, p in net.named_parameters()],
            "buffers": [(n, b.tolist()) for n, b in net.named_buffers()],
            "modules": [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks),
                         len(m._backward_hooks)) for m in net.modules()],
            "losses": ns["losses"].detach().tolist()}


@pytest.mark.parametrize("norm", ["nn.BatchNorm1d(6)", "nn.LayerNorm(6)"])
def test_a_ctrl_c_in_any_per_sample_pass_leaves_the_state_of_a_plain_run(ip, run_ok, norm):
    """BatchNorm in training mode with dropout (coupled samples, the loop), LayerNorm (the
    per-layer rules): a KeyboardInterrupt at each backward pass the analysis makes reaches the
    user, and parameters, BatchNorm's running statistics and num_batches_tracked, training
    flags, module hooks, the RNG and grad mode are as after the plain cell."""
    setup = _TRAINING.replace("NORM", norm)
    cell = "losses = F.cross_entropy(net(X), t, reduction='none')\n"
    run_ok(setup)
    run_ok(cell)
    plain = _snapshot(ip.user_ns)
    engine = torch.autograd.Variable._execution_engine
    for at in range(1, 40):
        run_ok(setup)
        interrupting = torch.autograd.Variable._execution_engine = _Interrupting(engine, at)
        try:
            result = ip.run_cell(f"%%vjp --wrt net\n{cell}")
        finally:
            torch.autograd.Variable._execution_engine = engine
        if interrupting.calls < at:  # every pass was interrupted once: the analysis ends
            assert result.success and at > 1
            break
        assert isinstance(result.error_in_exec, KeyboardInterrupt), (at, result.error_in_exec)
        assert _snapshot(ip.user_ns) == plain, at


# --------------------------------------------------------------------------------------------
# --wrt net on a 50-tensor model with long names: one screen, every tensor reachable, right
# --------------------------------------------------------------------------------------------

FIFTY = '''import torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.attention_projection_layer = nn.Linear(6, 6)
        s.normalisation_after_projection = nn.LayerNorm(6)
    def forward(s, x):
        return torch.tanh(s.normalisation_after_projection(s.attention_projection_layer(x)))
net = nn.ModuleDict({"encoder_blocks": nn.Sequential(*[Block() for _ in range(12)]),
                     "classification_head": nn.Linear(6, 3)})
def fwd(x): return net["classification_head"](net["encoder_blocks"](x))
X = torch.randn(10, 6); t = torch.randint(0, 3, (10,))
'''


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_fifty_tensors_with_long_names_fit_one_screen_and_are_all_right(ip, run_ok, reduction):
    run_ok(FIFTY)
    r = run_ok(f"%%vjp --wrt net\nloss = F.cross_entropy(fwd(X), t, reduction='{reduction}')")
    net, X, t = ip.user_ns["net"], ip.user_ns["X"], ip.user_ns["t"]
    params = {k: v.detach() for k, v in net.named_parameters()}
    assert len(params) == 50
    expected = jacrev(lambda p: F.cross_entropy(
        _fifty_forward(net, p, X), t, reduction=reduction))(params)
    _assert_same(r, {f"net.{k}": v for k, v in expected.items()}, atol=2e-5, rtol=1e-4)
    bundle = r._repr_mimebundle_()
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    text = bundle["text/plain"]
    assert text.count("\n") < 40 and max(map(len, text.splitlines())) <= 100
    assert all(len(v) < 20_000 for v in bundle.values())
    assert all(p.grad is None for p in net.parameters())


def _fifty_forward(net, params, x):
    """``fwd(x)`` with ``params`` in place of the ModuleDict's own."""
    head = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("classification")}
    body = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("encoder")}
    h = functional_call(net["encoder_blocks"], body, (x,))
    return functional_call(net["classification_head"], head, (h,))


# --------------------------------------------------------------------------------------------
# A custom Function run by the analysis: what the display claims, what the user's state is
# --------------------------------------------------------------------------------------------

LOGGED = '''
LOG = []
class Logged(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): LOG.append("forward"); ctx.save_for_backward(x); return x**2
    @staticmethod
    def backward(ctx, g): x, = ctx.saved_tensors; return 2*g*x
class Mut(torch.autograd.Function):           # its backward writes its saved input in place
    @staticmethod
    def forward(ctx, x): ctx.save_for_backward(x); return x**2
    @staticmethod
    def backward(ctx, g): x, = ctx.saved_tensors; d = 2*g*x.clone(); x.add_(1); return d
'''


# R2-1 (fixed): under --gradcheck the display said the custom Function's forward "is the cell's
# own code and runs only once" while the float64 replays ran it 15 (y.sum()) and 30 (y) more
# times: the sentence now says how many, and what it means for a list the forward appends to.
@pytest.mark.parametrize("line", ["", "--gradcheck"])
@pytest.mark.parametrize("tail", ["", ".sum()"])
def test_runs_only_once_is_said_only_when_the_forward_ran_once(ip, run_ok, line, tail):
    body = "x = torch.linspace(1., 2., 5, requires_grad=True)\ny = Logged.apply(x)" + tail
    run_ok(LOGGED)
    r = run_ok(f"%%vjp {line}\n{body}")
    torch.testing.assert_close(r.derivatives["x"], 2 * torch.linspace(1., 2., 5))
    runs = ip.user_ns["LOG"].count("forward")
    said = "runs only once" in " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert runs == 1 or not said, (runs, said)


_MUT = "x = torch.linspace(1., 2., 5, requires_grad=True)\ny = Mut.apply(x)\n"


@pytest.mark.parametrize("line", ["", "--gradcheck"])
def test_a_backward_writing_its_saved_input_leaves_x_as_a_plain_run(ip, run_ok, line):
    run_ok(LOGGED)
    run_ok(_MUT)
    plain = ip.user_ns["x"].detach().clone()
    run_ok(LOGGED)
    ip.run_cell(f"%%vjp {line}\n{_MUT}")
    assert torch.equal(ip.user_ns["x"].detach(), plain)


def test_the_message_names_the_backward_that_wrote_in_place(ip, run_ok):
    run_ok(LOGGED)
    result = ip.run_cell(f"%%vjp\n{_MUT}")
    message = str(result.error_in_exec)
    assert "Mut" in message and "afterwards" not in message, message


class _CentredInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.l = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        return self.l(h - h.mean(0).detach())


# R2-4 (fixed, s40 T3): a .detach() inside a module's forward (h - h.mean(0).detach()) was
# reported as 'net(Xg) on line 1 makes net(Xg) a constant', while the derivative shown is
# nonzero; the cut is now named where it was made, inside the call (run/cuts.py, record's site)
@pytest.mark.parametrize("wrt", ["Xg", "net"])
def test_a_detach_inside_a_module_is_not_said_to_make_the_call_a_constant(ip, run_ok, wrt):
    torch.manual_seed(0)
    ip.user_ns.update(net=_CentredInside(), F=F, t=torch.tensor([0, 1, 2, 0, 1, 2]),
                      Xg=torch.randn(6, 4).requires_grad_(wrt == "Xg"))
    cell = ("out = net(Xg)" if wrt == "Xg"
            else "out = F.cross_entropy(net(Xg), t, reduction='none')")
    r = run_ok(f"%%vjp --wrt {wrt}\n{cell}")
    shown = r.derivatives["Xg" if wrt == "Xg" else "net.a.weight"]
    assert shown.abs().sum() > 0  # the call does change with the input in the graph
    assert r.cuts  # the cut is named ...
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "makes net(Xg) a constant" not in text, text  # ... but not as the whole call
    assert "_CentredInside.forward" in text and "called by net(Xg) on line 1" in text, text
    if _POSITIONS:
        assert "h.mean(0).detach()" in text and "makes h.mean(0) a constant" in text, text


_CUTS = {
    "x - x.mean(0).detach()": lambda x: x - x.mean(0).detach(),
    "x * x.sum().item()": lambda x: x * x.sum().item(),
    "net with h - h.mean(0).detach() inside": None,  # _CentredInside, below
}


def _cut_output(spelling, x):
    if _CUTS[spelling] is not None:
        return _CUTS[spelling](x)
    torch.manual_seed(0)
    return _CentredInside()(x)


# R2-5 (fixed, s40 T3): where y[0] reads x[1] through a cut, r.dependency said independent,
# proved, no note. It now names the cut (from the cell's record) and is no longer "proved".
# vjp_magic.dependency has no record: its documentation (and Evidence's) says what "proved"
# covers, the graph, and that a value read through a cut is outside it.
@pytest.mark.parametrize("spelling", list(_CUTS))
def test_an_independent_verdict_says_when_samples_meet_through_a_cut(ip, run_ok, spelling):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = _cut_output(spelling, x)
    moved = x.detach().clone()
    moved[1] += 1
    assert not torch.allclose(_cut_output(spelling, moved)[0], y[0])  # premise: y[0] reads x[1]
    ip.user_ns.update(x=x, f=lambda t: _cut_output(spelling, t))
    d = run_ok("%%vjp --wrt x\ny = f(x)").dependency("x")
    assert d.kind != "independent" or d.note is not None, (d.kind, d.evidence, d.note)
    assert d.evidence != "proved" and "cut" in d.note and "line 1" in d.note, d
    assert "derivatives only" in d.note, d.note


def test_the_functional_verdict_says_what_proved_covers():
    """dependency(y, x) has no record of the cell: what "proved" covers (the graph, not a
    value read through .detach() or .item()) is said in its documentation and Evidence's."""
    from vjp_magic.core.pairing import Evidence
    for doc in (vjp_magic.dependency.__doc__, vjp_magic.Dependency.__doc__, Evidence.__doc__):
        said = " ".join(doc.split())
        assert "graph" in said and "detach()" in said and ".item()" in said, said


# --------------------------------------------------------------------------------------------
# Autograd hooks the cell registers, retain_grad, saved-tensor hooks: as a plain run leaves them
# --------------------------------------------------------------------------------------------

GRAPH_HOOKS = '''import torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 8), NORM, nn.Tanh(), nn.Linear(8, 3))
X = torch.randn(16, 4); t = torch.randint(0, 3, (16,))
C = {"pack": 0, "unpack": 0, "node": 0, "pre": 0, "multi": 0}
def pack(t): C["pack"] += 1; return t
def unpack(t): C["unpack"] += 1; return t
def bump(key): C[key] += 1
'''
GRAPH_CELLS = {
    "saved-tensor hooks around the forward":
        "with torch.autograd.graph.saved_tensors_hooks(pack, unpack):\n"
        "    losses = F.cross_entropy(net(X), t, reduction='none')\n",
    "hooks on the output's nodes":
        "losses = F.cross_entropy(net(X), t, reduction='none')\n"
        "losses.grad_fn.register_hook(lambda gi, go: bump('node'))\n"
        "losses.grad_fn.next_functions[0][0].register_prehook(lambda go: bump('pre'))\n",
    "a hook on an inner node": "h = net[0](X)\n"
                               "h.grad_fn.register_hook(lambda gi, go: bump('node'))\n"
                               "losses = F.cross_entropy(net[1:](h), t, reduction='none')\n",
    "retain_grad": "h = net[0](X)\nh.retain_grad()\n"
                   "losses = F.cross_entropy(net[1:](h), t, reduction='none')\n",
    "a multi-grad hook": "h = net[0](X)\ng = net[1](h)\n"
                         "torch.autograd.graph.register_multi_grad_hook((h, g), "
                         "lambda gs: bump('multi'))\n"
                         "losses = F.cross_entropy(net[2:](g), t, reduction='none')\n",
}


def _graph_state(ns):
    h = ns.get("h")
    kept = h is not None and h.retains_grad and h.grad is not None
    return (dict(ns["C"]), h.grad.tolist() if kept else None,
            [p.grad is None for p in ns["net"].parameters()],
            [b.tolist() for b in ns["net"].buffers()])


@pytest.mark.parametrize("line", ["--wrt net", "--wrt net --gradcheck"])
@pytest.mark.parametrize("norm", ["nn.LayerNorm(8)", "nn.BatchNorm1d(8)"])
@pytest.mark.parametrize("cell", list(GRAPH_CELLS))
def test_graph_hooks_of_the_cell_fire_as_in_a_plain_run(ip, run_ok, cell, norm, line):
    setup = GRAPH_HOOKS.replace("NORM", norm)
    run_ok(setup)
    run_ok(GRAPH_CELLS[cell])
    plain = _graph_state(ip.user_ns)
    run_ok(setup)
    run_ok(f"%%vjp {line}\n{GRAPH_CELLS[cell]}")
    assert _graph_state(ip.user_ns) == plain


# --------------------------------------------------------------------------------------------
# --wrt net --gradcheck: standard modules pass, a custom Linear's wrong backward fails
# --------------------------------------------------------------------------------------------

class _GRUHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.r, self.l = nn.GRU(3, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x):
        return self.l(self.r(x)[0][:, -1])


STANDARD = {
    "ReLU MLP": (lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)), (16, 4)),
    "BatchNorm train + dropout": (lambda: nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)),
        (16, 4)),
    "max-pooling CNN": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.MaxPool1d(2), nn.Flatten(),
                                              nn.Linear(12, 3)), (16, 2, 8)),
    "GRU": (_GRUHead, (16, 5, 3)),
    "LayerNorm GELU": (lambda: nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(),
                                             nn.Linear(8, 3)), (16, 4)),
}


@pytest.mark.parametrize("cell", ["losses = F.cross_entropy(net(X), t, reduction='none')",
                                  "loss = F.cross_entropy(net(X), t)"])
@pytest.mark.parametrize("name", list(STANDARD))
def test_gradcheck_of_standard_modules_raises_no_false_alarm(ip, run_ok, name, cell):
    torch.manual_seed(0)
    make, shape = STANDARD[name]
    ip.user_ns.update(net=make().train(), X=torch.randn(*shape), F=F,
                      t=torch.randint(0, 3, (16,)))
    check = run_ok(f"%%vjp --wrt net --gradcheck\n{cell}").gradcheck
    assert check.ok is True, check.max_error


CUSTOM_LINEAR = '''import torch.nn as nn, torch.nn.functional as F
class LinFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b): ctx.save_for_backward(x, w); return x @ w.T + b
    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx, gw, gb = g @ w, g.T @ x, g.sum(0)
        if BUG == "grad_weight / B": gw = gw / x.shape[0]
        if BUG == "grad_bias a mean": gb = g.mean(0)
        if BUG == "grad_input 5% off": gx = 1.05 * gx
        return gx, gw, gb
class MyLinear(nn.Module):
    def __init__(s, i, o):
        super().__init__(); l = nn.Linear(i, o); s.weight, s.bias = l.weight, l.bias
    def forward(s, x): return LinFn.apply(x, s.weight, s.bias)
torch.manual_seed(0)
net = nn.Sequential(MyLinear(4, 8), nn.Tanh(), MyLinear(8, 3))
X = torch.randn(16, 4); t = torch.randint(0, 3, (16,))
'''


@pytest.mark.parametrize("cell", ["losses = F.cross_entropy(net(X), t, reduction='none')",
                                  "loss = F.cross_entropy(net(X), t)"])
@pytest.mark.parametrize("bug", ["none", "grad_weight / B", "grad_bias a mean",
                                 "grad_input 5% off"])
def test_gradcheck_judges_a_custom_linear_inside_a_model(ip, run_ok, bug, cell):
    """The per-sample values are what the user's backward gives in the batch graph (a loop
    of torch.autograd.grad), and --gradcheck fails it exactly when it is wrong."""
    ip.user_ns["BUG"] = bug
    run_ok(CUSTOM_LINEAR)
    r = run_ok(f"%%vjp --wrt net --gradcheck\n{cell}")
    assert r.gradcheck.ok is (bug == "none") and r.gradcheck.custom
    if cell.startswith("losses"):
        net, X, t = (ip.user_ns[k] for k in ("net", "X", "t"))
        expected = _loop(F.cross_entropy(net(X), t, reduction="none"), net)
        _assert_same(r, {f"net.{k}": v for k, v in expected.items()}, atol=2e-5, rtol=1e-4)


TICKING = '''import torch.nn as nn, torch.nn.functional as F, itertools
torch.manual_seed(0)
CALLS = itertools.count(1)   # (beyond the put-back of the Python state a replay changes)
class Tick(torch.autograd.Function):     # a Ctrl-C at its AT-th forward
    @staticmethod
    def forward(ctx, x):
        if next(CALLS) == AT: raise KeyboardInterrupt
        return x.clone()
    @staticmethod
    def backward(ctx, g): return g
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.a, s.n, s.d, s.l = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.3), nn.Linear(6, 3)
    def forward(s, x): return s.l(s.d(torch.tanh(Tick.apply(s.n(s.a(x))))))
net = Net().train()
X = torch.randn(8, 4); t = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
torch.manual_seed(5)
'''


def _model_state(ns) -> dict:
    net = ns["net"]
    return {"rng": torch.get_rng_state().tolist(), "grad": torch.is_grad_enabled(),
            "dtype": torch.get_default_dtype(),
            "params": [(n, p.dtype, p.detach().tolist(), p.requires_grad, p.grad is None)
                       for n, p in net.named_parameters()],
            "buffers": [(n, b.dtype, b.tolist()) for n, b in net.named_buffers()],
            "modules": [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks),
                         len(m._backward_hooks)) for m in net.modules()],
            "names": sorted(k for k in ns if not k.startswith("_"))}


@pytest.mark.parametrize("at", [2, 5, 20])
def test_a_ctrl_c_in_the_gradcheck_replays_forward_leaves_the_model_as_a_plain_run(
        ip, run_ok, at):
    """A KeyboardInterrupt raised in the float64 replay's forward (a custom Function's, on
    its ``at``-th call): parameters and buffers keep their dtype and values, the RNG, grad
    mode, default dtype, training flags and hooks are as after the plain cell."""
    cell = "losses = F.cross_entropy(net(X), t, reduction='none')\n"
    run_ok(TICKING.replace("== AT", "== 0"))
    run_ok(cell)
    plain = _model_state(ip.user_ns)
    run_ok(TICKING.replace("== AT", f"== {at}"))
    result = ip.run_cell(f"%%vjp --wrt net --gradcheck\n{cell}")
    assert next(ip.user_ns["CALLS"]) - 1 == at  # the premise: the replay reached the interrupt
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert _model_state(ip.user_ns) == plain


# --------------------------------------------------------------------------------------------
# --wrt net: r's attributes (jacobian, gradients, code) against jacrev and a run of r.code
# --------------------------------------------------------------------------------------------

_SMALL = '''import torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 8), NORM, nn.Tanh(), nn.Linear(8, 3))
X = torch.randn(6, 4); t = torch.randint(0, 3, (6,))
'''
_SMALL_CELLS = {"losses": "losses = F.cross_entropy(net(X), t, reduction='none')",
                "loss": "loss = F.cross_entropy(net(X), t)", "out": "out = net(X)"}


@pytest.mark.parametrize("earlier_grads", [False, True])
@pytest.mark.parametrize("norm", ["nn.LayerNorm(8)", "nn.BatchNorm1d(8)"])
@pytest.mark.parametrize("cell", list(_SMALL_CELLS))
def test_r_code_run_in_the_notebook_gives_r_derivatives_and_restores_grad(
        ip, run_ok, cell, norm, earlier_grads):
    setup = _SMALL.replace("NORM", norm)
    if earlier_grads:
        setup += "F.cross_entropy(net(X), t).backward()\n"
    run_ok(setup)
    r = run_ok(f"%%vjp --wrt net\n{_SMALL_CELLS[cell]}")
    net, X, t = (ip.user_ns[k] for k in ("net", "X", "t"))
    params = {k: v.detach() for k, v in net.named_parameters()}
    state = {k: v.clone() for k, v in net.named_buffers()}  # as the cell's forward left them
    before = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    expected = jacrev(lambda p: _small_output(cell, net, p, state, X, t))(params)
    ns = dict(ip.user_ns)
    exec(r.code, ns)  # noqa: S102 - the code the display offers the user
    for k, v in expected.items():
        torch.testing.assert_close(r.jacobian(f"net.{k}"), v, atol=1e-6, rtol=1e-5, msg=k)
        torch.testing.assert_close(ns["d_net_" + k.replace(".", "_")],
                                   r.derivatives[f"net.{k}"], msg=k)
        if cell != "out":  # (out: the last layer's rows are points, the rest 18 one-hots)
            assert len(r.gradients[f"net.{k}"]) == (1 if cell == "loss" else 6)
    after = [None if p.grad is None else p.grad for p in net.parameters()]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before, after))


def _small_output(cell, net, params, buffers, X, t):
    """The cell's output through the batch-statistics graph of the cell's own forward
    (BatchNorm in training mode normalises by this batch's statistics either way)."""
    out = functional_call(net, {**params, **{k: v.clone() for k, v in buffers.items()}}, (X,))
    if cell == "out":
        return out
    return F.cross_entropy(out, t, reduction="none" if cell == "losses" else "mean")


# --------------------------------------------------------------------------------------------
# --gradcheck of a right custom Function whose forward draws its own random mask
# --------------------------------------------------------------------------------------------

RANDOM_MASK = '''
class RandMask(torch.autograd.Function):     # right: a hand-written dropout
    @staticmethod
    def forward(ctx, x):
        m = (torch.rand_like(x) > 0.5).to(x.dtype) * 2
        ctx.save_for_backward(m); return x * m
    @staticmethod
    def backward(ctx, g): m, = ctx.saved_tensors; return g * m
'''
R2_6 = ("R2-6: a right custom backward whose forward draws its own mask (a hand-written "
        "dropout, y = x * m) is FAILED by --gradcheck: 'its derivatives for x differ from the "
        "float64 ones by up to 100.0% ... a backward wrong only in float32. A custom "
        "autograd.Function's backward is the likely culprit: RandMaskBackward'; the float64 "
        "replay ran the forward with a fresh draw (another m), unlike torch's own random ops, "
        "which replay with the cell's draws (a forward reading a counter is found out: 'cannot "
        "be replayed', ok None); class: a custom forward's RNG is not replayed from the state "
        "the cell's call saw, and the mismatch is blamed on the backward")


@pytest.mark.parametrize("tail", ["", " ** 2).sum()"])  # ("": R2-6, fixed)
def test_gradcheck_does_not_fail_a_right_backward_of_a_random_forward(ip, run_ok, tail):
    run_ok(RANDOM_MASK + "torch.manual_seed(0)")
    body = "x = torch.linspace(1., 2., 6, requires_grad=True)\n"
    body += f"y = (RandMask.apply(x){tail}" if tail else "y = RandMask.apply(x)"
    r = run_ok(f"%%vjp --gradcheck\n{body}")
    x = ip.user_ns["x"].detach()
    torch.manual_seed(0)
    m = (torch.rand_like(x) > 0.5).to(x.dtype) * 2  # the cell's own draw
    expected = m if not tail else 2 * x * m * m  # mathematics: d(x m)/dx = m
    torch.testing.assert_close(r.derivatives["x"], expected)
    assert r.gradcheck.ok is not False, r.gradcheck


MORE_RIGHT = '''
class Double_(torch.autograd.Function):      # right: in place, marked dirty
    @staticmethod
    def forward(ctx, x): x.mul_(2); ctx.mark_dirty(x); return x
    @staticmethod
    def backward(ctx, g): return 2 * g
class ViewOut(torch.autograd.Function):      # right: returns a view of its input
    @staticmethod
    def forward(ctx, x): return x.view(-1)[:3]
    @staticmethod
    def backward(ctx, g): z = g.new_zeros(6); z[:3] = g; return z.view(2, 3)
class WithInt(torch.autograd.Function):      # right: a non-tensor output beside
    @staticmethod
    def forward(ctx, x): ctx.save_for_backward(x); return x ** 3, 7
    @staticmethod
    def backward(ctx, g, _): x, = ctx.saved_tensors; return 3 * g * x ** 2
class Counter(torch.autograd.Function):      # right at each call; reads a counter
    @staticmethod
    def forward(ctx, x): STEP[0] += 1; ctx.k = STEP[0]; return x * ctx.k
    @staticmethod
    def backward(ctx, g): return g * ctx.k
STEP = [0]
'''
_X6 = "x = torch.linspace(1., 2., 6, requires_grad=True)\n"


@pytest.mark.parametrize("body, ok", [
    (_X6 + "y = Double_.apply(x.sin())", True),
    (_X6 + "y = Double_.apply(x.sin()).sum()", True),
    (_X6 + "y = ViewOut.apply(x.view(2, 3) * 1) ** 2", True),
    (_X6 + "y = WithInt.apply(x)[0]", True),
    (_X6 + "y = Counter.apply(x) ** 2", None),  # cannot be replayed: said, not failed
    (_X6 + "y = (Counter.apply(x) ** 2).sum()", None),
])
def test_gradcheck_of_right_custom_functions_of_other_shapes(run_ok, body, ok):
    run_ok(MORE_RIGHT)
    assert run_ok(f"%%vjp --gradcheck\n{body}").gradcheck.ok is ok


CUSTOM_IN_MODEL = '''import torch.nn as nn, torch.nn.functional as F
LOG = []
class Old(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): LOG.append(1); ctx.save_for_backward(x); return torch.tanh(x)
    @staticmethod
    def backward(ctx, g): x, = ctx.saved_tensors; return g * (1 - torch.tanh(x) ** 2)
class New(torch.autograd.Function):
    generate_vmap_rule = True
    @staticmethod
    def forward(x): LOG.append(1); return torch.tanh(x)
    @staticmethod
    def setup_context(ctx, inputs, output): ctx.save_for_backward(inputs[0])
    @staticmethod
    def backward(ctx, g): x, = ctx.saved_tensors; return g * (1 - torch.tanh(x) ** 2)
class Net(nn.Module):
    def __init__(s, fn, norm):
        super().__init__(); s.fn, s.a, s.n, s.l = fn, nn.Linear(4, 8), norm, nn.Linear(8, 3)
    def forward(s, x): return s.l(s.fn.apply(s.n(s.a(x))))
X = torch.randn(16, 4); t = torch.randint(0, 3, (16,))
'''


@pytest.mark.parametrize("norm", ["nn.LayerNorm(8)", "nn.BatchNorm1d(8)"])
@pytest.mark.parametrize("fn", ["Old", "New"])
def test_a_custom_function_in_a_model_runs_once_under_wrt_net(ip, run_ok, fn, norm):
    """The per-sample analysis of a model with a custom Function (the old style, and the
    setup_context style with a vmap rule) runs its forward once, as the display says, and
    gives what its backward gives in the batch graph."""
    run_ok(CUSTOM_IN_MODEL + f"torch.manual_seed(0)\nnet = Net({fn}, {norm})\n")
    r = run_ok("%%vjp --wrt net\nlosses = F.cross_entropy(net(X), t, reduction='none')")
    assert len(ip.user_ns["LOG"]) == 1
    assert "runs only once" in " ".join(r._repr_mimebundle_()["text/plain"].split())
    net, X, t = (ip.user_ns[k] for k in ("net", "X", "t"))
    expected = _loop(F.cross_entropy(net(X), t, reduction="none"), net)
    _assert_same(r, {f"net.{k}": v for k, v in expected.items()}, atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Messages: a --wrt module's loss computed under no_grad
# --------------------------------------------------------------------------------------------

_NO_GRAD = '''import torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
X = torch.randn(6, 4); t = torch.randint(0, 3, (6,))
w = torch.ones(4, requires_grad=True)
'''


def test_a_tensor_input_under_no_grad_gets_the_precise_message(ip, run_ok):
    """Guard (the counterpart of R2-7): --wrt w, a tensor, names no_grad and its line."""
    run_ok(_NO_GRAD)
    result = ip.run_cell("%%vjp --wrt w\nwith torch.no_grad():\n    y = X @ w")
    message = str(result.error_in_exec)
    assert "torch.no_grad()" in message and "line 1" in message
    assert "requires_grad_()" not in message


@pytest.mark.parametrize("context", ["torch.no_grad()", "torch.inference_mode()"])
def test_a_module_loss_under_no_grad_gets_the_precise_message(ip, run_ok, context):
    run_ok(_NO_GRAD)
    assert all(p.requires_grad for p in ip.user_ns["net"].parameters())  # the premise
    result = ip.run_cell(f"%%vjp --wrt net\nwith {context}:\n"
                         "    losses = F.cross_entropy(net(X), t, reduction='none')")
    message = str(result.error_in_exec)
    assert "X.requires_grad_()" not in message and "line 1" in message, message


_RANDOM_MASK_NET = RANDOM_MASK + '''import torch.nn as nn, torch.nn.functional as F
class Net(nn.Module):
    def __init__(s):
        super().__init__(); s.a = nn.Linear(4, 8); s.l = nn.Linear(8, 3)
    def forward(s, x): return s.l(RandMask.apply(torch.tanh(s.a(x))))
torch.manual_seed(0)
net = Net(); X = torch.randn(16, 4); t = torch.randint(0, 3, (16,))
'''


@pytest.mark.parametrize("cell", [  # (the mean loss: R2-6 in a model, fixed)
    "losses = F.cross_entropy(net(X), t, reduction='none')",
    "loss = F.cross_entropy(net(X), t)"])
def test_gradcheck_of_a_model_with_a_hand_written_dropout_is_not_failed(run_ok, cell):
    run_ok(_RANDOM_MASK_NET)
    r = run_ok(f"%%vjp --wrt net --gradcheck\n{cell}")
    # checked, or (the mask drawn anew in float64) said so, never failed
    assert r.gradcheck.ok is not False, r.gradcheck
    assert r.gradcheck.custom or "RandMask" in r.gradcheck.note, r.gradcheck


# --------------------------------------------------------------------------------------------
# Module hooks that change values: the per-sample values are of the function the cell ran
# --------------------------------------------------------------------------------------------

VALUE_HOOKS = {
    "a forward hook returning 2 * output": lambda net: net[0].register_forward_hook(
        lambda m, i, o: 2 * o),
    "a forward pre-hook scaling the input": lambda net: net[3].register_forward_pre_hook(
        lambda m, i: (3 * i[0],)),
    "a forward hook adding the layer's weight": lambda net: net[3].register_forward_hook(
        lambda m, i, o: o + m.weight.sum()),
    "a forward hook applying tanh": lambda net: net[1].register_forward_hook(
        lambda m, i, o: torch.tanh(o)),
}


@pytest.mark.parametrize("given", ["losses", "function"])
@pytest.mark.parametrize("norm", ["LayerNorm", "BatchNorm1d", "Identity"])
@pytest.mark.parametrize("hook", list(VALUE_HOOKS))
def test_per_sample_through_module_hooks_that_change_values(hook, norm, given):
    torch.manual_seed(0)
    middle = {"LayerNorm": nn.LayerNorm(8), "BatchNorm1d": nn.BatchNorm1d(8),
              "Identity": nn.Identity()}[norm]
    net = nn.Sequential(nn.Linear(4, 8), middle, nn.Tanh(), nn.Linear(8, 3))
    VALUE_HOOKS[hook](net)
    x, t = torch.randn(B, 4), torch.randint(0, 3, (B,))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    expected = _loop(F.cross_entropy(net(x), t, reduction="none"), net)
    net.load_state_dict(state)

    def fn():
        return F.cross_entropy(net(x), t, reduction="none")
    r = vjp_magic.differentiate(fn if given == "function" else fn(), net)
    _assert_same(r, expected, atol=2e-5, rtol=1e-4)
