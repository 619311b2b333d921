"""Class modes (issue 21, item 9), through the magic.

Exam mode (``%config VJPMagics.exam = True``, or ``--exam`` on one cell): a cell shows the
verdict of ``--check`` and never the derivatives or code; a cell without ``--check`` says that
exam mode hides them and how to turn it off. Presentation mode (``--present``, or
``%config VJPMagics.present = True``): the derivatives first, ``\\Large`` in markdown, the
headline beneath; LaTeX and plain text keep their size. The numbers shown are the
mathematics' (f = (-x³, 5x): f₁′ = -3x², f₂′ = 5; sin″ = -sin).
"""
from __future__ import annotations

import math

import pytest
import torch

from vjp_magic.render.latex import tex_problems
from vjp_magic.render.markdown import maths

X3 = "x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
STACK = X3 + "y = torch.stack([-x**3, 5*x])\n"
SUMMED = STACK + "y.backward(torch.ones_like(y), retain_graph=True)\n"  # x.grad = f₁′ + f₂′
NUMBERS = ("-12", "-27")  # f₁′(2) = -3·4, f₁′(3) = -3·9: shown only with the derivatives


@pytest.fixture
def config(ip):
    """``config("exam = True")``: ``%config VJPMagics.…``, put back to off afterwards (the
    shell's config outlives the extension's reload between tests)."""
    yield lambda setting: ip.run_line_magic("config", f"VJPMagics.{setting}")
    for name in ("exam", "present"):
        ip.run_line_magic("config", f"VJPMagics.{name} = False")


def shown(r) -> dict[str, str]:
    bundle = r._repr_mimebundle_()
    return bundle[0] if isinstance(bundle, tuple) else bundle


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- exam mode ----------------------------------------------------------------------------------
def test_exam_shows_the_verdict_and_hides_derivatives_and_code(run_vjp, config):
    config("exam = True")
    r = run_vjp(SUMMED, "--check x.grad")
    assert (r.check.correct, r.check.kind) == (False, "summed")  # v = ones adds f₁′ and f₂′
    out = shown(r)
    for mime, text in out.items():
        assert "✗ the components summed" in text, mime
        assert not any(n in text for n in NUMBERS), (mime, text)
    assert "```" not in out["text/markdown"] and "Verbatim" not in out["text/latex"]
    assert not maths(out["text/markdown"])  # no formula, no matrix
    assert "Exam mode: the derivatives are hidden." in one_line(out["text/plain"])
    # the numbers are still computed: a display mode, not a lock
    torch.testing.assert_close(r.derivatives["x"], torch.tensor([[-3., -12., -27.],
                                                                 [5., 5., 5.]]))


def test_exam_without_check_says_what_hides_them_and_how_to_turn_it_off(run_vjp, config):
    config("exam = True")
    out = shown(run_vjp(STACK))
    plain = one_line(out["text/plain"])
    assert plain == ("Exam mode hides the derivatives: --check NAME grades the answer in NAME. "
                     "%config VJPMagics.exam = False shows them again.")
    assert "`%config VJPMagics.exam = False`" in out["text/markdown"]
    assert not maths(out["text/markdown"])


def test_exam_turns_off_what_would_show_the_answer(run_vjp, config):
    config("exam = True")
    r = run_vjp(SUMMED, "--check x.grad --reveal --explain --code --symbolic --picture")
    out = shown(r)
    assert not any(n in text for text in out.values() for n in NUMBERS)
    assert not maths(out["text/markdown"]) and "```" not in out["text/markdown"]
    assert ("(--reveal, --explain, --code, --symbolic, --picture are off.)"
            in one_line(out["text/plain"]))
    assert r.view.pictures(r) == [] and not r.symbolic


def test_exam_with_against_reveals_nothing(run_vjp, config):
    config("exam = True")
    r = run_vjp(X3 + "y = x.detach()**3 - 2*x\ny.backward(torch.ones_like(y))",
                "--check x.grad --against \"x**3 - 2*x\" --reveal")
    assert not r.check.correct and r.check.kind == "graph-cut"
    out = shown(r)
    assert not maths(out["text/markdown"])
    assert "25" not in out["text/plain"]  # f′(3) = 3·9 - 2, what --reveal would show


def test_exam_hides_the_corrected_code_of_a_mistake(run_vjp, config):
    config("exam = True")
    r = run_vjp(X3 + "y = x**2\nans = None\ntry:\n    y.backward()\nexcept RuntimeError:\n"
                "    pass\nans = x.grad", "--check ans")
    assert r.check.kind == "missing"
    out = shown(r)
    assert "Corrected" not in out["text/plain"] and "```" not in out["text/markdown"]


def test_exam_hides_jacobian_and_hessian(ip, run_ok, config):
    run_ok(X3 + "y = torch.sin(x)")
    config("exam = True")
    for line in ("%jacobian y x", "%hessian y x"):
        out = shown(run_ok(line))
        assert not maths(out["text/markdown"]), line
        assert "Exam mode hides the derivatives" in one_line(out["text/plain"]), line
        assert f"{math.sin(2.0):.4f}"[:5] not in out["text/plain"], line  # -sin(2) = -0.9093


def test_exam_for_one_cell_and_off_again(run_vjp, config):
    out = shown(run_vjp(SUMMED, "--check x.grad --exam --reveal"))
    assert not maths(out["text/markdown"]) and "(--reveal is off.)" in one_line(out["text/plain"])
    config("exam = True")
    config("exam = False")
    out = shown(run_vjp(SUMMED, "--check x.grad --reveal"))
    assert "-12" in out["text/plain"] and maths(out["text/markdown"])  # shown again


# -- presentation mode ------------------------------------------------------------------------
def _first_block(markdown: str) -> str:
    return markdown.split("\n\n")[0]


def test_present_shows_the_derivatives_first_and_large(run_vjp):
    r = run_vjp(STACK, "--present")
    out = shown(r)
    first = _first_block(out["text/markdown"])
    assert first.startswith(r"$$\Large ") and first.endswith("$$")
    assert [cell.strip() for cell in first.split(r"\begin{bmatrix}")[1].split(r"\\")] == [
        "-3 & -12 & -27", r"5 & 5 & 5\end{bmatrix}$$"]  # f₁′ = -3x², f₂′ = 5 at 1, 2, 3
    headline = out["text/markdown"].split("\n\n")[1]
    assert "proved for every" in headline  # the headline right beneath
    for tex in maths(out["text/markdown"]):
        assert not tex_problems(tex), tex
    assert r"\Large" not in out["text/latex"] and "Large" not in out["text/plain"]
    assert out["text/plain"].splitlines()[0].split("=")[-1].split()[1:] == ["[-3", "-12",
                                                                             "-27]"]


def test_present_is_the_same_display_reordered(run_vjp):
    plain = shown(run_vjp(STACK))["text/plain"]
    presented = shown(run_vjp(STACK, "--present"))["text/plain"]
    assert sorted(plain.split("\n\n")) == sorted(presented.split("\n\n"))
    assert plain.split("\n\n")[0].startswith("From x") and not presented.startswith("From")


def test_present_by_config_and_for_second_derivatives(run_ok, config):
    config("present = True")
    run_ok(X3 + "y = torch.sin(x)")
    first = _first_block(shown(run_ok("%hessian y x"))["text/markdown"])
    assert first.startswith(r"$$\Large ")
    expected = [-math.sin(v) for v in (1.0, 2.0, 3.0)]  # sin'' = -sin
    assert all(f"{v:.4f}" in first for v in expected), first


def test_present_leaves_a_graded_answer_hidden(run_vjp):
    out = shown(run_vjp(SUMMED, "--check x.grad --present"))
    assert not maths(out["text/markdown"]) and "-12" not in out["text/plain"]
