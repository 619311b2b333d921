"""``vjp_magic.differentiate(fn, inputs)``: a zero-argument callable, called exactly once and
recorded as a ``%%vjp`` cell is, so that per-sample losses take the vectorised replay.

Expected values come from ``torch.func.vmap(grad(...))`` and plain ``torch.autograd.grad``
on a plain call of the same function, never from the code under test."""
from __future__ import annotations

import sys

import pytest
from per_sample_reference import vmap_grad
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic import pipeline
from vjp_magic.run import persample


def mlp_case(batch: int = 64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    return model, torch.randn(batch, 8), torch.randint(0, 5, (batch,))


def cnn_case(batch: int = 40):
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
    return model, torch.randn(batch, 1, 8, 8), torch.randint(0, 3, (batch,))


def counted(fn):
    """``fn`` with a call counter (``.calls``)."""
    def wrapper():
        wrapper.calls += 1
        return fn()

    wrapper.calls = 0
    return wrapper


@pytest.fixture
def vectorised(monkeypatch):
    """What the vectorised per-sample path returned, each time it was asked."""
    returned: list = []
    original = persample.per_sample_jacobians

    def spy(*args, **kwargs):
        returned.append(original(*args, **kwargs))
        return returned[-1]

    monkeypatch.setattr(persample, "per_sample_jacobians", spy)
    monkeypatch.setattr(pipeline, "per_sample_jacobians", spy, raising=False)  # if imported
    return returned


@pytest.mark.parametrize("case", [mlp_case, cnn_case], ids=["mlp", "cnn"])
def test_per_sample_gradients_equal_vmap_grad_and_come_from_the_vectorised_replay(
        case, vectorised):
    model, data, targets = case()
    fn = counted(lambda: F.cross_entropy(model(data), targets, reduction="none"))
    r = vjp_magic.differentiate(fn, model, names="model")
    assert fn.calls == 1
    expected = vmap_grad(model, data, targets)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[f"model.{name}"], value,
                                   atol=1e-5, rtol=1e-4)
    assert vectorised and vectorised[-1] is not None  # the replay served, not B backwards
    assert all(p.grad is None for p in model.parameters())
    assert r.output.grad_fn is None  # the stored result pins no graph
    assert not any("faster" in note for note in r.notes)


def test_a_given_tensor_still_works_and_says_how_to_vectorise():
    model, data, targets = mlp_case()
    losses = F.cross_entropy(model(data), targets, reduction="none")
    r = vjp_magic.differentiate(losses, model, names="model")
    expected = vmap_grad(model, data, targets)
    torch.testing.assert_close(r.derivatives["model.0.weight"], expected["0.weight"],
                               atol=1e-5, rtol=1e-4)
    hints = [note for note in r.notes if "as a function" in note]
    assert len(hints) == 1 and "lambda:" in hints[0]
    x = torch.randn(64, requires_grad=True)  # not a module: no hint
    assert not any("as a function" in n for n in vjp_magic.differentiate(x.sin(), x).notes)


def test_side_effects_are_those_of_one_plain_call():
    """RNG (dropout), a forward hook, BatchNorm's running statistics and the ``.grad`` of
    the function's own backward: as a plain ``fn()`` leaves them."""
    def build():
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.BatchNorm1d(12),
                                    torch.nn.Dropout(0.3), torch.nn.Linear(12, 4))
        hooked = []
        model[0].register_forward_hook(lambda *args: hooked.append(1))
        data, targets = torch.randn(48, 6), torch.randint(0, 4, (48,))

        def fn():
            losses = F.cross_entropy(model(data), targets, reduction="none")
            losses.mean().backward(retain_graph=True)  # the function's own backward
            return losses

        return model, fn, hooked

    model, fn, hooked = build()
    torch.manual_seed(11)
    plain_losses = fn()
    plain = (torch.get_rng_state(), len(hooked), model[1].running_mean.clone(),
             model[1].running_var.clone(), model[1].num_batches_tracked.clone(),
             [p.grad.clone() for p in model.parameters()])
    rows = [torch.autograd.grad(plain_losses[b], list(model.parameters()), retain_graph=True)
            for b in range(len(plain_losses))]

    model, fn, hooked = build()
    torch.manual_seed(11)
    r = vjp_magic.differentiate(fn, model, names="model")
    after = (torch.get_rng_state(), len(hooked), model[1].running_mean,
             model[1].running_var, model[1].num_batches_tracked,
             [p.grad for p in model.parameters()])
    assert torch.equal(after[0], plain[0])
    assert after[1] == plain[1] == 1
    for mine, theirs in zip(after[2:5], plain[2:5]):
        assert torch.equal(mine, theirs)
    for mine, theirs in zip(after[5], plain[5]):
        assert torch.equal(mine, theirs)
    torch.testing.assert_close(r.output, plain_losses.detach())  # the same dropout mask
    names = [f"model.{n}" for n, _ in model.named_parameters()]
    for k, name in enumerate(names):  # batch statistics mix samples: rows of the Jacobian
        expected = torch.stack([row[k] for row in rows])
        torch.testing.assert_close(r.derivatives[name], expected, atol=1e-5, rtol=1e-4)


def test_no_hook_of_the_user_runs_during_the_analysis():
    model, data, targets = mlp_case()
    seen = []

    def fn():
        hidden = model[0](data)
        hidden.register_hook(lambda g: seen.append(g.shape))
        return F.cross_entropy(model[2](model[1](hidden)), targets, reduction="none")

    r = vjp_magic.differentiate(fn, model, names="model")
    assert seen == []  # a plain fn() runs no backward: neither does the analysis, visibly
    assert r.derivatives["model.2.bias"].shape == (64, 5)


class Oops(Exception):
    pass


def test_the_functions_own_exception_goes_on_after_one_call():
    def fails():
        fails.calls += 1
        raise Oops("the user's own message")

    fails.calls = 0
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(Oops, match="the user's own message") as caught:
        vjp_magic.differentiate(fails, x)
    assert fails.calls == 1
    if sys.version_info >= (3, 11):
        assert any("called once" in note for note in caught.value.__notes__)


@pytest.mark.parametrize("returned, said", [
    (0.5, "a float"), ((torch.ones(2), torch.ones(2)), "a tuple of 2"), (None, "None")])
def test_a_function_returning_no_tensor_is_told_what_to_return(returned, said):
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="return the tensor") as caught:
        vjp_magic.differentiate(lambda: returned, x)
    assert said in str(caught.value)


def test_a_function_needing_arguments_or_wrong_inputs_is_refused_before_it_runs():
    x = torch.randn(3, requires_grad=True)
    f = counted(lambda: x.sin())
    with pytest.raises(vjp_magic.VJPUsageError, match=r"lambda: f\(x\)"):
        vjp_magic.differentiate(lambda x: x.sin(), x)
    with pytest.raises(vjp_magic.VJPUsageError, match="inputs must be"):
        vjp_magic.differentiate(f, 3)
    with pytest.raises(vjp_magic.VJPUsageError, match="does not require grad"):
        vjp_magic.differentiate(f, x.detach())
    assert f.calls == 0


def test_small_outputs_and_several_inputs_match_the_tensor_form():
    a = torch.tensor([1., 2., 3.], requires_grad=True)
    b = torch.tensor(2., requires_grad=True)
    r = vjp_magic.differentiate(lambda: torch.stack([-a**3, b * a]), {"a": a, "b": b})
    jac = torch.autograd.functional.jacobian(lambda a, b: torch.stack([-a**3, b * a]), (a, b))
    torch.testing.assert_close(r.jacobian("a"), jac[0])
    torch.testing.assert_close(r.jacobian("b"), jac[1])
    assert a.grad is None and b.grad is None


def test_hessian_takes_a_function_too():
    x = torch.tensor([0.5, 1., 2.], requires_grad=True)
    f = counted(lambda: (x**3).sum())
    h = vjp_magic.hessian(f, x)
    assert f.calls == 1
    torch.testing.assert_close(h.hessian("x"), torch.func.hessian(lambda x: (x**3).sum())(x))


def test_dependency_refuses_a_function_clearly():
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="tensors"):
        vjp_magic.dependency(lambda: x.cumsum(0), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_generators_are_left_as_a_plain_call_leaves_them():
    def build():
        torch.manual_seed(5)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5),
                                    torch.nn.Linear(8, 3)).cuda()
        data = torch.randn(64, 6, device="cuda")
        targets = torch.randint(0, 3, (64,), device="cuda")
        return model, lambda: F.cross_entropy(model(data), targets, reduction="none")

    model, fn = build()
    torch.cuda.manual_seed(7)
    plain = fn().detach()
    states = torch.get_rng_state(), torch.cuda.get_rng_state()
    model, fn = build()
    torch.cuda.manual_seed(7)
    r = vjp_magic.differentiate(fn, model, names="model")
    assert torch.equal(torch.get_rng_state(), states[0])
    assert torch.equal(torch.cuda.get_rng_state(), states[1])
    torch.testing.assert_close(r.output, plain)
