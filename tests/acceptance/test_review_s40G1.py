"""Session 40, late reviewer G1: this session's own changes, attacked.

1. run/expanded.proved_apart (fc2e75d, 9e2d2e0, fb6cde5) with the pooling (ad3d48b) and
   indexing (9224253) axis rules: per-sample gradients from one backward pass where the
   graph proves the samples apart. Ops that couple samples (row 0 broadcast, batch means,
   rolls, merged views, gathers and indices that permute, batch-mixing masks, pooling or
   attention over the batch, norms over the batch) must not be proved apart, and every
   per-sample gradient must equal the float64 Jacobian of the B per-sample losses
   (``torch.autograd.functional.jacobian``; row b is sample b's gradient).
2. core/numpy_rng (a7871bd, d93eafb): numpy's global generator after a call is as a plain
   run leaves it (reseeded, set_state or a bit generator swapped mid-cell, a cached
   Gaussian, another bit generator); a default_rng is untouched.
3. core/retained (3b890ef): a retain_grad tensor no scan finds (marked through
   torch._C.TensorBase.retain_grad, held by a plain object, aged) never ends holding a vmap
   BatchedTensor, nor a changed .grad, on every entry point.
4. e79ce93: a custom forward's random draws replayed; the user's own generators (a
   torch.Generator, a numpy Generator) must be as a plain run leaves them.
5. e9bcf0c: grid_sample's proved pattern holds every nonzero of jacrev for grids far out of
   range, on the input's own lattice and sizes of 1.

Failing tests are findings (``xfail(strict=True, reason="G1-n: ...")``).
"""
from __future__ import annotations

import gc

import numpy
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic
from per_sample_reference import Attention
from vjp_magic.core import retained
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.run import expanded

B = 48


# -- 1. one backward pass where the samples are proved apart -------------------------------
def _jacobian_rows(model, losses) -> dict:
    """name -> d(loss b)/d(parameter) in row b: the float64 Jacobian of the B losses."""
    names, params = zip(*model.named_parameters())

    def of(*values):
        with torch.nn.utils.stateless._reparametrize_module(model, dict(zip(names, values))):
            return losses()

    return dict(zip(names, torch.autograd.functional.jacobian(of, params)))


def _per_sample(model, losses, monkeypatch) -> tuple[dict, list]:
    """(the analysis' per-sample derivatives by parameter name, proved_apart's answers)."""
    proved, original = [], expanded.proved_apart

    def spy(value, outs):
        proved.append(original(value, outs))
        return proved[-1]

    monkeypatch.setattr(expanded, "proved_apart", spy)
    r = vjp_magic.differentiate(losses, model, names="m")
    return {n: r.derivatives[f"m.{n}"] for n, _ in model.named_parameters()}, proved


def _assert_rows(model, losses, monkeypatch, coupled: bool):
    found, proved = _per_sample(model, losses, monkeypatch)
    if coupled:  # samples read each other: no proof may say otherwise
        assert True not in proved, proved
    for name, value in _jacobian_rows(model, losses).items():
        torch.testing.assert_close(found[name].double(), value, rtol=1e-10, atol=1e-12)


class _Between(nn.Module):
    """Linear, tanh, ``op`` (on the (B, 4) layer output), Linear."""

    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op = nn.Linear(5, 4), nn.Linear(4, 3), op

    def forward(self, x):
        return self.b(self.op(torch.tanh(self.a(x))))


_ROLLED = torch.arange(B).roll(1)
# name -> (op on the (B, 4) layer output, whether it couples samples: from its mathematics)
BETWEEN = {
    "row 0 expanded": (lambda h: h + h[:1].expand(B, -1), True),
    "row 0 broadcast": (lambda h: h + h[:1], True),
    "batch mean": (lambda h: h + h.mean(0), True),
    "sum over dim -2": (lambda h: h - h.sum(-2, keepdim=True), True),
    "softmax over dim -2": (lambda h: h.softmax(-2), True),
    "roll": (lambda h: h + 0.5 * h.roll(1, 0), True),
    "flip under a mask": (lambda h: torch.where(torch.arange(B)[:, None] % 2 == 0, h,
                                                h.flip(0)), True),
    "merged view, flipped": (lambda h: h.reshape(B // 2, 8).flip(1).reshape(B, 4), True),
    "merged view, softmax": (lambda h: h.reshape(B // 2, 8).softmax(1).reshape(B, 4), True),
    "gather along the batch": (lambda h: h.gather(0, _ROLLED[:, None].expand(B, 4)), True),
    "index by a permutation": (lambda h: h[torch.arange(B).flip(0)], True),
    "index_select": (lambda h: h.index_select(0, _ROLLED), True),
    "cumsum over the batch": (lambda h: h.cumsum(0), True),
    "sort over the batch": (lambda h: torch.sort(h, 0)[0], True),
    "gram matrix": (lambda h: (h @ h.t()) @ h / 10, True),
    "attention over rows": (lambda h: F.scaled_dot_product_attention(h[None], h[None],
                                                                     h[None])[0], True),
    "batch norm, training": (lambda h: F.batch_norm(h, None, None, training=True), True),
    "layer norm over the batch": (lambda h: F.layer_norm(h.t(), (B,)).t(), True),
    "max pool over the batch": (lambda h: F.max_pool1d(h.t()[None], 3, 1, 1)[0].t(), True),
    "avg pool over the batch": (lambda h: F.avg_pool1d(h.t()[None], 3, 1, 1)[0].t(), True),
    "avg pool 2d, unbatched": (lambda h: F.avg_pool2d(h[None], 3, 1, 1)[0], True),
    "split, reversed": (lambda h: torch.cat(list(h.split(2, 0))[::-1]), True),
    "prefix slices joined": (lambda h: torch.cat([h[:2] * 2, h[:B - 2]]), True),
    "unflattened mean": (lambda h: h.unflatten(0, (2, B // 2)).mean(0).repeat(2, 1), True),
    "expanded, summed": (lambda h: h[None].expand(B, B, 4).sum(1), True),
    "median over the batch": (lambda h: h - h.median(0, keepdim=True)[0], True),
    "normalize over the batch": (lambda h: F.normalize(h, dim=0), True),
    "in place on a slice": (lambda h: _slice_added(h.clone()), True),
    # row-separated: proved or not, the numbers must be right
    "index by arange": (lambda h: h[torch.arange(B)], False),
    "transposed view back": (lambda h: h.t().contiguous().view(4, B).t(), False),
    "attention per sample": (lambda h: F.scaled_dot_product_attention(
        h[:, None, None], h[:, None, None], h[:, None, None])[:, 0, 0], False),
    "outer product with own entry": (lambda h: torch.addr(h, h[:, 0],
                                                          torch.ones(4, dtype=h.dtype)), False),
}


def _slice_added(c):
    c[1:] += 0.5 * c[:-1].clone()
    return c


@pytest.mark.parametrize("name", list(BETWEEN))
def test_per_sample_rows_are_the_jacobians_and_coupling_is_never_proved_apart(
        name, monkeypatch):
    op, coupled = BETWEEN[name]
    torch.manual_seed(0)
    x, t = torch.randn(B, 5, dtype=torch.float64), torch.randint(0, 3, (B,))
    model = _Between(op).double()
    _assert_rows(model, lambda: F.cross_entropy(model(x), t, reduction="none"), monkeypatch,
                 coupled)


class _Pooled(nn.Module):
    """Conv2d then ``kind``: a pool over each sample's positions, or over the batch."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.c, self.l = kind, nn.Conv2d(2, 3, 3, padding=1), nn.Linear(12, 3)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.c(x)), 2)  # (B, 3, 2, 2)
        if self.kind == "pool over the batch":  # the batch as a pooled axis
            s = h.permute(1, 2, 0, 3).reshape(1, 6, B, 2)
            h = F.avg_pool2d(s, (3, 1), 1, (1, 0)).reshape(3, 2, B, 2).permute(2, 0, 1, 3)
        elif self.kind == "1-d pool over the batch":
            s = h.reshape(1, B, -1).transpose(1, 2)
            h = F.max_pool1d(s, 3, 1, 1).transpose(1, 2).reshape(B, 3, 2, 2)
        return self.l(h.flatten(1))


@pytest.mark.parametrize("kind", ["per sample", "pool over the batch",
                                  "1-d pool over the batch"])
def test_pooling_rule_proves_only_pools_within_a_sample(kind, monkeypatch):
    torch.manual_seed(0)
    x, t = torch.randn(B, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    model = _Pooled(kind).double()
    _assert_rows(model, lambda: F.cross_entropy(model(x), t, reduction="none"), monkeypatch,
                 kind != "per sample")


@pytest.mark.parametrize("batch_first, masked, misused", [
    (True, False, False), (False, True, False), (False, False, True)])
def test_attention_is_proved_apart_only_along_its_batch(batch_first, masked, misused,
                                                        monkeypatch):
    """``misused``: a batch-first (B, T, E) tensor given to a seq-first layer: the layer
    attends across the B samples (its 'sequence'), so they are coupled."""
    torch.manual_seed(0)
    x, t = torch.randn(B, 5, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    model = Attention(batch_first, masked).double()
    if misused:
        model.batch_first = True  # forward passes x as is to a seq-first layer
    _assert_rows(model, lambda: F.cross_entropy(model(x), t, reduction="none"), monkeypatch,
                 misused)


# -- 2. numpy's global generator -----------------------------------------------------------
@pytest.fixture
def numpy_global():
    """numpy's global generator put back after the test (its bit generator and state)."""
    bits = numpy.random.get_bit_generator()
    state = numpy.random.get_state(legacy=False)
    yield
    numpy.random.set_bit_generator(bits)
    numpy.random.set_state(state)


def _numpy_state():
    bits = numpy.random.get_bit_generator()
    return type(bits).__name__, repr(numpy.random.get_state(legacy=False))


@pytest.mark.parametrize("cell", ["draws", "reseeds", "set_state", "swaps bit generator",
                                  "gaussian only", "another bit generator before"])
@pytest.mark.parametrize("given", ["function", "value"])
def test_numpy_global_generator_is_as_a_plain_run_leaves_it(cell, given, numpy_global):
    x = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
    numpy.random.seed(11)
    numpy.random.rand(3)
    saved = numpy.random.get_state()

    def setup():
        numpy.random.set_bit_generator(numpy.random.MT19937(0))
        numpy.random.seed(0)
        numpy.random.standard_normal()  # a cached Gaussian
        if cell == "another bit generator before":
            numpy.random.set_bit_generator(numpy.random.PCG64(3))
            numpy.random.standard_normal()

    def f():
        if cell == "reseeds":
            numpy.random.seed(5)
        elif cell == "set_state":
            numpy.random.set_state(saved)
        elif cell == "swaps bit generator":
            numpy.random.set_bit_generator(numpy.random.PCG64(9))
        if cell == "gaussian only":
            return torch.sin(x) * float(numpy.random.standard_normal())
        return torch.sin(x) * float(numpy.random.rand()) + float(numpy.random.randn())

    setup()
    f()
    plain = _numpy_state(), numpy.random.rand(), numpy.random.standard_normal()
    setup()
    vjp_magic.differentiate(f if given == "function" else f(), x, seed=1)
    assert (_numpy_state(), numpy.random.rand(), numpy.random.standard_normal()) == plain


def test_a_default_rng_drawn_by_the_cell_moves_as_in_a_plain_run():
    rng = numpy.random.default_rng(4)
    x = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
    f = lambda: torch.sin(x) * float(rng.random())  # noqa: E731
    vjp_magic.differentiate(f, x, seed=1)
    plain = numpy.random.default_rng(4)
    plain.random()
    assert rng.bit_generator.state == plain.bit_generator.state


# -- 3. a retain_grad tensor no scan finds ---------------------------------------------------
class _Holder:  # a plain object: no scan looks into its attributes
    pass


def _missed(with_grad: bool):
    """(f, x, holder, y): holder.u marked through torch's own retain_grad, aged, y = f(u);
    ``with_grad``: u already holds a .grad from the user's backward."""
    g = torch.Generator().manual_seed(1)
    w1, w2 = (torch.randn(48, 48, generator=g, dtype=torch.float64) / 48 ** 0.5
              for _ in range(2))
    x = torch.randn(48, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v))  # noqa: E731
    holder = _Holder()
    holder.u = torch.tanh(x * 1.5)
    torch._C.TensorBase.retain_grad(holder.u)
    y = f(holder.u)
    if with_grad:
        (y ** 2).sum().backward(retain_graph=True)
    gc.collect()
    assert not any(t is holder.u for t in retained.retained(y))  # no scan finds it
    return f, x, holder, y


ENTRIES = {
    "differentiate": lambda y, x: vjp_magic.differentiate(y, x, seed=5),
    "dependency": lambda y, x: vjp_magic.dependency(y, x),
    "sparse_jacobian": lambda y, x: vjp_magic.sparse_jacobian(y, x),
    "hessian": lambda y, x: vjp_magic.hessian((y ** 2).sum(), x),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_a_missed_retain_grad_tensor_holds_no_batched_tensor(entry):
    f, x, holder, y = _missed(with_grad=False)
    ENTRIES[entry](y, x)
    assert holder.u.grad is None  # as a plain run leaves it (not a BatchedTensor)
    assert x.grad is None


G1_1 = ("G1-1: a retain_grad tensor no scan finds (torch._C.TensorBase.retain_grad, held by "
        "a plain object, aged) that already holds a .grad from the user's backward ends "
        "with .grad None after differentiate / dependency / sparse_jacobian / hessian: the "
        "vectorised pass's hook turns its .grad into a BatchedTensor, the pass of zeros "
        "raises, and the rerun's _unbatch sets it to None; the user's gradient is lost "
        "(also so before 3b890ef, at 7c3f59f); class: the guard restores only tensors it "
        "found, and clears, not restores, the ones the full scan finds after the fact. s41 T2: "
        "no torch API lists a node's retains-grad hooks (torch 2.13 Node has none; "
        "TensorBase.retain_grad cannot be wrapped); a dispatch mode over a plain pass before "
        "the vectorised ones sees the hook's add(grad, g)/clone(g) and restores exactly "
        "(bfca29d, 8073ae6, reverted): ~340 us per watched pass under pass_guard's profiler, "
        "+13% on the dense 256 row")


@pytest.mark.xfail(strict=True, reason=G1_1)
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_a_missed_retain_grad_tensor_keeps_its_earlier_grad(entry):
    f, x, holder, y = _missed(with_grad=True)
    grad, values = holder.u.grad, holder.u.grad.clone()
    ENTRIES[entry](y, x)
    assert holder.u.grad is grad and torch.equal(holder.u.grad, values)


# -- 4. a custom forward drawing from the user's own generators ------------------------------
OWN_GENERATORS = '''
import numpy as np
G = torch.Generator().manual_seed(3)
RNG = np.random.default_rng(4)
class MaskG(torch.autograd.Function):      # a right hand-written dropout, its own generator
    @staticmethod
    def forward(ctx, x):
        m = (torch.rand(x.shape, generator=G) > 0.5).to(x.dtype) * 2
        ctx.save_for_backward(m); return x * m
    @staticmethod
    def backward(ctx, g): m, = ctx.saved_tensors; return g * m
class MaskN(torch.autograd.Function):      # the same with a numpy Generator
    @staticmethod
    def forward(ctx, x):
        m = torch.tensor(RNG.random(x.shape[0]) > 0.5).to(x.dtype) * 2
        ctx.save_for_backward(m); return x * m
    @staticmethod
    def backward(ctx, g): m, = ctx.saved_tensors; return g * m
'''

G1_2 = ("G1-2: %%vjp --gradcheck of a custom Function whose forward draws from the user's "
        "own torch.Generator or numpy Generator (default_rng) replays that forward, so the "
        "user's generator ends moved by more draws than the cell's one (the next draws "
        "differ from a plain run's); e79ce93 keeps only torch's, Python's and numpy's global "
        "generators (also so at 7c3f59f); class: a replay of user code moves state the "
        "record does not know of")


def _plain_generators():
    g = torch.Generator().manual_seed(3)
    torch.rand(6, generator=g)
    rng = numpy.random.default_rng(4)
    rng.random(6)
    return g.get_state(), rng.bit_generator.state


@pytest.mark.parametrize("function", ["MaskG", "MaskN"])
def test_a_plain_vjp_cell_moves_the_users_generator_once(ip, run_ok, function):
    run_ok(OWN_GENERATORS)
    run_ok(f"%%vjp\nx = torch.linspace(1., 2., 6, requires_grad=True)\n"
           f"y = ({function}.apply(x) ** 2).sum()")
    g_state, rng_state = _plain_generators()
    if function == "MaskG":
        assert torch.equal(ip.user_ns["G"].get_state(), g_state)
    else:
        assert ip.user_ns["RNG"].bit_generator.state == rng_state


@pytest.mark.parametrize("function", ["MaskG", "MaskN"])
def test_gradcheck_moves_the_users_generator_once(ip, run_ok, function):
    run_ok(OWN_GENERATORS)
    r = run_ok(f"%%vjp --gradcheck\nx = torch.linspace(1., 2., 6, requires_grad=True)\n"
               f"y = ({function}.apply(x) ** 2).sum()")
    assert r.gradcheck.ok is not False, r.gradcheck
    g_state, rng_state = _plain_generators()
    if function == "MaskG":
        assert torch.equal(ip.user_ns["G"].get_state(), g_state)
    else:
        assert ip.user_ns["RNG"].bit_generator.state == rng_state


# -- 5. grid_sample's proved pattern ---------------------------------------------------------
def _proved_dense(found, shape):
    proved = torch.zeros(shape, dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(shape[0]), found.crow.diff())
    proved[rows, found.col] = True
    return proved


def _grid(kind, d, sizes, corners, dtype, g):
    shape = (1, 3, 4, d) if d == 2 else (1, 2, 2, 3, d)
    if kind == "lattice":  # the input's own entries and past them, nudged by ulps
        n = torch.tensor(sizes[::-1], dtype=torch.float64)
        k = torch.randint(-2, 2 * max(sizes) + 2, shape, generator=g).double()
        grid = k / (n - 1).clamp(min=1) - 1 if corners else (k + 1) / n - 1
    else:
        grid = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * kind
    grid = grid.to(dtype)
    for _ in range(2):
        grid = torch.nextafter(grid, grid + torch.randint(-1, 2, shape, generator=g).to(dtype))
    return grid


@pytest.mark.parametrize("kind", ["lattice", 3.0, 1e4, 1e20])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_pattern_holds_every_nonzero_far_out_and_on_the_lattice(kind, padding):
    g = torch.Generator().manual_seed(7)
    for trial in range(12):
        d = 3 if trial % 4 == 3 else 2
        modes = ("bilinear", "nearest", "bicubic") if d == 2 else ("bilinear", "nearest")
        mode, corners = modes[trial % len(modes)], bool(trial % 2)
        dtype = (torch.float32, torch.float64)[(trial // 2) % 2]
        sizes = [int(torch.randint(1, 5, (1,), generator=g)) for _ in range(d)]
        grid = _grid(kind, d, sizes, corners, dtype, g)
        f = lambda t, grid=grid, mode=mode, corners=corners: F.grid_sample(  # noqa: E731
            t * t, grid, mode=mode, padding_mode=padding, align_corners=corners)
        x = torch.randn((1, 2, *sizes), dtype=dtype, generator=g).requires_grad_()
        y = f(x)
        found = proved_pattern(y, x, 2**30, dense=True)
        if found is None:
            continue  # (nothing proved: nothing wrong)
        proved = _proved_dense(found, (y.numel(), x.numel()))
        for _ in range(3):
            at = torch.randn(x.shape, dtype=dtype, generator=g)
            actual = torch.func.jacrev(f)(at).reshape(y.numel(), x.numel()) != 0
            assert not (actual & ~proved).any(), (mode, padding, corners, dtype, sizes)


# -- 6. an advanced index proved by reading its values (9224253) ----------------------------
G1_3 = ("G1-3: dependency(y, x) of y = x[argsort(x[:, 0]), t] at sorted x (the index computed "
        "from x's values, the identity only here) says 'independent' with evidence 'proved' "
        "and conditional_on () and no note: the axis rule read the index's values "
        "(9224253), yet unlike gather, where, max pooling and grid_sample the verdict does "
        "not say it holds only for an x giving the same indices; at an unsorted x, y[i] "
        "reads another row (torch's Jacobian); class: an axis rule resting on saved index "
        "values gives 'proved' without its condition")


def _sorted_index():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, dtype=torch.float64, generator=g).sort(0).values
    t = torch.randint(0, 3, (32,), generator=g)
    return (lambda v: v[torch.argsort(v[:, 0].detach()), t] * 2), x, t


def test_an_index_computed_from_x_is_the_identity_only_at_sorted_x():
    """The premise of G1-3, by torch's Jacobian: diagonal rows at sorted x, not at another."""
    f, x, _ = _sorted_index()
    at_sorted = torch.autograd.functional.jacobian(f, x).ne(0).any(2)
    assert torch.equal(at_sorted, torch.eye(32, dtype=torch.bool))
    shuffled = x[torch.randperm(32, generator=torch.Generator().manual_seed(1))]
    assert not torch.equal(torch.autograd.functional.jacobian(f, shuffled).ne(0).any(2),
                           torch.eye(32, dtype=torch.bool))


# (G1-3: fixed by d4d99b8, the conditional proof of an index read off its values)
def test_a_proof_read_off_index_values_says_its_condition():
    f, x, _ = _sorted_index()
    x = x.clone().requires_grad_()
    d = vjp_magic.dependency(f(x), x)
    assert d.kind == "independent"  # right at this x
    assert d.evidence != "proved" or d.conditional_on, d


# -- 7. unequal blocks (fcb0a51) and the canonical CSR (7918569) ----------------------------
@pytest.mark.parametrize("path", ["read", "bounded"])
def test_unequal_blocks_verdict_pattern_is_the_jacobians_for_random_sizes_and_leaks(
        path, monkeypatch):
    from block_models import grouped_mean, jacobian_pattern, packed_attention
    from vjp_magic.core import blockdecode, grouptest

    if path == "bounded":
        monkeypatch.setattr(blockdecode, "EXACT_SIZE", 0)
        monkeypatch.setattr(grouptest, "RESOLVE_ENTRIES", 0)
    g = torch.Generator().manual_seed(5 + (path == "bounded"))
    for trial in range(8):
        sizes = tuple(int(s) for s in torch.randint(1, 24, (int(torch.randint(
            2, 8, (1,), generator=g)),), generator=g))
        t = sum(sizes)
        leaks = [tuple(int(v) for v in torch.randint(0, t, (2,), generator=g))
                 for _ in range(trial % 3)]
        if trial % 2:
            f, mask = grouped_mean(sizes, leaks=leaks)
        else:
            f, mask = packed_attention(t, sizes, leaks)
        x = torch.randn(t, 4, dtype=torch.float64, generator=g, requires_grad=True)
        d = vjp_magic.dependency(f(x), x, seed=11)
        assert torch.equal(d.pattern, jacobian_pattern(f, x)), (sizes, leaks, d)
        if not trial % 2:  # (a group of one centred on itself reads nothing: not the mask)
            assert torch.equal(d.pattern, mask), (sizes, leaks, d)


def test_csr_pattern_is_torchs_canonical_csr_of_any_order_with_repeats():
    from vjp_magic.core.pattern import csr_pattern

    g = torch.Generator().manual_seed(3)
    for m, n, k in [(1, 1, 3), (7, 1, 9), (1, 9, 20), (13, 17, 200), (40, 3, 0), (5, 6, 1)]:
        rows = torch.randint(0, m, (k,), generator=g)
        cols = torch.randint(0, n, (k,), generator=g)
        found = csr_pattern(rows, cols, (m, n), probes=1)
        dense = torch.zeros(m, n, dtype=torch.bool)
        dense[rows, cols] = True
        canonical = dense.to(torch.float64).to_sparse_csr()
        assert torch.equal(found.crow, canonical.crow_indices())
        assert torch.equal(found.col, canonical.col_indices())


# -- 1b. losses built per sample, or over the batch ------------------------------------------
def _losses(name, m, x, t, t2):
    logits = m(x)
    logp = F.log_softmax(logits, 1)
    ce = F.cross_entropy(logits, t, reduction="none")
    return {  # name -> (losses, whether they couple samples)
        "mean expanded": (lambda: F.cross_entropy(logits, t).expand(B) + 0 * ce, True),
        "minus the batch mean": (lambda: ce - 0.5 * ce.mean(), True),
        "sorted": (lambda: ce.sort().values, True),
        "mse to the batch mean": (lambda: F.mse_loss(
            logits, logits.mean(0, keepdim=True).expand(B, 3), reduction="none").sum(1), True),
        "rolled arange index": (lambda: -logp[torch.arange(B).roll(1), t], True),
        "log_softmax over the batch": (lambda: -F.log_softmax(logits, 0)[torch.arange(B), t],
                                       True),
        "arange index": (lambda: -logp[torch.arange(B), t], False),
        "range index": (lambda: -logp[range(B), t], False),
        "arange[:, None], t2d": (lambda: -logp[torch.arange(B)[:, None], t2].sum(1), False),
        "targets read from other rows": (
            lambda: -logp[torch.arange(B), logits.argmax(1).roll(1)], False),
        "mask from the batch median": (lambda: torch.where(ce > ce.median(), ce, 0.0), False),
        "gather along classes": (lambda: -logp.gather(1, t[:, None])[:, 0], False),
    }[name]


LOSSES = ["mean expanded", "minus the batch mean", "sorted", "mse to the batch mean",
          "rolled arange index", "log_softmax over the batch", "arange index", "range index",
          "arange[:, None], t2d", "targets read from other rows", "mask from the batch median",
          "gather along classes"]


@pytest.mark.parametrize("name", LOSSES)
def test_per_sample_losses_written_by_hand(name, monkeypatch):
    torch.manual_seed(0)
    x, t = torch.randn(B, 5, dtype=torch.float64), torch.randint(0, 3, (B,))
    t2 = torch.randint(0, 3, (B, 2))
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    coupled = _losses(name, model, x, t, t2)[1]
    _assert_rows(model, lambda: _losses(name, model, x, t, t2)[0](), monkeypatch, coupled)


# -- 3b. the magics' entry points with a missed retain_grad tensor ---------------------------
MISSED_CELL = '''
import gc
g = torch.Generator().manual_seed(1)
w1, w2 = (torch.randn(48, 48, generator=g, dtype=torch.float64) / 48 ** 0.5 for _ in range(2))
x = torch.randn(48, generator=g, dtype=torch.float64, requires_grad=True)
class Holder: pass
holder = Holder()
holder.u = torch.tanh(x * 1.5)
torch._C.TensorBase.retain_grad(holder.u)
y = torch.tanh(w2 @ torch.tanh(w1 @ holder.u))
'''


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("cell", ["%%vjp\nz = y * 1", "%jacobian y x",
                                  "%%vjp --wrt x\nz = torch.tanh(w2 @ torch.tanh(w1 @ holder.u))"])
def test_magics_leave_a_missed_retain_grad_tensor_as_it_was(ip, run_ok, cell, grad):
    backward = "(y ** 2).sum().backward(retain_graph=True)\n" if grad else ""
    run_ok(MISSED_CELL + backward + "gc.collect()")
    u = ip.user_ns["holder"].u
    before = u.grad
    values = None if before is None else before.clone()
    run_ok(cell)
    assert u.grad is before  # (None, or the user's own tensor: never a BatchedTensor)
    if grad:
        assert torch.equal(u.grad, values)


# -- 1c. the one pass's weights and float32's subnormal range --------------------------------
G1_4 = ("G1-4: per-sample gradients of float32 losses whose gradients lie in the subnormal "
        "range (losses = 1e-41 · an MLP's logit) differ from torch's float32 Jacobian by up to "
        "5-11% relative (0.weight, 0.bias), where at 7c3f59f they equalled it bit for bit: "
        "fc2e75d's one pass weights the losses by probe 0 (±2^k, |k| <= 5) and divides the "
        "layer outputs' gradients back, 'exact absent over- or underflow', but underflow is "
        "not checked (only NaN); class: a division by the probe's powers of two trusted "
        "exact where the weighted gradients are subnormal")


@pytest.mark.parametrize("seed", [1, 2])  # (G1-4, fixed)
def test_one_pass_per_sample_gradients_in_float32s_subnormal_range(seed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(B, 5)
    losses = lambda: 1e-41 * model(x)[:, 0]  # noqa: E731
    r = vjp_magic.differentiate(losses, model, names="m", seed=seed)
    for name, value in _jacobian_rows(model, losses).items():
        torch.testing.assert_close(r.derivatives[f"m.{name}"], value, rtol=1e-3, atol=0)


OWN_DRAWS = '''
import numpy as np, random
G = torch.Generator().manual_seed(3); RS = np.random.RandomState(5); PR = random.Random(7)
'''


@pytest.mark.parametrize("line", ["%%vjp --gradcheck", "%%vjp"])
def test_a_cells_own_generators_outside_custom_functions_move_once(ip, run_ok, line):
    """Draws of torch ops from the user's torch.Generator, a numpy RandomState, a Python
    Random and dropout's from torch's global generator: as a plain run leaves them."""
    import random
    run_ok(OWN_DRAWS)
    torch.manual_seed(0)
    run_ok(f"{line}\nx = torch.linspace(-1, 1, 6, requires_grad=True)\n"
           "y = (torch.sin(x) * torch.rand(6, generator=G) + float(RS.rand()) + PR.random()"
           " + torch.nn.functional.dropout(x, 0.5)).sum()")
    after = torch.get_rng_state()
    g = torch.Generator().manual_seed(3)
    torch.rand(6, generator=g)
    rs, pr = numpy.random.RandomState(5), random.Random(7)
    rs.rand()
    pr.random()
    torch.manual_seed(0)
    F.dropout(torch.ones(6), 0.5)
    assert torch.equal(ip.user_ns["G"].get_state(), g.get_state())
    assert repr(ip.user_ns["RS"].get_state()) == repr(rs.get_state())
    assert ip.user_ns["PR"].getstate() == pr.getstate()
    assert torch.equal(after, torch.get_rng_state())
