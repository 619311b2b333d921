"""Never silently wrong: structure proved from the graph or checked by an honest probe rule,
the same verdict at every size, and a cell that leaves nothing of the magic behind.

Expected values come from torch.autograd.functional.jacobian or from mathematics.
"""
from __future__ import annotations

import ctypes
import functools
import gc

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic
from vjp_magic import differentiate
from vjp_magic.core import axisflow, derivatives, strategies
from vjp_magic.core.probes import probe_agrees, probe_vector
from vjp_magic.core.torch_api import TorchError, torch_error
from vjp_magic.run.guard import keep_graphs



def true_pairs(jac: torch.Tensor, out_shape, in_shape) -> set:
    """(output axis, input axis) pairs of equal size > 1 along which the Jacobian is
    exactly zero off the diagonal: the structure, read from the reference Jacobian."""
    pairs = set()
    for a, m in enumerate(out_shape):
        for b, n in enumerate(in_shape):
            if m != n or m == 1:
                continue
            moved = jac.movedim((a, len(out_shape) + b), (0, 1))
            off = ~torch.eye(m, dtype=torch.bool)
            if not bool(moved[off].any()):
                pairs.add((a, b))
    return pairs


W = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
GRAPHS = {
    "tanh_matmul_3d": (lambda x: torch.tanh(x @ W), (2, 4, 5)),
    "linear_3d": (lambda x: F.linear(x, W.T, torch.ones(3, dtype=x.dtype)), (3, 2, 5)),
    "einsum_batch": (lambda x: torch.einsum("bij,jk->bik", x, W[:3, :2]), (4, 2, 3)),
    "permute_scale": (lambda x: x.permute(1, 2, 0) * 3, (2, 3, 4)),
    "layer_norm": (lambda x: F.layer_norm(x, (4,)), (3, 4)),
    "log_softmax_dim0": (lambda x: F.log_softmax(x, 0), (4, 3)),
    "conv_batch": (lambda x: F.conv1d(x, torch.ones(2, 3, 2, dtype=x.dtype)), (4, 3, 6)),
    "batch_norm_train": (lambda x: F.batch_norm(x, None, None, training=True), (5, 3)),
    "flatten_roundtrip": (lambda x: x.reshape(-1).sin().reshape(3, 4), (3, 4)),
    "sum_keepdim_broadcast": (lambda x: x * x.sum(1, keepdim=True), (4, 3)),
    "mean_over_batch": (lambda x: x - x.mean(0), (4, 3)),
    "cumsum_rows": (lambda x: x.cumsum(1), (3, 4)),
    "stack_two": (lambda x: torch.stack([x.exp(), x * 2], 1), (4, 3)),
    "roll_rows": (lambda x: x.roll(1, 0) * x, (4, 3)),
    "select_column": (lambda x: x[:, 0] * x[:, 1], (5, 2)),
    "bmm_self": (lambda x: x @ x.transpose(1, 2), (3, 2, 2)),
    "unbind": (lambda x: x.unbind(1)[1] ** 2, (4, 3)),
    "norm_rows": (lambda x: x / x.norm(dim=1, keepdim=True), (4, 3)),
    "transpose_then_matmul": (lambda x: x.T @ W[:4], (4, 4)),
    "outer": (lambda x: torch.outer(x, x), (3,)),
    # found in review: the mean output of var_mean, losses a later op undoes, conv weights
    "var_mean_mean": (lambda x: x * torch.var_mean(x, 0, keepdim=True)[1], (3, 4)),
    "std_mean_mean": (lambda x: torch.std_mean(x, 1)[1] * 2, (3, 4)),
    "flip_twice": (lambda x: x.flip(0).flip(0), (3, 4)),
    "unbind_then_stack": (lambda x: torch.stack(x.unbind(1), 1), (3, 4)),
    "conv_weight": (lambda x: F.conv1d(torch.ones(2, 3, 6, dtype=x.dtype), x), (4, 3, 3)),
    "conv_transpose_weight": (lambda x: F.conv_transpose1d(torch.ones(2, 3, 4, dtype=x.dtype), x,
                                                           stride=2), (3, 5, 3)),
    "conv_transpose_grouped_weight": (lambda x: F.conv_transpose1d(
        torch.ones(2, 4, 4, dtype=x.dtype), x, groups=2), (4, 3, 3)),
    "depthwise_conv": (lambda x: F.conv1d(x, torch.ones(4, 1, 3, dtype=x.dtype), groups=4),
                       (2, 4, 6)),
    "merged_prefix": (lambda x: x.reshape(2, 12)[:, :4], (2, 3, 4)),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_proof_is_sound_and_exact_proofs_are_complete(name):
    fn, shape = GRAPHS[name]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = fn(x)
    proof = axisflow.prove(y, x)
    proved = {p for p in proof.pairing(y.shape, x.shape) if y.shape[p[0]] > 1}
    truth = true_pairs(reference_jacobian(fn, x.detach()), y.shape, x.shape)
    assert proved <= truth  # never a pairing the Jacobian does not have
    if proof.exact:
        assert proved == truth  # and when exact, the whole structure


# Couplings across points of size ~1 next to derivatives spanning many orders of magnitude:
# the probe rule judges each entry against the magnitudes summing into it, so they show.
COUPLED = {
    "exp_plus_roll": lambda x: torch.exp(x) + x.roll(1),
    "logspace_plus_flip": lambda x: x * torch.logspace(0, 6, x.numel(), dtype=x.dtype)
    + 0.5 * x.flip(0),
    "tiny_coupling": lambda x: x + 1e-4 * x.roll(1),
    "coupling_at_one_point": lambda x: x.exp() + torch.cat([x[1:2] * 0.01, x[1:] * 0]),
}


@pytest.mark.parametrize("name", list(COUPLED))
@pytest.mark.parametrize("n", [200, 600, 5000])  # the exact-path threshold lies between
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("graph_proof", [True, False])
def test_coupled_maps_are_never_called_pointwise(name, n, dtype, graph_proof):
    fn = COUPLED[name]
    x = torch.linspace(0, 20, n, dtype=dtype, requires_grad=True)
    r = differentiate(fn(x), x, graph_proof=graph_proof)
    assert r.point_axes["x"] == ()
    if n <= 600:
        ref = reference_jacobian(fn, x.detach())
        torch.testing.assert_close(r.jacobian("x"), ref)


@pytest.mark.parametrize("n", [511, 512, 513, 4096, 5000])
def test_the_verdict_does_not_depend_on_the_size(n):
    x = torch.linspace(-1, 1, n, requires_grad=True)
    y = x + 1e-5 * x.roll(1)  # float32: 1e-5 is far above float32's rounding of an entry ~1
    assert differentiate(y, x, graph_proof=False).point_axes["x"] == ()
    pointwise = torch.sin(x) * x**2  # truly elementwise: accepted at every size as well
    r = differentiate(pointwise, x, graph_proof=False)
    assert r.point_axes["x"] == ((0, 0),) and r.inputs["x"].evidence == "observed"


def test_scaled_rows_in_a_batch_with_a_leak_between_two_rows():
    X = torch.randn(3000, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.logspace(0, 8, 3000, dtype=torch.float64)[:, None]
    leak = torch.zeros(3000, 4, dtype=torch.float64)
    y = torch.tanh(X) * scale + torch.cat([X[:1] * 0.1, X[1:] * 0]).roll(1, 0) + leak
    r = differentiate(y, X, graph_proof=False)
    assert (0, 0) not in r.point_axes["x"]


def test_a_permute_is_answered_from_the_graph_at_once():
    X = torch.randn(60, 60, 60, requires_grad=True)
    r = differentiate(X.permute(2, 0, 1) * 2, X)
    assert r.point_axes["x"] == ((0, 2), (1, 0), (2, 1))
    assert r.inputs["x"].evidence == "proved"
    assert bool((r.derivatives["x"] == 2).all())


def test_structure_true_only_at_this_x_is_not_claimed_from_the_graph():
    x = torch.zeros(3, requires_grad=True)
    r = differentiate(x * x.sum(), x)  # diagonal at x = 0 only
    assert r.point_axes["x"] == ()
    assert any("is 0 at this x" in note for note in r.notes)  # J = 0 here: a warning
    A = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.0, 1.5], [2.0, 0.0, 1.0]])
    x = torch.tensor([-1.0, -1.0, -1.0], requires_grad=True)
    r = differentiate(torch.relu(A @ x), x)  # every pre-activation negative
    assert r.point_axes["x"] == ()
    assert any("is 0 at this x" in note for note in r.notes)


class _WrongBackward(torch.autograd.Function):
    """x ↦ x² with a backward that forgets the factor 2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x


def test_custom_backward_is_named_and_its_structure_only_observed():
    x = torch.linspace(1, 2, 4, requires_grad=True)
    r = differentiate(_WrongBackward.apply(x), x)
    assert r.inputs["x"].unverified == ("_WrongBackwardBackward",)
    assert r.inputs["x"].evidence == "observed"
    assert any("_WrongBackwardBackward" in note and "gradcheck" in note for note in r.notes)


def test_a_batching_rule_bug_is_caught_by_the_plain_probe(strategy):
    # vmap over autograd.grad gets torch.cdist(p=1)'s signs wrong; a plain backward does not.
    # Both strategies (the exact Jacobian, and per pairing): each has its own plain probe.
    rows = 6
    X = torch.randn(rows, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda t: torch.cdist(t, t, p=1)  # noqa: E731
    r = differentiate(fn(X), X, **strategy)
    torch.testing.assert_close(r.jacobian("x"), reference_jacobian(fn, X.detach()))
    y = fn(X)  # and rows of J against plain backward passes
    for i in (0, 2, 5):
        v = torch.zeros_like(y)
        v[i, 3] = 1
        (expected,) = torch.autograd.grad(y, X, v, retain_graph=True)
        torch.testing.assert_close(r.jacobian_block("x", torch.tensor([i * rows + 3]),
                                                    torch.arange(X.numel())).reshape(X.shape),
                                   expected)


def test_sgn_at_many_points():
    x = torch.randn(10**5, requires_grad=True)
    r = differentiate(torch.sgn(x), x)
    (expected,) = torch.autograd.grad(torch.sgn(x), x, torch.ones_like(x))
    assert torch.equal(r.derivatives["x"], expected)


def test_chunks_account_for_the_graphs_activations():
    x = torch.randn(1000, 64, requires_grad=True)
    h = x
    for _ in range(10):
        h = torch.tanh(h @ torch.randn(64, 64))
    proof = axisflow.prove(h, x)
    assert proof.workspace >= 10 * h.numel() * 4  # every layer's activations counted
    budget = 50 * 2**20
    step = derivatives.chunk_size(h, [x], budget, proof.workspace)
    assert step * proof.workspace <= budget


def test_batched_backward_comes_in_short_chunks(monkeypatch):
    calls = []
    real = derivatives.vjp_batch
    monkeypatch.setattr(derivatives, "vjp_batch",
                        lambda *a, **k: calls.append(a[2].shape[0]) or real(*a, **k))
    monkeypatch.setattr(derivatives, "CHUNK_SECONDS", 1e-9)
    monkeypatch.setattr(strategies, "CHUNK_SECONDS", 1e-9)  # sizes the first chunk
    x = torch.randn(40, requires_grad=True)
    y = torch.softmax(x, 0) * 3
    r = differentiate(y, x, graph_proof=False)
    torch.testing.assert_close(r.jacobian("x"), reference_jacobian(
        lambda t: torch.softmax(t, 0) * 3, x.detach()))
    assert len(calls) == 40 and max(calls) == 1  # every chunk as short as can be


def test_probe_rule_uses_the_entrys_own_magnitudes():
    # derivatives 1 and 1e8 side by side; a coupling of size 1 into the small entry shows
    d = torch.tensor([1.0, 1e8], dtype=torch.float64)
    v = torch.tensor([1.0, 0.5], dtype=torch.float64)
    exact = v * d
    coupled = exact + torch.tensor([0.5 * 1.0, 0.0], dtype=torch.float64)  # v_1 · J_01
    assert probe_agrees(d, v, exact, ((0, 0),))
    assert not probe_agrees(d, v, coupled, ((0, 0),))


# -- the cell leaves nothing behind ----------------------------------------------------------------
def test_autograd_functions_are_never_replaced():
    real_grad, real_backward = torch.autograd.grad, torch.autograd.backward
    ns = {"torch": torch, "functools": functools}
    with keep_graphs("<cell>"):
        assert torch.autograd.grad is real_grad and torch.autograd.backward is real_backward
        exec("g = functools.partial(torch.autograd.grad)\n"
             "def h(t, grad=torch.autograd.grad): return grad\n", ns)
    assert ns["g"].func is real_grad and ns["h"](None) is real_grad


def test_graph_freed_after_the_cell_as_pytorch_frees_it(ip, run_vjp):
    run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
            "loss = (x.exp() * x).sum()\nloss.backward()")
    result = ip.run_cell("torch.autograd.grad(loss, x)")
    assert torch_error(result.error_in_exec) is TorchError.SECOND_PASS


def test_hooks_and_retained_grads_keep_their_values(ip, run_vjp):
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\nh = x * 3\n"
                "h.retain_grad()\nloss = (h.exp()).sum()\nloss.backward()")
    x = ip.user_ns["x"]
    torch.testing.assert_close(ip.user_ns["h"].grad, (3 * x.detach()).exp())
    torch.testing.assert_close(x.grad, 3 * (3 * x.detach()).exp())
    torch.testing.assert_close(r.derivatives["x"], x.grad)


def test_a_stored_result_pins_no_graph(run_vjp):
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x.sin() * 2")
    assert r.output.grad_fn is None and not r.output.requires_grad


def _rss_mib() -> float:
    """Resident memory, once the C allocator has handed its free memory back to the system
    (glibc keeps freed blocks for reuse: that is fragmentation, not a leak)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow  # 280 cells of 10⁵ entries: 3 s alone, up to 18 s in the whole suite
def test_memory_after_many_cells_with_their_own_backward_is_a_plain_cells(run_ok, run_vjp):
    body = ("x = torch.randn(100_000, requires_grad=True)\nh = x\n"
            "for _ in range(4):\n    h = torch.sin(h) * 1.1\nloss = h.sum()\nloss.backward()")

    def growth(run) -> float:
        """RSS growth over 100 cells, once 40 cells have taken the allocator to the high-water
        mark of their kind (a %%vjp cell holds its record and the analysis's copy of the graph
        for a while, so its mark is higher; a leak grows past it, cell after cell)."""
        for _ in range(40):
            run(body + ";")
        gc.collect()
        start = _rss_mib()
        for _ in range(100):
            run(body + ";")
        gc.collect()
        return _rss_mib() - start

    plain, magic = growth(run_ok), growth(run_vjp)
    # a leaked graph per cell would be 4 × 0.4 MB of saved activations → 160 MB over 100 cells
    assert magic <= plain + 16, (plain, magic)


def test_verified_path_threshold_is_the_same_rule():
    # the same map judged on the exact Jacobian and by probes: the same verdict
    x = torch.linspace(0, 20, 300, dtype=torch.float64, requires_grad=True)
    y = torch.exp(x) + 1e-3 * x.roll(3)
    small = differentiate(y, x, graph_proof=False).point_axes["x"]
    large = differentiate(y, x, graph_proof=False, exact_up_to=0).point_axes["x"]
    assert small == large == ()


def test_a_trailing_semicolon_hides_the_result_as_in_a_plain_cell(ip):
    outputs = len(ip.user_ns["Out"])
    hidden = ip.run_cell("%%vjp\nx = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x**2;")
    assert hidden.success and hidden.result is None
    assert len(ip.user_ns["Out"]) == outputs
    shown = ip.run_cell("%%vjp\nx = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x**2")
    assert shown.result is not None


class _Permute(torch.autograd.Function):
    """A permutation of axes the graph analysis cannot see through (a custom backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.permute(2, 0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad.permute(1, 2, 0)


@pytest.mark.parametrize("shape", [(6, 5, 4), (40, 40, 40)])  # both sides of the threshold
def test_a_pairing_the_graph_cannot_prove_is_found_from_rows_of_the_jacobian(shape):
    X = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    r = differentiate(_Permute.apply(X) * 2, X)
    assert r.point_axes["x"] == ((0, 2), (1, 0), (2, 1))
    assert r.inputs["x"].evidence == "observed"
    assert bool((r.derivatives["x"] == 2).all())


def test_a_refusal_suggests_only_what_the_user_can_change():
    x = torch.randn(100_000, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError) as plain:
        differentiate(torch.softmax(x, 0), x, memory_budget=2**20)
    assert "--full" not in str(plain.value) and "--wrt" in str(plain.value)
    with pytest.raises(vjp_magic.VJPUsageError) as full:
        differentiate(x * 2, x, memory_budget=2**20, full=True)
    assert "drop --full" in str(full.value)


@pytest.mark.parametrize("seed", range(40))
def test_a_coupling_does_not_cancel_in_the_discrete_probes(seed, strategy):
    # torch.take with repeated indices: outputs reading one input entry the same way, so a
    # single ±2^k probe can cancel the coupling exactly (v_i = v_k); further probes must agree
    g = torch.Generator().manual_seed(seed)
    n, m = (int(v) for v in torch.randint(2, 6, (2,), generator=g))
    x = torch.randn(n, m, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, n * m, (m,), generator=g)
    fn = lambda t: torch.take(t, index) * torch.arange(1, m + 1)  # noqa: E731
    r = differentiate(fn(x), x, **strategy)
    torch.testing.assert_close(r.jacobian("x"), reference_jacobian(fn, x.detach()))


def test_probes_do_not_depend_on_earlier_analyses():
    out = torch.zeros(5)
    before = [probe_vector(out, 11, d).clone() for d in range(3)]
    probe_vector(torch.zeros(50_000), 11, 0)  # a longer draw in between
    probe_vector(torch.zeros(50_000), 11, 1)
    assert all(torch.equal(b, probe_vector(out, 11, d)) for d, b in enumerate(before))
