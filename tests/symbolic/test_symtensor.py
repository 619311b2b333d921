"""The rule table, one op at a time, without a cell.

Each op runs on a plain float64 tensor under the record, and each recorded call is re-applied to
a :class:`SymTensor` of SymPy symbols by :func:`replay_call`, as the replay does; the SymPy
entries, evaluated at the tensor's values, must give torch's numbers, and their derivatives
(SymPy's ``diff``) ``torch.autograd.functional.jacobian``'s. Then the facts a rule table must
keep (numbers as exact SymPy numbers, torch's dtype promotion and its conventions at kinks), what
the replay refuses, and the time budget.
"""
from __future__ import annotations

import math
import signal
import threading
import time

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic.run.record import recording, tensors_in
from vjp_magic.symbolic.arrays import dtype_of, number
from vjp_magic.symbolic.calls import in_place_stem, replay_call
from vjp_magic.symbolic.deadline import OutOfTime, deadline, spend
from vjp_magic.symbolic.errors import RuleBug, Unsupported
from vjp_magic.symbolic.functions import NUMPY_FUNCTIONS, relu, sigmoid
from vjp_magic.symbolic.registry import RULES, apply, rule
from vjp_magic.symbolic.symbols import symbol_array
from vjp_magic.symbolic.tensor import SymTensor

VALUES = torch.tensor([0.3, 1.2, 0.7, 2.0, 0.9, 1.5], dtype=torch.float64)


def symbolic(name: str = "t", shape=(6,), dtype=torch.float64) -> SymTensor:
    return SymTensor(symbol_array(name, tuple(shape)), dtype, name=name)


def replayed(function, s: SymTensor) -> SymTensor:
    """``function`` run on :data:`VALUES` under the record, each call that reads a symbolic
    value re-applied to the symbolic values (``s`` in place of the values), as the replay does."""
    x = VALUES.to(s.dtype)
    with recording() as record:
        out = function(x)
    values = {id(x): s}

    def swap(value):
        if isinstance(value, torch.Tensor):
            return values.get(id(value), value)
        return type(value)(swap(v) for v in value) if type(value) in (list, tuple) else value

    for call in record.calls:
        if not any(id(t) in values for t in tensors_in((call.args, call.kwargs))):
            continue  # a constant: the numbers the cell computed
        value = replay_call(call.func, swap(call.args),
                            {k: swap(v) for k, v in call.kwargs.items()})
        if call.targets:
            values[id(call.targets[0])] = value
        elif isinstance(call.result, torch.Tensor):
            values[id(call.result)] = value
        else:
            values.update((id(part), v) for part, v in zip(call.result, value))
    return values[id(out)]


def evaluate(entries, symbols, numbers) -> np.ndarray:
    """SymPy entries at the symbols' values, in float64."""
    entries = list(entries)
    function = sympy.lambdify(list(symbols), entries, modules=[NUMPY_FUNCTIONS, "numpy"])
    return np.array([np.broadcast_to(v, ()) for v in function(*numbers)], dtype=np.float64)


# -- every rule against torch: values and derivatives ------------------------------------------
OPS = {
    "add": lambda t: t + 1, "radd": lambda t: 2 + t, "sub": lambda t: t - torch.ones(6),
    "rsub": lambda t: 3 - t, "mul": lambda t: 2 * t, "div": lambda t: t / 3,
    "rdiv": lambda t: 1 / t, "pow": lambda t: t ** 3, "rpow": lambda t: 2 ** t,
    "neg": lambda t: -t, "abs": lambda t: abs(t), "exp": lambda t: t.exp(),
    "log": lambda t: torch.log(t), "log1p": lambda t: torch.log1p(t),
    "sqrt": lambda t: torch.sqrt(t), "rsqrt": lambda t: t.rsqrt(),
    "sin": lambda t: torch.sin(t), "cos": lambda t: torch.cos(t), "tan": lambda t: torch.tan(t),
    "tanh": lambda t: torch.tanh(t), "sigmoid": lambda t: torch.sigmoid(t),
    "expit": lambda t: torch.special.expit(t), "relu": lambda t: torch.relu(t - 1),
    "gelu": lambda t: F.gelu(t), "silu": lambda t: F.silu(t), "softplus": lambda t: F.softplus(t),
    "erf": lambda t: torch.erf(t), "sum": lambda t: t.sum(), "mean": lambda t: t.mean(),
    "prod": lambda t: t.prod(), "sum dim": lambda t: t.view(2, 3).sum(1),
    "mean keepdim": lambda t: t.view(2, 3).mean(0, keepdim=True),
    "norm": lambda t: t.norm(), "linalg.norm dim": lambda t: torch.linalg.norm(t.view(3, 2), dim=1),
    "matmul": lambda t: t.view(2, 3) @ t.view(3, 2), "mv": lambda t: torch.mv(t.view(3, 2), t[:2]),
    "dot": lambda t: torch.dot(t, t), "outer": lambda t: torch.outer(t[:2], t[2:5]),
    "linear": lambda t: F.linear(t.view(2, 3), t.view(2, 3), t[:2]),
    "softmax": lambda t: torch.softmax(t.view(2, 3), 1),
    "log_softmax": lambda t: F.log_softmax(t, 0),
    "where": lambda t: torch.where(torch.arange(6) > 2, t, t ** 2),
    "stack": lambda t: torch.stack([t[0] * t[1], t[2]]), "cat": lambda t: torch.cat([t, t ** 2]),
    "hstack": lambda t: torch.hstack([t[:2], t[3:]]), "vstack": lambda t: torch.vstack([t, t]),
    "reshape": lambda t: t.reshape(3, 2), "flatten": lambda t: t.view(2, 3).flatten(),
    "T": lambda t: t.view(2, 3).T, "mT": lambda t: t.view(1, 2, 3).mT,
    "permute": lambda t: t.view(1, 2, 3).permute(2, 0, 1), "transpose": lambda t: t.view(2, 3).t(),
    "squeeze": lambda t: t.view(1, 6, 1).squeeze(), "unsqueeze": lambda t: t.unsqueeze(1),
    "expand": lambda t: t.view(1, 6).expand(2, 6), "repeat": lambda t: t.view(2, 3).repeat(1, 2),
    "flip": lambda t: t.flip(0), "getitem": lambda t: t.view(2, 3)[:, [0, 2]],
    "unbind": lambda t: torch.unbind(t.view(2, 3), 1)[2],
    "clone": lambda t: t.clone().contiguous().double(),
    "zeros_like": lambda t: t + torch.zeros_like(t),
    "full_like": lambda t: t * torch.full_like(t, 2.0),
}


@pytest.mark.parametrize("op", list(OPS))
def test_rule_gives_torch_values_and_derivatives(op):
    function = OPS[op]
    s = symbolic()
    out = replayed(function, s)
    want = function(VALUES)
    assert isinstance(out, SymTensor) and tuple(out.shape) == tuple(want.shape)
    assert out.dtype == want.dtype
    symbols = list(s.array.reshape(-1))
    got = evaluate(out.array.reshape(-1), symbols, VALUES.tolist())
    np.testing.assert_allclose(got, want.reshape(-1).numpy(), rtol=1e-12, atol=1e-14)
    derivatives = [sympy.diff(entry, v) for entry in out.array.reshape(-1) for v in symbols]
    got = evaluate(derivatives, symbols, VALUES.tolist()).reshape(-1, 6)
    np.testing.assert_allclose(got, reference_jacobian(function, VALUES).reshape(-1, 6).numpy(),
                               rtol=1e-10, atol=1e-12)


# -- facts the rule table keeps --------------------------------------------------------------------
@pytest.mark.parametrize("value, dtype, expected", [
    (2.0, None, sympy.Integer(2)), (0.25, None, sympy.Rational(1, 4)),
    (0.1, None, sympy.Rational(1, 10)), (0.1, torch.float32, sympy.Rational(1, 10)),
    (float(np.float32(0.1)), torch.float32, sympy.Rational(1, 10)), (True, None, sympy.Integer(1)),
    (math.inf, None, sympy.oo), (-math.inf, None, -sympy.oo),
])
def test_numbers_become_exact_sympy_numbers(value, dtype, expected):
    assert number(value, dtype) == expected


def test_other_numbers_stay_floats_and_complex_is_refused():
    assert number(math.pi) == sympy.Float(math.pi) and number(math.nan) is sympy.nan
    with pytest.raises(Unsupported, match="complex"):
        number(1j)


def test_dtype_promotion_follows_torch():
    t32, t64 = symbolic(dtype=torch.float32), symbolic(dtype=torch.float64)
    assert apply("add", t32, t64).dtype == torch.float64
    assert replayed(lambda t: t * torch.ones(6, dtype=torch.float64), t32).dtype == torch.float64
    assert replayed(lambda t: t * 2.5, t32).dtype == torch.float32
    assert replayed(lambda t: t.float(), t64).dtype == torch.float32
    assert replayed(lambda t: t.to(torch.float64), t32).dtype == torch.float64
    assert dtype_of(torch.ones(2, dtype=torch.int64), 0.5) == torch.get_default_dtype()
    assert torch.ones(6, dtype=torch.int64).dtype == dtype_of(torch.ones(6, dtype=torch.int64), 2)


def test_relu_is_zero_and_its_derivative_zero_at_the_kink_like_torch():
    x = sympy.Symbol("x", real=True)
    assert relu(sympy.Integer(-2)) == 0 and relu(sympy.Integer(3)) == 3
    assert sympy.diff(relu(x), x).subs(x, 0) == 0
    kink = torch.zeros(1, requires_grad=True)
    torch.relu(kink).backward()
    assert kink.grad.item() == 0.0


def test_sigmoid_derivative_is_sigma_times_one_minus_sigma():
    x = sympy.Symbol("x", real=True)
    assert sympy.simplify(sympy.diff(sigmoid(x), x) - sigmoid(x) * (1 - sigmoid(x))) == 0
    assert sigmoid(sympy.Integer(0)) == sympy.Rational(1, 2)


def test_indexed_assignment_and_in_place_ops_give_the_new_value():
    s = symbolic()

    def assign(t):
        y = t * 1
        y[0] = t[1] ** 2
        return y.add_(1)

    y = replayed(assign, s)
    assert y.array[0] == s.array[1] ** 2 + 1 and y.array[1] == s.array[1] + 1
    assert list(s.array) == list(symbolic().array)  # the input's own value is untouched


def test_a_recorded_in_place_call_replays_as_the_new_value():
    s = symbolic()
    assert in_place_stem(torch.Tensor.add_) == "add" and in_place_stem(torch.Tensor.add) is None
    assert in_place_stem(torch.Tensor.__setitem__) == "setitem"
    value = replay_call(torch.Tensor.mul_, (apply("mul", s, 1), 3), {})
    assert list(value.array) == [3 * v for v in s.array]
    with pytest.raises(Unsupported, match="detaches"):
        replay_call(torch.Tensor.detach, (s,), {})


@pytest.mark.parametrize("leave, words", [
    (lambda t: t[0].item(), "Tensor.item"), (lambda t: t.detach(), "Tensor.detach"),
    (lambda t: t.data, "Tensor.data"), (lambda t: torch.sort(t), "torch.sort"),
    (lambda t: t.cumsum(0), "Tensor.cumsum"),
    (lambda t: t.view(torch.float32), "view(dtype)"), (lambda t: t.to(torch.int64), "casting"),
])
def test_what_leaves_the_symbolic_world_is_refused_by_name(leave, words):
    with pytest.raises(Unsupported, match=words.replace("(", r"\(").replace(")", r"\)")):
        replayed(leave, symbolic())


def test_a_failing_rule_is_a_rule_bug_not_an_unsupported_op(monkeypatch):
    @rule("broken_for_test")
    def broken(input):
        raise ZeroDivisionError("boom")

    try:
        with pytest.raises(RuleBug, match="broken_for_test.*boom"):
            apply("broken_for_test", symbolic())
    finally:
        RULES.pop("broken_for_test")
    with pytest.raises(Unsupported, match="torch.no_such_op"):
        apply("no_such_op", symbolic())
    with pytest.raises(Unsupported, match="with these arguments"):
        apply("sum", symbolic(), 0, 1, 2, 3)


# -- the time budget -----------------------------------------------------------------------------
def _spin(seconds: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:  # no spend() inside: one long SymPy call
        pass


def test_spend_raises_once_the_budget_is_spent_or_cannot_fit():
    spend(10**9)  # outside a deadline: no budget
    with deadline(5.0):
        spend(10)
        with pytest.raises(OutOfTime):
            spend(10**9)  # far more terms than 5 s allow
    with pytest.raises(OutOfTime), deadline(0.01):
        time.sleep(0.05)
        spend()


def test_nested_deadlines_restore_the_outer_one():
    with deadline(5.0):
        with pytest.raises(OutOfTime), deadline(0.01):
            time.sleep(0.05)
            spend()
        spend()  # the outer 5 s again


def test_deadline_interrupts_a_long_call_and_restores_the_previous_handler():
    def mine(signum, frame):
        raise AssertionError("the previous handler must not run")

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        start = time.monotonic()
        with pytest.raises(OutOfTime), deadline(0.2):
            _spin(3.0)
        assert time.monotonic() - start < 1.5
        assert signal.getsignal(signal.SIGALRM) is mine
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        with deadline(5.0):  # finishing in time leaves no timer running
            _spin(0.05)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is mine
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_off_the_main_thread_the_budget_is_checked_between_ops_only():
    errors = []

    def elsewhere():
        try:
            with deadline(0.05):
                _spin(0.1)  # no signal here: nothing interrupts it
            with pytest.raises(OutOfTime), deadline(0.01):
                _spin(0.05)
                spend()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert errors == []
