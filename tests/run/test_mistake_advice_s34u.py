"""A student's mistake gets advice that, followed, works (s34 U9): the corrected line the
message gives is run under %%vjp and must give derivatives."""
from __future__ import annotations

import pytest

X = "x = torch.tensor([1., 2.], requires_grad=True)\n"


@pytest.mark.parametrize("line, advised", [
    ("y = torch.from_numpy(np.sin(x.detach().numpy()))", "y = torch.sin(x)"),
    ("y = torch.from_numpy(np.exp(x.detach().cpu().numpy()))", "y = torch.exp(x)"),
], ids=["sin", "exp-cpu"])
def test_numpy_on_a_detached_input_is_advised_in_torch(ip, usage_error, line, advised):
    message = usage_error(f"%%vjp\nimport numpy as np\n{X}{line}")
    assert message.rstrip(".").endswith(f"Use x itself: {advised}"), message
    assert ip.run_cell(f"%%vjp\n{X}{advised}").success  # followed, it runs


def test_numpy_without_a_torch_twin_is_not_advised_as_code(usage_error):
    message = usage_error(f"%%vjp\nimport numpy as np\n{X}"
                          "y = torch.from_numpy(np.polyval([1., 2.], x.detach().numpy()))")
    advice = message.split("Use x itself: ")[-1]
    assert ".numpy()" not in advice and "torch functions" in advice, message


@pytest.mark.parametrize("made, shown", [
    ("torch.tensor([1., 2.])", "x = torch.tensor([1., 2.], requires_grad=True)"),
    ("torch.tensor([1., 2.], dtype=torch.float64)",
     "x = torch.tensor([1., 2.], dtype=torch.float64, requires_grad=True)"),
], ids=["float32", "float64"])
def test_requires_grad_on_the_output_is_moved_to_the_input(ip, usage_error, made, shown):
    message = usage_error(f"%%vjp\nx = {made}\ny = (x**2).requires_grad_()")
    assert "no_grad" not in message and shown in message, message
    assert ip.run_cell(f"%%vjp\n{shown}\ny = x**2").success  # the advice, followed


def test_a_leaf_made_before_a_plain_tensor_keeps_the_no_grad_question(usage_error):
    message = usage_error("%%vjp\nx = torch.tensor([1., 2.], requires_grad=True)\n"
                          "with torch.no_grad():\n    y = x**2")
    assert "no_grad" in message, message


@pytest.mark.parametrize("body, advice", [
    ("x = torch.tensor([1, 2, 3], requires_grad=True)\ny = x**2",
     "Corrected: x = torch.tensor([1., 2., 3.], requires_grad=True)"),
    ("x = torch.arange(4, requires_grad=True)\ny = x**2",
     "Corrected: x = torch.arange(4., requires_grad=True)"),
    ("x = torch.tensor([1., 2.], requires_grad=True)\nx *= 3\ny = x**2",
     "Corrected: x = x * 3"),
    ("x = torch.tensor([1., 2.], requires_grad=True)\nx.add_(1)\ny = x**2",
     "Corrected: x = x.add(1)"),
], ids=["integer-list", "integer-arange", "in-place-op", "in-place-method"])
def test_a_creation_mistake_keeps_the_traceback_and_adds_the_fix(ip, capsys, body, advice):
    capsys.readouterr()
    run = ip.run_cell("%%vjp\n" + body)
    assert isinstance(run.error_in_exec, RuntimeError)  # PyTorch's own error, as in a plain cell
    shown = " ".join("".join(capsys.readouterr()).split())
    assert "Traceback" in shown or "RuntimeError" in shown
    assert advice in shown, shown[-600:]


def test_another_runtime_error_gets_no_advice(ip):
    run = ip.run_cell("%%vjp\nx = torch.ones(2, requires_grad=True)\ny = x @ torch.ones(3)")
    assert isinstance(run.error_in_exec, RuntimeError)
    assert not getattr(run.error_in_exec, "__notes__", None)
