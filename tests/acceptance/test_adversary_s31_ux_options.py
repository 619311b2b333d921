"""Adversarial review, session 31: a student's wrong options for ``%%vjp``, ``%jacobian`` and
``%hessian``, and wrong arguments to the public API (layout, budget, seed, names).

Every mistake must stop with a short ``UsageError``/``VJPUsageError`` that says what to do,
never a traceback from inside the package; and nothing the user had is lost (``keep.grad``
from an earlier cell, the names a cell assigned). Tests marked ``xfail(strict=True)`` are
findings of this review (they pass once fixed and then lose the mark).
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic

CELL = "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2"
NAMES = "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x**2\nn = 3\ns = 'hi'\n" \
        "c = torch.randn(3, dtype=torch.complex64, requires_grad=True)"


# -- %%vjp: wrong flags and values ---------------------------------------------------------------
@pytest.mark.parametrize("line, words, ran", [
    ("--wrt z", ["No variable named 'z'", "--wrt"], True),
    ("--of z", ["No variable named 'z'", "--of"], True),
    ("--wrt n", ["n is an int, not a tensor"], True),
    ("--of s", ["s is a str, not a tensor", "requires_grad=True"], True),
    ("--check nothing", ["No variable named 'nothing'", "--check"], True),
    ("-p 0", ["-p", "from 1 to 17, not 0"], False),
    ("--threshold 1", ["--threshold", "at least 2", "not 1"], False),
    ("--width 5", ["--width", "at least 20", "not 5"], False),
    ("--reveal", ["--reveal goes with --check NAME"], False),
    ("--against x", ["--against goes with --check NAME"], False),
    ("--of y x", ["Give one output to --of"], True),
    ("-p 3 -p 4", ["given 2 times", "give it once"], False),
])
def test_vjp_flag_mistakes_say_what_to_do(ip, usage_error, earlier_grad, line, words, ran):
    """A bad option stops before the cell runs; a bad name is found after it ran, and what
    it assigned is kept."""
    message = usage_error(f"%%vjp {line}\nn = 3\ns = 'hi'\n{CELL}")
    for word in words:
        assert word in message, message
    assert "Traceback" not in message and len(message) < 400
    assert ("y" in ip.user_ns) == ran
    if ran:
        assert ip.user_ns["y"].shape == (5,) and ip.user_ns["x"].grad is None


def test_a_prefix_of_a_flag_is_the_flag(run_vjp):
    """argparse's abbreviations, as IPython's own magics take them: --pic is --picture."""
    r = run_vjp(CELL, "--pic")
    torch.testing.assert_close(r.derivatives["x"], 2 * torch.linspace(-2, 2, 5))


@pytest.mark.parametrize("line", ["--seed 3", "--picutre"])
def test_an_unknown_vjp_option_is_named_unknown(usage_error, line):
    message = usage_error(f"%%vjp {line}\n{CELL}")
    assert "parentheses" not in message and "Unknown option" in message, message


def test_a_value_given_to_a_switch_says_it_takes_none(usage_error):
    message = usage_error(f"%%vjp --explain=yes\n{CELL}")
    assert "ignored explicit argument" not in message, message


def test_wrt_of_an_empty_grad_names_none_not_nonetype(usage_error):
    message = usage_error(f"%%vjp --wrt x.grad\n{CELL}")
    assert "NoneType" not in message, message


# -- %jacobian and %hessian ----------------------------------------------------------------------
@pytest.mark.parametrize("line, words", [
    ("%jacobian", ["Name the output", "%jacobian y x"]),
    ("%hessian", ["Name the output", "%hessian y x"]),
    ("%jacobian z", ["No variable named 'z'"]),
    ("%jacobian y z", ["No variable named 'z'"]),
    ("%jacobian n x", ["n is an int, not a tensor"]),
    ("%jacobian y wrt", ["Give the output before 'wrt'"]),
    ("%jacobian (y wrt x", ["'(' was never closed"]),
    ("%jacobian 1/0 wrt x", ["Could not evaluate '1/0'", "ZeroDivisionError"]),
    ("%jacobian --wrt x y", ["Unknown option --wrt for %jacobian", "go before the expression"]),
    ("%jacobian --explain y x", ["Unknown option --explain"]),
    ("%hessian --picture (x**3).sum() wrt x", ["--picture", "%%vjp --picture --wrt x\n",
                                               "torch.autograd.grad((x**3).sum(), x, "
                                               "create_graph=True)"]),
    ("%hessian --wrt x (x**3).sum()", ["Unknown option --wrt for %hessian"]),
    ("%hessian (x**3).sum() wrt z", ["No variable named 'z'"]),
    ("%jacobian y.detach() wrt x", ["no autograd history", "no_grad"]),
])
def test_line_magic_mistakes_say_what_to_do(ip, run_ok, usage_error, earlier_grad, line, words):
    run_ok(NAMES)
    message = usage_error(line)
    for word in words:
        assert word in message, message
    assert ip.user_ns["x"].grad is None


def test_an_option_after_the_expression_says_options_go_first(run_ok, usage_error):
    run_ok(NAMES)
    message = usage_error("%jacobian y x --picture")
    assert "before" in message, message


def test_the_complex_advice_is_valid_python(run_ok, usage_error):
    run_ok(NAMES)
    message = usage_error("%jacobian c**2 wrt c")
    assert "real" in message
    assert "(c**2).real" in message, message


# -- the public API: layout, budget, seed, names -------------------------------------------------
@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csc, "sparse_csr", None])
def test_a_wrong_layout_names_the_two_that_work(layout):
    x = torch.randn(5, requires_grad=True)
    r = vjp_magic.differentiate(x.sin(), x, seed=0)
    with pytest.raises(vjp_magic.VJPUsageError, match="torch.sparse_csr"):
        r.jacobian("x", layout=layout)
    h = vjp_magic.hessian((x**3).sum(), x, seed=0)
    with pytest.raises(vjp_magic.VJPUsageError, match="torch.sparse_csr"):
        h.hessian("x", layout=layout)
    assert x.grad is None


@pytest.mark.parametrize("kw, word", [
    ({"seed": 1.5}, "seed is an int"), ({"seed": True}, "seed is an int"),
    ({"seed": "abc"}, "seed"), ({"memory_budget": 0}, "memory_budget"),
    ({"memory_budget": float("nan")}, "memory_budget"), ({"memory_budget": -1}, "memory_budget"),
])
def test_wrong_seed_and_budget_say_what_they_take(kw, word):
    x = torch.randn(5, requires_grad=True)
    for call in (vjp_magic.differentiate, vjp_magic.dependency, vjp_magic.sparse_jacobian):
        with pytest.raises(vjp_magic.VJPUsageError, match=word):
            call(x.sin(), x, **kw)


def test_an_unknown_name_lists_the_inputs():
    x = torch.randn(5, requires_grad=True)
    r = vjp_magic.differentiate(x.sin(), x, seed=0)
    with pytest.raises(KeyError, match="inputs are x"):
        r.jacobian("z")


def test_more_names_than_inputs_is_refused():
    x = torch.randn(5, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.differentiate(x.sin(), x, names=["a", "b"], seed=0)


# -- %config: the same ranges as the flags -------------------------------------------------------
@pytest.fixture
def restored(ip):
    """Puts the settings these tests change back (the shell's config outlives the extension's
    reload between tests)."""
    yield
    for setting in ("precision = 4", "width = 50", "threshold = 10", "index_base = 1"):
        ip.run_line_magic("config", f"VJPMagics.{setting}")


def test_config_refuses_a_bad_index_base_and_says_it_stays(ip, capsys, restored):
    ip.run_cell("%config VJPMagics.index_base = 2")
    out = capsys.readouterr()
    assert "not 2. It stays 1" in out.out + out.err


@pytest.mark.parametrize("setting, flag", [("precision = 0", "-p 0"), ("width = 5", "--width 5"),
                                           ("threshold = 1", "--threshold 1")])
def test_config_refuses_what_the_flag_refuses(ip, usage_error, capsys, restored, setting, flag):
    assert "not" in usage_error(f"%%vjp {flag}\n{CELL}")  # the flag: refused, with its range
    capsys.readouterr()
    ip.run_cell(f"%config VJPMagics.{setting}")
    out = capsys.readouterr()
    assert " not " in out.out + out.err, out
