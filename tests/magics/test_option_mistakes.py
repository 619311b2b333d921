"""A mistyped option, a value given to a switch, and an option after the expression: each
stops before anything runs with a message that names the option and says what to do."""
from __future__ import annotations

import pytest

CELL = "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2"


@pytest.mark.parametrize("line, close", [
    ("--seed 3", None), ("--budget 1e9", None), ("--layout csr", None),
    ("--picutre", "--picture"), ("--explian", "--explain"), ("--symbolc", "--symbolic"),
    ("--gradchek", "--gradcheck"), ("--treshold 4", "--threshold"),
    ("--wrt x --presnt", "--present"),
])
def test_an_unknown_vjp_option_is_named_with_the_closest(ip, usage_error, line, close):
    message = usage_error(f"%%vjp {line}\n{CELL}")
    flag = [w for w in line.split() if w.startswith("--") and w != "--wrt"][0]
    assert f"Unknown option {flag} for %%vjp" in message, message
    assert "parentheses" not in message and "--wrt" in message and "--picture" in message
    assert (f"Did you mean {close}?" in message) if close else "Did you mean" not in message
    assert "y" not in ip.user_ns  # refused before the cell ran


@pytest.mark.parametrize("line, flag", [
    ("%%vjp --explain=yes", "--explain"), ("%%vjp --full=1", "--full"),
    ("%%vjp --picture=True", "--picture"), ("%jacobian --symbolic=yes y x", "--symbolic"),
])
def test_a_value_given_to_a_switch_says_it_takes_none(run_ok, usage_error, line, flag):
    run_ok(CELL)
    message = usage_error(f"{line}\n{CELL}" if line.startswith("%%") else line)
    assert f"{flag} is a switch and takes no value" in message, message
    assert "ignored explicit argument" not in message


@pytest.mark.parametrize("line, moved", [
    ("%jacobian y x --picture", "%jacobian --picture y x"),
    ("%jacobian y wrt x --symbolic", "%jacobian --symbolic y wrt x"),
    ("%jacobian y x -p 3", "%jacobian -p 3 y x"),
    ("%jacobian y x --width 30", "%jacobian --width 30 y x"),
    ("%hessian (x**3).sum() wrt x --full-matrix", "%hessian --full-matrix (x**3).sum() wrt x"),
])
def test_an_option_after_the_expression_says_where_it_goes(run_ok, usage_error, line, moved):
    run_ok(CELL)
    message = usage_error(line)
    assert "options go before it" in message and moved in message, message
    assert run_ok(moved) is not None  # the advice, followed, works


@pytest.mark.parametrize("line, words", [
    ("%jacobian y x --picutre", ["Unknown option --picutre", "Did you mean --picture?"]),
    ("%jacobian y x --explain", ["Unknown option --explain", "an option of %%vjp"]),
    ("%hessian --wrt x (x**3).sum()", ["Unknown option --wrt", "after wrt"]),
    ("%hessian (x**3).sum() wrt x --picture", ["--picture is not an option of %hessian",
                                               "%%vjp or %jacobian"]),
])
def test_a_cell_option_or_a_typo_in_a_line_magic(run_ok, usage_error, line, words):
    run_ok(CELL)
    message = usage_error(line)
    for word in words:
        assert word in message, message


def test_python_that_looks_like_an_option_is_still_python(run_ok):
    run_ok(CELL)
    r = run_ok("%jacobian y --x wrt x")  # y - (-x)
    assert r is not None and "x" in r.derivatives


@pytest.mark.parametrize("line, words", [
    ("%%vjp --wrt", ["--wrt needs a value after it: --wrt NAME [NAME ...]."]),
    ("%%vjp --check", ["--check needs a value after it: --check NAME."]),
    ("%%vjp -p", ["-p needs a value after it: -p N."]),
    ("%jacobian --width", ["--width needs a value after it: --width N."]),
    ("%%vjp --p 3", ["--p is the start of several options", "--precision", "in full"]),
    ("%%vjp --f", ["--f is the start of several options", "--full-matrix"]),
    ("%%vjp -q", ["Unknown option -q for %%vjp"]),
    ("%%vjp --wrt x -x", ["parentheses: (-x)"]),
])
def test_argparse_mistakes_in_words_that_say_what_to_do(run_ok, usage_error, line, words):
    run_ok(CELL)
    message = usage_error(f"{line}\n{CELL}" if line.startswith("%%") else line)
    for word in words:
        assert word in message, message
    assert "expected one argument" not in message and "ambiguous option" not in message
