"""The batching probe's trusted node types (core.checked_batches.TRUSTED_BATCHING): every one
batches right under vmap over autograd.grad (checked here against plain passes, each type in
a graph of its own, float32 and float64); a graph made only of them gets its dense Jacobian
from one vectorised pass and no probe; anything else (cdist, a custom Function, a tensor
subclass, an integer-free but untrusted dtype) is probed as before. Expected numbers come
from plain torch.autograd.grad rows and torch.func.jacrev."""
import pytest
import torch

from vjp_magic import differentiate
from vjp_magic.core import axisflow, checked_batches, derivatives, strategies, vectorising
from vjp_magic.core.tagging import postorder

_W = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
torch.manual_seed(0)
_LINEAR = {torch.float32: torch.nn.Linear(6, 6), torch.float64: torch.nn.Linear(6, 6).double()}

# (graph builder on x of shape (6,), positive entries): together they hold every trusted type
GRAPHS = {
    "tanh-mv": lambda x: torch.tanh(_W.to(x.dtype) @ torch.tanh(_W.to(x.dtype) @ x)),
    "pointwise": lambda x: torch.sigmoid(x).exp().log().sin().cos().relu().neg(),
    "arithmetic": lambda x: (x * 2 + 1) ** 2 / 3 - x * x / (x + 5) - 1 - x / 2 + (2 - x),
    "mm": lambda x: (x.view(2, 3).t() @ x.view(2, 3)).view(-1),
    "linear-1d": lambda x: _LINEAR[x.dtype](x),
    "linear-2d": lambda x: _LINEAR[x.dtype](x[None]),
}


def _names(y: torch.Tensor) -> set:
    return {type(n).__name__ for n in postorder(y.grad_fn)}


def test_every_trusted_type_has_a_graph_here():
    x = torch.rand(6, requires_grad=True) + 0.5
    covered = set().union(*(_names(f(x)) for f in GRAPHS.values()))
    assert checked_batches.TRUSTED_BATCHING <= covered, \
        checked_batches.TRUSTED_BATCHING - covered


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_a_trusted_graph_batches_as_plain_passes_do(name, dtype):
    x = (torch.rand(6, dtype=dtype, generator=torch.Generator().manual_seed(3)) + 0.5
         ).requires_grad_()
    y = GRAPHS[name](x)
    assert _names(y) <= checked_batches.TRUSTED_BATCHING
    eye = torch.eye(y.numel(), dtype=dtype).view(-1, *y.shape)
    (batched,) = derivatives._vmap_grad(y, [x], eye)
    plain = torch.stack([torch.autograd.grad(y, x, row, retain_graph=True)[0] for row in eye])
    torch.testing.assert_close(batched, plain, rtol=0, atol=(1e-6 if dtype == torch.float32
                                                                else 1e-14))


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_a_trusted_graph_gets_one_pass_and_jacrev(name, monkeypatch):
    f = GRAPHS[name]
    x = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    passes, verdicts = [], []
    real = derivatives._grad
    monkeypatch.setattr(derivatives, "_grad", lambda *a: passes.append(a[2].dim()) or real(*a))
    monkeypatch.setattr(strategies, "batching_verdict",
                        lambda *a: verdicts.append(1) or checked_batches.batching_verdict(*a))
    monkeypatch.setattr(strategies, "CHUNK_SECONDS", 1e9)  # one chunk, however loaded
    monkeypatch.setattr(vectorising, "HEAVY_PASS", float("inf"))  # (a loaded machine's time)
    differentiate(f(x), x, seed=1)  # (the first run times one plain pass for the chunks)
    passes.clear()
    r = differentiate(f(x), x, seed=1)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(f)(x.detach()))
    if r.point_axes["x"] == ():  # the whole Jacobian from one vectorised pass, no probe:
        # then one plain pass of zeros (the retain_grad guard's, core.retained.flush_now)
        y = f(x)
        assert passes == [y.dim(), y.dim()] and verdicts == []


def _kinds(y, x):
    return axisflow.prove(y, x).kinds


def test_untrusted_graphs_are_probed():
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    y = torch.cdist(x, x, p=1)  # vmap gets its backward's signs wrong
    assert not checked_batches.batching_trusted(_kinds(y, x), y, [x])

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    v = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.tanh(Double.apply(v))
    assert not checked_batches.batching_trusted(_kinds(y, v), y, [v])
    y = torch.tanh(v)
    assert checked_batches.batching_trusted(_kinds(y, v), y, [v])
    assert not checked_batches.batching_trusted(frozenset(), y, [v])  # nothing walked
    half = torch.randn(5, dtype=torch.bfloat16, requires_grad=True)
    assert not checked_batches.batching_trusted(_kinds(torch.tanh(half), half),
                                                torch.tanh(half), [half])


def test_a_tensor_subclass_is_probed():
    class Mine(torch.Tensor):
        pass

    v = torch.randn(5, dtype=torch.float64).as_subclass(Mine).requires_grad_()
    y = torch.tanh(v)
    assert not checked_batches.batching_trusted(_kinds(y, v), y, [v])


def test_an_untrusted_graphs_wrong_batching_is_still_recomputed(monkeypatch):
    # cdist(p=1): vmap over its backward is wrong, the probe catches it (as before)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda t: torch.cdist(t, t, p=1)  # noqa: E731
    r = differentiate(fn(x), x, full=True, seed=2)
    expected = torch.autograd.functional.jacobian(fn, x.detach())
    torch.testing.assert_close(r.jacobian("x"), expected)


def test_an_unpack_hook_this_torch_does_not_show_counts_as_the_users():
    from types import SimpleNamespace

    from vjp_magic.core import reentrant

    assert reentrant._users_hook(SimpleNamespace(unpack_hook=None)) is None  # no hook
    hidden = reentrant._users_hook(SimpleNamespace())  # (2.5's SavedTensor: not shown)
    assert hidden is not None and not hidden.co_filename.endswith(reentrant._CHECKPOINT_FILE)
    mine = lambda t: t  # noqa: E731
    assert reentrant._users_hook(SimpleNamespace(unpack_hook=mine)) is mine.__code__


def test_a_remembered_time_that_chunks_is_timed_again():
    # no probe times a trusted graph's plain pass: where a remembered time (a load spike's)
    # would cut the components into chunks, the first chunk is one plain pass, timed afresh
    f = GRAPHS["tanh-mv"]
    x = torch.rand(6, dtype=torch.float64, requires_grad=True)
    y = f(x)
    key = derivatives.pass_key(y, [x], 0)
    derivatives.remember_seconds(key, 0.05)  # 0.2 s / 0.05 s: chunks of 4 of 6 components
    stacked, _ = derivatives.component_vjps(y, [x], (), 2**30, first=4, seconds=0.05, key=key)
    torch.testing.assert_close(stacked[0], torch.func.jacrev(f)(x.detach()))
    assert derivatives.remembered_seconds(key) != 0.05
