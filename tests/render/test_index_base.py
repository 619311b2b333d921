"""One notation per output, the tutorial's (issue 21 item 4, issue 22 item 5).

The maths counts components and points from 1 as the tutorial does (f_1′, v_1, x^{(1)}),
the code and the labels that name a tensor's entries from 0 (``y[0]``); the display says
once how they meet. ``%config VJPMagics.index_base = 0`` (``RenderOptions(index_base=0)``)
counts the maths from 0 everywhere. Markdown, LaTeX and plain text of one output agree, and
so do ``--symbolic`` and ``--explain``.
"""
from __future__ import annotations

import re

import pytest
import torch

from vjp_magic import differentiate
from vjp_magic.render.options import RenderOptions

# the tutorial's In [6]: f(x) = (-x³, 5x) at the points 0, 1, 2
STACK = ("x = torch.arange(3, dtype=float, requires_grad=True)\n"
         "y = torch.stack([-x**3, 5*x])")
SPELLINGS = ("text/markdown", "text/latex", "text/plain")


def bundle_of(r) -> dict[str, str]:
    bundle = r._repr_mimebundle_()
    return bundle[0] if isinstance(bundle, tuple) else bundle


def flat(text: str) -> str:
    return " ".join(text.split())


# what each spelling writes for the same label: f_1', v_1 and the link "f_1 is y[0]"
ONE_BASED = {
    "text/markdown": ["f_{1}'", "f_{2}'", "$$v_1 =", "$f_{1}$ is $y[0]$"],
    "text/latex": ["f_{1}'", "f_{2}'", "$$v_1 =", "$f_{1}$ is $y[0]$"],
    "text/plain": ["f_1' [", "f_2' [", "v_1 = [", "f_1 is y[0]."],
}
ZERO_BASED = {
    "text/markdown": ["f_{0}'", "f_{1}'", "$$v_0 =", "$f_{0}$ is $y[0]$"],
    "text/latex": ["f_{0}'", "f_{1}'", "$$v_0 =", "$f_{0}$ is $y[0]$"],
    "text/plain": ["f_0' [", "f_1' [", "v_0 = [", "f_0 is y[0]."],
}


def test_labels_count_from_one_in_every_spelling(run_vjp):
    rendered = bundle_of(run_vjp(STACK))
    for mime in SPELLINGS:
        text = flat(rendered[mime])
        for wanted in ONE_BASED[mime]:
            assert wanted in text, (mime, wanted)
        assert "f_{0}'" not in text and "f_0'" not in text and "v_0" not in text, mime
        assert "Counted from 1 as the tutorial does, from 0 in the code" in text, mime
        assert "counted from 0 as in the code" not in text, mime
    # the code beneath still indexes from 0, as Python does
    assert "v[k] = 1" in rendered["text/plain"] and "range(2)" in rendered["text/plain"]


def test_index_base_zero_flips_every_spelling(ip, run_vjp):
    ip.run_line_magic("config", "VJPMagics.index_base = 0")
    try:
        rendered = bundle_of(run_vjp(STACK))
    finally:
        ip.run_line_magic("config", "VJPMagics.index_base = 1")
    for mime in SPELLINGS:
        text = flat(rendered[mime])
        for wanted in ZERO_BASED[mime]:
            assert wanted in text, (mime, wanted)
        assert "f_{2}'" not in text and "f_2'" not in text and "v_1 =" not in text, mime
        assert "Counted from 0 as in the code" in text, mime


def test_index_base_zero_from_python():
    x = torch.arange(3, dtype=torch.float64, requires_grad=True)
    y = torch.stack([-x**3, 5 * x])
    zero = bundle_of(differentiate(y, x, options=RenderOptions(index_base=0)))["text/plain"]
    one = bundle_of(differentiate(y, x))["text/plain"]
    assert "f_0' [" in zero and "v_0 = [" in zero and "f_2'" not in zero
    assert "f_1' [" in one and "f_2' [" in one and "v_1 = [" in one and "f_0'" not in one


def test_index_base_must_be_zero_or_one(ip, capsys):
    try:
        ip.run_line_magic("config", "VJPMagics.index_base = 2")
        assert "index_base is 1" in capsys.readouterr().err
        assert ip.magics_manager.registry["VJPMagics"].index_base == 1
    finally:
        ip.run_line_magic("config", "VJPMagics.index_base = 1")


def test_hessian_points_count_from_the_base(run_ok):
    run_ok("x = torch.randn(3, 2, requires_grad=True)\ny = torch.tanh(x).sum(1)")
    text = bundle_of(run_ok("%hessian y x"))["text/plain"]
    assert "∇²f(x^(1))" in text and "∇²f(x^(0))" not in text


# -- --symbolic and --explain name an entry as the numeric display does -----------------------
MATMUL = ("x = torch.tensor([[1., 2.], [3., 4.]], requires_grad=True)\n"
          "y = x @ x")


@pytest.mark.parametrize("base", [1, 0])
def test_symbolic_and_explain_agree_with_the_numbers_on_one_entry(ip, run_vjp, base):
    ip.run_line_magic("config", f"VJPMagics.index_base = {base}")
    try:
        r = run_vjp(MATMUL, "--symbolic --explain")
    finally:
        ip.run_line_magic("config", "VJPMagics.index_base = 1")
    first = f"x_{{{base},{base}}}"  # x[0,0] in the maths, counted from the base
    markdown = bundle_of(r)["text/markdown"]
    symbolic = markdown[markdown.index("Symbolic (SymPy)"):markdown.index("agrees with")]
    assert first in symbolic  # SymPy's symbol for x[0,0]
    assert (f"x_{{{base + 2},{base + 2}}}" not in symbolic) and (
        base == 1 or "x_{2,2}" not in symbolic)  # counted from the base: 2 × 2 entries
    assert f"${first}$ is $x[0,0]$" in markdown  # explain states the link for that entry
    assert "x[0,0]" in markdown  # and the numbers label it as the code does
    plain_text = flat(bundle_of(r)["text/plain"])
    assert f"x_{{{base},{base}}} is x[0,0]" in plain_text
    # SymPy's own names of the entries (plain text) count from the same base
    assert f"x_{{{base},{base}}}" in plain_text


def test_symbolic_entries_count_from_the_base(ip, run_vjp):
    r = run_vjp(MATMUL, "--symbolic")
    assert r.symbolic["x"].free_symbols == {
        sym for sym in r.symbolic["x"].free_symbols if re.fullmatch(r"x_\{[12],[12]\}", str(sym))}
    ip.run_line_magic("config", "VJPMagics.index_base = 0")
    try:
        r0 = run_vjp(MATMUL, "--symbolic")
    finally:
        ip.run_line_magic("config", "VJPMagics.index_base = 1")
    names = {str(s) for s in r0.symbolic["x"].free_symbols}
    assert names and all(re.fullmatch(r"x_\{[01],[01]\}", n) for n in names), names
    assert "x_{0,0}" in names


# -- one notation per output (issue 22, item 5) -------------------------------------------------
def test_the_index_formula_uses_the_tutorials_point(run_vjp):
    rendered = bundle_of(run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2"))
    assert "∂y_i/∂x_j = δ_ij f'(x^(i))" in rendered["text/plain"]
    assert "f'(x_i)" not in rendered["text/plain"]
    assert r"\delta_{ij}\,f'(x^{(i)})" in rendered["text/markdown"]


def test_a_column_inputs_formula_has_every_delta(run_vjp):
    """A (5, 1) input: y_ij depends on x_kl only where i = k and j = l (mathematics: the
    Jacobian of an elementwise map is diagonal in every axis), so δ_jl is written too."""
    r = run_vjp("x = torch.linspace(-2, 2, 5).view(-1, 1).requires_grad_(True)\ny = x**2")
    rendered = bundle_of(r)
    assert "∂y_ij/∂x_kl = δ_ik δ_jl f'(x^(i))" in rendered["text/plain"]
    assert r"\delta_{ik}\,\delta_{jl}\,f'(x^{(i)})" in rendered["text/markdown"]
    x = r.inputs["x"].tensor.detach()
    jac = torch.autograd.functional.jacobian(lambda t: t**2, x)  # shape (5, 1, 5, 1)
    assert torch.equal(jac[:, 0, :, 0], torch.diag(2 * x[:, 0]))  # δ_ik f'(x^(i)), j = l = 0


def test_a_label_follows_its_equals_sign_with_a_space(run_vjp):
    text = bundle_of(run_vjp(STACK))["text/plain"]
    assert "f_k'(x^(i)) = f_1' [" in text
    maths = "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    assert not re.search(r"=\S", maths), maths  # (code lines keep Python's gradient=v)


def test_a_parameter_is_spelled_as_python_in_every_rendering(run_vjp):
    r = run_vjp("torch.manual_seed(0)\n"
                "mlp = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())\n"
                "loss = mlp(torch.randn(3, 2)).sum()", "--wrt mlp")
    for mime, text in bundle_of(r).items():
        if mime not in SPELLINGS:
            continue
        unbraced = re.sub(r"[{}]", "", text)  # \mathtt{mlp[0]{.}weight} reads mlp[0].weight
        assert "mlp[0].weight" in unbraced and "mlp[0].bias" in unbraced, mime
        assert "mlp.0" not in unbraced, mime


def test_one_name_for_the_jacobian_in_one_output(run_vjp):
    r = run_vjp("x = torch.arange(6, dtype=float).view(3, 2).requires_grad_(True)\n"
                "y = torch.stack([x[:, 0] * x[:, 1], x[:, 0]**2], 1)", "--explain --symbolic")
    text = bundle_of(r)["text/plain"]
    assert "J_F" in text and "J_f" not in text
    assert "[grad f_1(x); grad f_2(x)]" in text  # the symbolic J_f by its rows, ∇f_1 and ∇f_2
