"""The code beneath a cell never takes one of the cell's names for its helpers, and the
prose beside it says the names the code uses (s32, G7's class)."""
from __future__ import annotations

import pytest
import torch
from jupyter_harness import python_fences


def _code(result) -> str:
    bundle = result._repr_mimebundle_()
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    (code,) = python_fences(bundle["text/markdown"])
    return code, bundle


@pytest.mark.parametrize("name", ["v", "k", "i", "j", "itertools"])
@pytest.mark.parametrize("shape", ["components", "matrix"])
def test_an_input_named_like_a_helper_survives_the_pasted_loop(ip, run_vjp, name, shape):
    body = (f"{name} = torch.linspace(-1, 1, 4, requires_grad=True)\n"
            + (f"out = torch.stack([{name}**2, {name}*3])" if shape == "components" else
               f"out = torch.stack([{name}**2, {name}*3, {name}]).reshape(3, 1, 4)"
               f".expand(3, 2, 4) * torch.tensor([1., 2.])[:, None]"))
    r = run_vjp(body)
    x = ip.user_ns[name]
    code, _ = _code(r)
    result = ip.run_cell(code)
    assert result.success, (code, result.error_in_exec)
    assert ip.user_ns[name] is x
    d = ip.user_ns[f"d_{name}"]
    torch.testing.assert_close(d, r.derivatives[name])


def test_the_prose_names_the_vector_the_code_uses(run_vjp):
    r = run_vjp("v = torch.linspace(-1, 1, 4, requires_grad=True)\n"
                "out = torch.stack([v**2, v*3])")
    code, bundle = _code(r)
    assert "v2 = torch.zeros_like(out)" in code
    assert "$v_{2}$ is 1 on component" in bundle["text/markdown"] or \
        "v2" in bundle["text/markdown"].split("```")[0]


def test_the_counting_sentence_links_the_component_not_its_gradient(run_vjp):
    r = run_vjp("x = torch.randn(4, 2, requires_grad=True)\n"
                "y = torch.stack([x.sum(1), (x**2).sum(1)])")
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "grad f_1 is" not in text
    assert "f_1 is y[0]" in text


@pytest.mark.parametrize("name", ["input_features_tensor", "pixel_intensities_2"])
@pytest.mark.parametrize("out", ["torch.softmax({x}, 1)", "torch.stack([{x}.sum(1), {x}.amax(1)])",
                                 "({x} ** 2).sum()"])
def test_the_code_beneath_fits_the_output_with_long_names(ip, run_vjp, name, out):
    from vjp_magic.render.codelines import OUTPUT_WIDTH, fit_code

    r = run_vjp(f"{name} = torch.randn(3, 4, requires_grad=True)\n"
                f"attention_weights_of_layer = {out.format(x=name)}")
    code, _ = _code(r)
    shown = fit_code(code)  # as every spelling shows it
    assert max(len(line) for line in shown.splitlines()) <= OUTPUT_WIDTH, shown
    assert ip.run_cell(shown).success


@pytest.mark.parametrize("name", ["v", "k", "i", "d_x", "itertools"])
@pytest.mark.parametrize("shape", ["components", "matrix"])
def test_a_cell_variable_named_like_a_helper_survives_the_pasted_loop(ip, run_vjp, name, shape):
    """Not an input, not the output: a value the cell binds (G8). The loop beneath the cell
    must not assign to it, and pasted it still gives r.derivatives."""
    x_shape = "3" if shape == "components" else "2, 3"
    r = run_vjp(f"x = torch.linspace(-1, 1, 6)[:{x_shape.replace(', ', '*')}]"
                f".reshape({x_shape}).requires_grad_()\n"
                f"{name} = torch.tensor([1., 2.])\n"
                f"y = torch.stack([{name}[0] * x, {name}[1] * x**2])")
    kept = ip.user_ns[name]
    code, _ = _code(r)
    result = ip.run_cell(code)
    assert result.success, (code, result.error_in_exec)
    assert ip.user_ns[name] is kept, code
    torch.testing.assert_close(ip.user_ns[name], torch.tensor([1., 2.]))
    d = next(ip.user_ns[n] for n in ("d_x", "d_x2") if n != name and n in ip.user_ns)
    torch.testing.assert_close(d, r.derivatives["x"])


@pytest.mark.parametrize("name", ["v", "k", "d_x", "saved_grad", "itertools"])
def test_r_code_keeps_a_cell_variable_named_like_a_helper(ip, run_vjp, name):
    r = run_vjp("x = torch.linspace(-1, 1, 6).reshape(2, 3).requires_grad_()\n"
                f"{name} = torch.tensor([1., 2.])\n"
                f"y = torch.stack([{name}[0] * x, {name}[1] * x**2])")
    ip.user_ns["r"] = r
    kept = ip.user_ns[name]
    code = r.code
    result = ip.run_cell(code)
    assert result.success, (code, result.error_in_exec)
    assert ip.user_ns[name] is kept, code
    d = next(ip.user_ns[n] for n in ("d_x", "d_x2") if n != name and n in ip.user_ns)
    torch.testing.assert_close(d, r.derivatives["x"])
