"""An expression output is never named after a value the notebook binds (s32, G7's class):
the prose and the code beneath say ``out`` (``out2``, ...) where ``y`` is bound, and the
code, pasted, leaves every value of the notebook as it was."""
from __future__ import annotations

import pytest
from jupyter_harness import python_fences

import vjp_magic.pipeline as pipeline_module
from vjp_magic.features import names


def test_the_names_feature_is_one_of_the_pipelines():
    assert names in pipeline_module.FEATURES


def _bundle(result) -> dict:
    shown = result._repr_mimebundle_()
    return shown[0] if isinstance(shown, tuple) else shown


X = "x = torch.tensor([1., 2., 3.], requires_grad=True)\n"


@pytest.mark.parametrize("body, line, taken, symbol", [
    (X + "y = 5\nx**2", "", ["y"], "out"),
    (X + "y = 5\nout = 'kept'\nx**2", "", ["y", "out"], "out2"),
    (X + "out = torch.ones(3)\ny = x**2", "--of y.sum()", ["out"], "out2"),
    (X + "y = [1]\ntorch.stack([x**2, x**3])", "", ["y"], "out"),
    (X + "y = 5\nx**2", "--code", ["y"], "out"),
    (X + "y = 5\nx**2", "--explain", ["y"], "out"),
])
def test_an_expression_output_avoids_the_notebooks_names(ip, run_vjp, body, line, taken,
                                                          symbol):
    r = run_vjp(body, line)
    before = {name: ip.user_ns[name] for name in taken}
    shown = _bundle(r)
    assert f"to {symbol} = " in shown["text/plain"].replace("\n", " ")
    for name in taken:
        assert f"to {name} = " not in shown["text/plain"].replace("\n", " ")
    for code in python_fences(shown["text/markdown"]) + [r.code]:
        ip.run_cell(code)
    assert all(ip.user_ns[name] is value for name, value in before.items())


def test_jacobian_of_an_expression_avoids_the_notebooks_y(ip, run_ok):
    run_ok(X + "y = 5")
    r = run_ok("%jacobian x.sin()")
    assert "y = " not in " ".join(python_fences(_bundle(r)["text/markdown"]))
    assert "out = x.sin()" in r.code


def test_from_python_the_output_is_y(ip):
    import torch
    import vjp_magic

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    r = vjp_magic.differentiate(x**2, x, output_name="x**2")
    assert "y = x**2" in r.code
