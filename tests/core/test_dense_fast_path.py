"""The dense path's cheaper passes (issue 20, "existing rows do not regress"): the engine's pass
called without ``autograd.grad``'s Python checks, vmap through torch's own primitives, the
one-hot batch from a diagonal, the retain_grad scan's type table. Each gives what the general
route gives: expected values from ``torch.autograd.grad``, ``torch.func.vmap``,
``torch.func.jacrev`` or mathematics."""
from __future__ import annotations

import sys

import pytest
import torch

import vjp_magic
from vjp_magic.core import derivatives, retained


def _weights(dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(4, 5, dtype=dtype, generator=gen), gen


def _f(t):
    w, _ = _weights(t.dtype)
    h = torch.tanh(w @ t)
    return (h * h.roll(1)).sin()


def _graph(dtype=torch.float64):
    w, gen = _weights(dtype)
    x = torch.randn(5, dtype=dtype, generator=gen, requires_grad=True)
    unused = torch.randn(2, dtype=dtype, generator=gen, requires_grad=True)
    h = torch.tanh(w @ x)
    return x, unused, h, (h * h.roll(1)).sin()


def test_one_pass_equals_autograd_grad_with_zeros_for_an_input_not_reached():
    x, unused, h, y = _graph()
    v = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    got = derivatives.plain_vjp(y, [x, unused, h], v)
    want = torch.autograd.grad(y, [x, unused, h], v, retain_graph=True, allow_unused=True)
    for g, w, t in zip(got, want, (x, unused, h)):
        assert not g.requires_grad
        torch.testing.assert_close(g, torch.zeros_like(t) if w is None else w, rtol=0, atol=0)
    assert x.grad is None and unused.grad is None


def test_batched_passes_equal_torch_func_vmap_of_autograd_grad():
    x, unused, h, y = _graph()
    batch = derivatives.gradient_batch(y, (), 0, y.numel())

    def one(v):
        return torch.autograd.grad(y, [x, unused], v, retain_graph=True, allow_unused=True,
                                   materialize_grads=True)

    want = torch.func.vmap(one)(batch)
    got = derivatives._vmap_grad(y, [x, unused], batch)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g, w)
    torch.testing.assert_close(got[0], torch.func.jacrev(_f)(x.detach()))


def test_batched_passes_fall_back_to_torch_func_vmap(monkeypatch):
    x, unused, h, y = _graph()
    batch = derivatives.gradient_batch(y, (), 0, y.numel())
    fast = derivatives._vmap_grad(y, [x, unused], batch)
    monkeypatch.setattr(derivatives, "_VMAP", None)  # a torch without the primitives
    slow = derivatives._vmap_grad(y, [x, unused], batch)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_a_vmap_error_leaves_no_vmap_level_behind():
    x, unused, h, y = _graph()
    bad = torch.zeros(3, 7, dtype=y.dtype)  # not shaped like y: the engine refuses it
    with pytest.raises(RuntimeError):
        derivatives._vmap_grad(y, [x], bad)
    # a later vmap works at level 1 again: nothing was left incremented
    assert torch.equal(torch.func.vmap(torch.sin)(torch.zeros(2, 2)), torch.zeros(2, 2))
    got = derivatives._vmap_grad(y, [x], derivatives.gradient_batch(y, (), 0, y.numel()))[0]
    torch.testing.assert_close(got, torch.func.jacrev(_f)(x.detach()))


class Logged(torch.Tensor):
    """A tensor subclass with ``__torch_function__``: its passes go through autograd.grad."""

    calls: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tensor_with_torch_function_goes_through_autograd_grad():
    x = torch.linspace(-1, 1, 4, dtype=torch.float64).as_subclass(Logged).requires_grad_()
    y = x.sin()
    Logged.calls.clear()
    (g,) = derivatives.plain_vjp(y, [x], torch.ones(4, dtype=torch.float64))
    assert "grad" in Logged.calls  # autograd.grad's own override point was reached
    torch.testing.assert_close(g.as_subclass(torch.Tensor),
                               torch.linspace(-1, 1, 4, dtype=torch.float64).cos())


@pytest.mark.parametrize("shape,points", [((7,), ()), ((3, 4), ()), ((3, 4), (0,)),
                                          ((2, 3, 4), (0, 2)), ((), ())])
def test_one_hot_batches_are_the_identity_on_the_components(shape, points):
    y = torch.zeros(shape)
    comps = [n for a, n in enumerate(shape) if a not in points]
    count = 1
    for n in comps:
        count *= n
    for start, stop in {(0, count), (count - 1, count), (0, max(1, count // 2))}:
        batch = derivatives.gradient_batch(y, points, start, stop)
        assert batch.shape == (stop - start,) + tuple(shape)
        for k in range(stop - start):
            expected = torch.zeros(shape)
            index = list(torch.unravel_index(torch.tensor(start + k), tuple(comps))) \
                if comps else []
            full = [slice(None) if a in points else int(index.pop(0)) for a in range(len(shape))]
            expected[tuple(full)] = 1
            assert torch.equal(batch[k], expected)


def test_dense_jacobian_equals_jacrev():
    torch.manual_seed(0)
    n = 64
    w1, w2 = torch.randn(n, n) / n**0.5, torch.randn(n, n) / n**0.5
    x = torch.randn(n, requires_grad=True)

    def f(v):
        return torch.tanh(w2 @ torch.tanh(w1 @ v))

    r = vjp_magic.differentiate(f(x), x, seed=0)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(f)(x.detach()))
    assert x.grad is None and not r.notes


def test_the_scan_sorts_objects_by_type_few_or_many():
    t, lst, dct, mod = torch.zeros(1), [1], {"a": 1}, torch.nn.Linear(1, 1)
    few = [1, 2.0, "a", t, lst, dct, (1,), sys, None, len, mod, Logged()]
    for objects in (few, few * 10):  # by one loop, and at C speed
        tensors, sequences, mappings, modules = retained._split(objects)
        k = len(objects) // len(few)
        assert [len(tensors), len(sequences), len(mappings), len(modules)] == \
            [2 * k, 2 * k, k, k]
        assert all(isinstance(o, torch.Tensor) for o in tensors)
        assert all(isinstance(o, torch.nn.Module) for o in modules)


@pytest.mark.parametrize("module", ["__main__", "some_module"])
def test_a_module_frames_variables_are_looked_at(module):
    """A module-level frame's locals are its globals: __main__'s are looked at once, another
    module's (a frame running at its import) are looked at too."""
    code = ("import torch\nx = torch.randn(4, requires_grad=True)\nu = torch.sin(x)\n"
            "u.retain_grad()\nfound = [t for t in retained._from_frames_found(u * 2)]\n")
    names = {"__name__": module, "retained": _Finder}
    exec(compile(code, "<cell>", "exec"), names)
    assert any(t is names["u"] for t in names["found"])


class _Finder:
    @staticmethod
    def _from_frames_found(y):
        found: dict = {}
        retained._from_frames(found, sys._getframe(1))
        return found.values()


def _empty_frame():
    def idle():
        yield
    gen = idle()
    return gen, gen.gi_frame  # a frame with no variables and none above it


def test_objects_given_are_looked_at_alongside_the_frames():
    """An entry point's own arguments are looked at with the frames outside vjp_magic: a
    retain_grad tensor (marked past the registry) reached only through them is found."""
    import gc

    x = torch.randn(4, requires_grad=True)
    box = [torch.sin(x)]
    torch._C.TensorBase.retain_grad(box[0])  # torch's own method: not in the registry
    y = box[0] * 2
    gc.collect()  # aged: not among the young objects either
    gen, frame = _empty_frame()
    assert [t is box[0] for t in retained.retained(y, frame, given=(box,))] == [True]
    assert retained.retained(y, frame) == []


def test_the_frames_looked_at_start_outside_vjp_magic():
    names = {"__name__": "vjp_magic.somewhere", "sys": sys, "retained": retained}
    exec(compile("def inner():\n    return retained._outside(sys._getframe())\n", "<x>", "exec"),
         names)
    assert names["inner"]() is sys._getframe()
