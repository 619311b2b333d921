"""No hook of the user's runs in the analysis' passes on the user's own graph (s35 T11).

Where no record stands for the graph (a tensor handed to ``differentiate``, ``hessian``,
``dependency``, ``sparse_jacobian``), each pass runs through the user's graph: one that would
enter the user's Python (any kind of hook) is stopped before that code's first line, with a
usage error naming it (core/pass_guard.pass_guard). A custom Function's backward still runs.
"""
from __future__ import annotations

import logging

import pytest
import torch
from custom_functions import RUNS, Cube, hooked, linspace_x
from custom_functions import record_run as _hook

import vjp_magic

_x = linspace_x
_tensor_hook = hooked


def _node_prehook(x):
    y = torch.sin(x * 1)
    y.grad_fn.register_prehook(_hook)
    return y


def _node_hook(x):
    h = x * 2
    h.grad_fn.register_hook(_hook)
    return torch.sin(h)


def _module_hook(x):
    layer = torch.nn.Tanh()
    layer.register_full_backward_hook(_hook)
    return layer(x)


def _multi_grad_hook(x):
    a, b = x * 2, x * 3
    torch.autograd.graph.register_multi_grad_hook((a, b), _hook, mode="any")
    return a * b


def _input_hook(x):
    x.register_hook(_hook)
    return torch.sin(x)


HOOKED = {"tensor hook": _tensor_hook, "node pre-hook": _node_prehook,
          "node hook": _node_hook, "module backward hook": _module_hook,
          "multi-grad hook": _multi_grad_hook, "the input's hook": _input_hook}


@pytest.mark.parametrize("kind", list(HOOKED))
@pytest.mark.parametrize("entry", ["differentiate", "dependency", "sparse_jacobian"])
def test_a_hook_on_the_users_graph_is_refused_unrun(kind, entry):
    x = _x()
    y = HOOKED[kind](x)
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError) as error:
        getattr(vjp_magic, entry)(y, x)
    assert not RUNS and x.grad is None
    text = str(error.value)
    line = _hook.__code__.co_firstlineno
    assert f"record_run (custom_functions.py:{line})" in text, text  # the hook, file:line
    assert "differentiate(lambda: f(x), x)" in text and "remove the hook" in text


def test_hessian_refuses_a_hook_unrun():
    x = _x()
    y = _tensor_hook(x).pow(2).sum()
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook record_run"):
        vjp_magic.hessian(y, x)
    assert not RUNS


@pytest.mark.parametrize("kind", [k for k in HOOKED if k != "the input's hook"])
def test_a_function_is_recorded_and_replayed_without_its_hooks(kind):
    x = _x()
    RUNS.clear()
    r = vjp_magic.differentiate(lambda: HOOKED[kind](x), x)
    assert not RUNS
    plain = {"module backward hook": torch.tanh, "multi-grad hook": lambda t: 6 * t * t}
    expected = torch.autograd.functional.jacobian(plain.get(kind, lambda t: torch.sin(
        t * (2 if kind == "node hook" else 1))), x.detach())
    torch.testing.assert_close(r.jacobian("x"), expected)


def test_a_custom_backward_still_runs_on_the_users_graph():
    x = _x()
    y = torch.sin(Cube.apply(x))
    r = vjp_magic.differentiate(y, x)
    expected = torch.autograd.functional.jacobian(lambda t: torch.sin(t ** 3), x.detach())
    torch.testing.assert_close(r.jacobian("x"), expected)


def test_a_hook_behind_a_custom_backward_is_refused_unrun():
    x = _x()
    h = Cube.apply(x)
    h.register_hook(_hook)
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook record_run"):
        vjp_magic.differentiate(torch.sin(h), x)
    assert not RUNS


def test_a_post_accumulate_hook_never_runs_in_a_pass():
    """The analysis' passes return gradients, never accumulate: the hook is not entered."""
    x = _x()
    x.register_post_accumulate_grad_hook(_hook)
    RUNS.clear()
    r = vjp_magic.differentiate(torch.sin(x), x)
    assert not RUNS and x.grad is None
    torch.testing.assert_close(r.jacobian("x"), torch.diag(torch.cos(x.detach())))


class _Stream:
    """A notebook's output stream: the user's Python (ipykernel's, say), not a hook."""

    def __init__(self):
        self.text = []

    def write(self, text):
        self.text.append(text)

    def flush(self):
        pass


def test_a_message_logged_in_a_pass_reaches_the_users_stream():
    """Code of the user's that the standard library calls in a pass (logging or warnings
    writing to a stream) is no hook: only the engine's and PyTorch's calls into it stop."""
    from vjp_magic.core.pass_guard import pass_guard
    stream = _Stream()
    logger = logging.getLogger("test_no_user_hook_s35T11")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        with pass_guard():
            logger.warning("shown in a pass")
    finally:
        logger.removeHandler(handler)
    assert any("shown in a pass" in t for t in stream.text)
