"""The IPython layer: registration, flags, namespace handling, errors, x.grad untouched."""
from __future__ import annotations

import builtins

import pytest
import torch
from IPython.core.error import UsageError
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic


def shown(result, mime: str = "text/markdown") -> str:
    """One rendering of a result's display."""
    return result._repr_mimebundle_()[mime]


def test_load_registers_and_unload_removes(ip):
    magics = ip.magics_manager.magics
    assert "vjp" in magics["cell"] and "jacobian" in magics["line"]
    ip.run_line_magic("unload_ext", "vjp_magic")
    assert "vjp" not in magics["cell"] and "jacobian" not in magics["line"]
    ip.run_line_magic("load_ext", "vjp_magic")
    assert "vjp" in magics["cell"]


def test_import_does_not_register(ip):
    ip.run_line_magic("unload_ext", "vjp_magic")
    import vjp_magic  # noqa: F401

    assert "vjp" not in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "vjp_magic")


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert vjp_magic.__version__ == version("vjp_magic")


def test_cell_runs_like_a_normal_cell(ip, capsys, run_vjp, assert_tensor):
    r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\nprint('hello')\ny = x**2")
    assert "hello" in capsys.readouterr().out
    assert "x" in ip.user_ns and "y" in ip.user_ns
    assert ip.user_ns["_"] is r
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])


def test_users_exception_fails_the_cell_and_keeps_earlier_assignments(ip):
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\nraise KeyError('mine')")
    assert isinstance(result.error_in_exec, KeyError)
    assert "x" in ip.user_ns


def test_syntax_error_is_shown_as_a_syntax_error(ip, capsys):
    result = ip.run_cell("%%vjp\nx = (1,\n")
    error = result.error_in_exec
    assert type(error).__name__ == "SyntaxError" and isinstance(error.syntax_error, SyntaxError)
    shown_text = capsys.readouterr().out
    plain = ip.run_cell("x = (1,\n")
    assert isinstance(plain.error_before_exec, SyntaxError)
    # exactly IPython's display for the same line: no frames from inside the magic
    assert "SyntaxError: '(' was never closed" in shown_text and "x = (1," in shown_text
    assert "magics" not in shown_text and "run_cell_magic" not in shown_text


def test_final_expression_is_the_output(run_vjp):
    r = run_vjp("x = torch.arange(3., requires_grad=True)\nx.exp()")
    torch.testing.assert_close(r.derivatives["x"], torch.arange(3.0).exp())


def test_final_value_that_is_not_the_output_is_shown_too(ip, capsys, run_vjp):
    r = run_vjp("x = torch.ones(2, requires_grad=True)\ny = x * 2\n'a note'", line="--of y")
    assert "'a note'" in capsys.readouterr().out and r.output_name == "y"


def test_trailing_semicolon_hides_the_result(ip, run_ok):
    assert run_ok("%%vjp\nx = torch.ones(2, requires_grad=True)\ny = x * 2;") is None


def test_x_grad_untouched_by_the_magic(ip, run_vjp, run_ok):
    run_vjp("x = torch.linspace(0, 1, 4, requires_grad=True)\ny = torch.sin(x)")
    assert ip.user_ns["x"].grad is None
    # the graph is still usable for the user's next cell
    run_ok("y.backward(torch.ones_like(y))")
    torch.testing.assert_close(ip.user_ns["x"].grad, torch.cos(torch.linspace(0, 1, 4)))


def test_existing_grad_is_left_as_it_was(ip, run_ok, run_vjp):
    run_ok("x = torch.tensor([1., 2.], requires_grad=True)\n(x**3).sum().backward()")
    before = ip.user_ns["x"].grad.clone()
    run_vjp("y = x**2")
    assert torch.equal(ip.user_ns["x"].grad, before)


def test_result_keeps_no_graph(run_vjp):
    r = run_vjp("x = torch.ones(3, requires_grad=True)\ny = x.exp()")
    assert r.output.grad_fn is None and not r.output.requires_grad


def test_inputs_from_an_earlier_cell(ip, run_ok, run_vjp):
    run_ok("a = torch.tensor([1., 2., 3.], requires_grad=True)\n"
           "b = torch.tensor(2., requires_grad=True)")
    r = run_vjp("y = b * a**2")
    assert set(r.derivatives) == {"a", "b"}
    ref_a, ref_b = reference_jacobian(lambda a, b: b * a**2,
                                      (ip.user_ns["a"].detach(), ip.user_ns["b"].detach()))
    torch.testing.assert_close(r.jacobian("a"), ref_a)
    torch.testing.assert_close(r.jacobian("b"), ref_b)


def test_wrt_and_of_flags(run_ok, run_vjp, assert_tensor):
    run_ok("a = torch.tensor([1., 2.], requires_grad=True)\n"
           "b = torch.tensor([3., 4.], requires_grad=True)")
    r = run_vjp("y = a * b\nz = y.sum()", line="--wrt a --of y")
    assert list(r.derivatives) == ["a"]
    assert_tensor(r.derivatives["a"], [3.0, 4.0])
    assert r.output_name == "y"


def test_wrt_accepts_attribute_expressions(ip, run_ok, run_vjp):
    run_ok("torch.manual_seed(0)\nlayer = torch.nn.Linear(3, 2)\nx = torch.randn(4, 3)")
    r = run_vjp("y = layer(x)", line="--wrt layer.weight")
    assert r.derivatives["layer.weight"].shape[-2:] == (2, 3)
    x = ip.user_ns["x"]
    w = ip.user_ns["layer"].weight.detach()
    b = ip.user_ns["layer"].bias.detach()
    ref = reference_jacobian(lambda w: x @ w.T + b, w)
    torch.testing.assert_close(r.jacobian("layer.weight"), ref)


def test_full_flag_gives_plain_jacobian(run_vjp, assert_tensor):
    r = run_vjp("x = torch.linspace(-1, 1, 3, requires_grad=True)\ny = x**2", line="--full")
    assert r.point_axes["x"] == ()
    assert_tensor(r.derivatives["x"], torch.diag(torch.tensor([-2.0, 0.0, 2.0])))


def test_precision_flag(run_vjp):
    r = run_vjp("x = torch.tensor([1/3], dtype=torch.float64, requires_grad=True)\n"
                "y = x**2 / 2", line="-p 2")
    assert "0.33" in shown(r) and "0.333" not in shown(r)


def test_config_traitlet_precision(ip, run_vjp):
    ip.run_line_magic("config", "VJPMagics.precision = 6")
    r = run_vjp("x = torch.tensor([1/3], dtype=torch.float64, requires_grad=True)\n"
                "y = x**2 / 2")
    assert "0.333333" in shown(r)
    ip.run_line_magic("config", "VJPMagics.precision = 4")


def test_help_is_available(ip):
    doc = ip.magics_manager.magics["cell"]["vjp"].__doc__
    assert "--wrt" in doc and "--full" in doc and "--precision" in doc
    assert "%%vjp [--wrt" in doc  # a cell magic's usage line, as %%vjp? shows it
    assert "wrt" in ip.magics_manager.magics["line"]["jacobian"].__doc__


# -- %jacobian ------------------------------------------------------------------------------

def test_jacobian_on_names(ip, run_ok):
    run_ok("x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = torch.softmax(x, 0)")
    r = run_ok("%jacobian y x")
    ref = reference_jacobian(lambda t: torch.softmax(t, 0), ip.user_ns["x"].detach())
    torch.testing.assert_close(r.jacobian("x"), ref)
    assert "J_f(x) = " in shown(r, "text/plain") and shown(r).count(r"\\") >= 2


def test_jacobian_on_an_expression(run_ok, assert_tensor):
    run_ok("x = torch.tensor([1., -2.], requires_grad=True)")
    r = run_ok("%jacobian (x**2).sum() wrt x")
    assert_tensor(r.jacobian("x"), [2.0, -4.0])


def test_jacobian_infers_inputs_and_labels_matrix_shapes(run_ok, assert_tensor):
    run_ok("W = torch.ones(2, 2, requires_grad=True)\nz = W * 3")
    r = run_ok("%jacobian z")
    assert_tensor(r.jacobian("W"), 3 * torch.eye(4).reshape(2, 2, 2, 2))
    assert "z[1,1]" in shown(r) and "W[1,1]" in shown(r)  # the tensors' own names, as the code


def test_jacobian_help_prints_the_syntax(ip, capsys):
    assert ip.run_line_magic("jacobian", "-h") is None
    assert "wrt" in capsys.readouterr().out


def test_every_magic_answers_dash_h_with_its_help(ip, capsys):
    assert ip.run_cell("%%vjp -h\nran = True").result is None
    assert "ran" not in ip.user_ns and "%%vjp [--wrt" in capsys.readouterr().out
    assert ip.run_line_magic("hessian", "--help") is None
    assert "%hessian --symbolic torch.sin(x) wrt x" in capsys.readouterr().out


def test_the_magics_read_their_lines_with_their_own_parsers(ip):
    """One grammar: each magic's options are its magic_arguments parser's, shared ones alike."""
    from vjp_magic.magics import VJPMagics

    for magic in (VJPMagics.vjp, VJPMagics.jacobian, VJPMagics.hessian):
        options = {s for a in magic.parser._actions for s in a.option_strings}
        assert {"-p", "--precision", "--threshold", "-h"} <= options, magic
    assert "--picture" in ip.magics_manager.magics["line"]["jacobian"].__doc__
    assert "--picture" not in ip.magics_manager.magics["line"]["hessian"].__doc__  # refused


@pytest.mark.parametrize("line", [
    "--symbolic -p 2 -t * t wrt t",  # the expression begins at its first word, '-' or not
    "-p 2 --threshold 3 (-t) * t wrt t",
    "-t * t",  # no options, inputs from the graph
])
def test_options_before_an_expression_that_starts_with_minus(ip, run_ok, line):
    run_ok("t = torch.tensor([1., -2.], requires_grad=True)")
    r = run_ok(f"%jacobian {line}")
    torch.testing.assert_close(r.jacobian("t"), torch.diag(torch.tensor([-2.0, 4.0])))


def test_options_after_the_expression_belong_to_it(ip, usage_error, run_ok):
    run_ok("t = torch.tensor([1., -2.], requires_grad=True)")
    assert "symbolic" in usage_error("%jacobian t * 2 --symbolic wrt t")  # t*2 - -symbolic


# -- user mistakes: one table, each message says what to do ----------------------------------

USAGE_ERRORS = [  # (setup cell, magic cell, words in the message)
    ("", "%%vjp\nx = torch.ones(3)\ny = x**2", ["requires_grad=True"]),
    ("", "%%vjp --of y\nx = torch.ones(3, requires_grad=True)\nwith torch.no_grad():\n"
         "    y = x**2", ["no_grad"]),
    ("", "%%vjp --wrt q\nx = torch.ones(3, requires_grad=True)\ny = x**2", ["'q'"]),
    ("", "%jacobian nope", ["'nope'"]),
    ("", "%%vjp --of y\nx = torch.ones(3, requires_grad=True)\ny = 3.0", ["not a tensor"]),
    ("", "%%vjp --wrt n\nx = torch.ones(3, requires_grad=True)\nn = torch.arange(3)\ny = x * n",
     ["floating"]),
    ("", "%%vjp --nonsense\nx = 1", ["unrecognized arguments: --nonsense"]),
    ("", "%%vjp --wrt x -x\nx = torch.ones(2, requires_grad=True)", ["parentheses: (-x)"]),
    ("", "%%vjp --of y z\nx = torch.ones(2, requires_grad=True)\ny = z = x * 2",
     ["Give one output to --of"]),
    ("", "%%vjp --of y, z\nx = torch.ones(2, requires_grad=True)\ny = z = x * 2",
     ["Give one output to --of", "--of y.sum() + 1"]),
    ("", "%%vjp --of y * -x\nx = torch.ones(2, requires_grad=True)\ny = x * 2",
     ["parentheses: (-x)", "quote the whole expression"]),
    ("", "%%vjp\nx = torch.ones(3, requires_grad=True)\ny = x.to_sparse() * 2",
     ["y is a sparse tensor (sparse_coo)", "y.to_dense()", "--of y.to_dense()"]),
    ("", "%%vjp\nx = torch.ones(3, requires_grad=True)\nx.to_sparse() * 2",
     ["sparse tensor", "(x.to_sparse() * 2).to_dense()"]),
    ("x = torch.ones(3, requires_grad=True)", "%jacobian x.to_sparse() wrt x",
     ["x.to_sparse() is a sparse tensor", "%jacobian x.to_sparse().to_dense() wrt x"]),
    ("", "%%vjp\nA = torch.eye(3).to_sparse().requires_grad_()\ny = torch.sparse.mm(A, "
         "torch.ones(3, 1))", ["Input A is a sparse tensor", "A.to_sparse() inside"]),
    ("import torch.utils.checkpoint\nx = torch.ones(3, requires_grad=True)",
     "%hessian torch.utils.checkpoint.checkpoint(torch.sin, x, use_reentrant=True).sum() wrt x",
     ["use_reentrant=False"]),
    ("import torch.utils.checkpoint", "%%vjp\nx = torch.ones(3, requires_grad=True)\n"
         "y = torch.utils.checkpoint.checkpoint(torch.sin, x, use_reentrant=True)",
     ["use_reentrant=True", "torch.autograd.grad", "use_reentrant=False"]),
    ("", "%%vjp\nx = torch.randn(3, requires_grad=True)\ny = (x > 0).int()",
     ["torch.int32", "integer"]),
    ("", "%%vjp\nx = torch.randn(3, requires_grad=True)\ny = (x**2, x**3)", ["tuple", "--of y[0]"]),
    ("", "%%vjp --of y\nx = torch.randn(3, requires_grad=True)\ny = (x**2, x**3)",
     ["tuple", "y[0]"]),
    ("", "%%vjp\nx = torch.randn(3, requires_grad=True)\ny = (x**2).sum().item()",
     ["y is a Python float", ".item()"]),
    ("", "%%vjp --wrt net.0.weight\nnet = torch.nn.Sequential(torch.nn.Linear(2, 2))\n"
         "y = net(torch.randn(3, 2))", ["net[0].weight"]),
    ("x = torch.ones(2, 3, requires_grad=True)", "%%vjp --wrt x[0]\ny = x * 2",
     ["x[0] makes a new tensor", "r.derivatives['x'][..., 0, :]"]),
    ("x = torch.ones(2, requires_grad=True)", "%jacobian --nonsense x",
     ["Unknown option --nonsense", "--symbolic"]),
    ("x = torch.ones(2, requires_grad=True)", "%jacobian -p x", ["-p takes a whole number"]),
    ("x = torch.ones(2, requires_grad=True)", "%jacobian", ["Name the output"]),
    ("x = torch.ones(2, requires_grad=True)", "%jacobian x wrt", ["after it"]),
    ("", "%%vjp -p 0\nx = torch.ones(2, requires_grad=True)\ny = x * 2", ["precision", "1 to 17"]),
    ("", "%%vjp --threshold 0\nx = torch.ones(2, requires_grad=True)\ny = x * 2",
     ["threshold", "at least 2"]),
    ("x = torch.ones(2, requires_grad=True)\ny = (x.exp()).sum()\ny.backward()",
     "%jacobian y x", ["graph of y was freed", "retain_graph=True"]),
    ("w = torch.ones(2, requires_grad=True)\ny = (w**2).sum()\n"
     "with torch.no_grad():\n    w.add_(1)", "%jacobian y w",
     ["y can no longer be differentiated", "(w)", "modified in place"]),
]


@pytest.mark.parametrize("setup, cell, words", USAGE_ERRORS,
                         ids=[cell.split("\n")[0] for _, cell, _ in USAGE_ERRORS])
def test_mistakes_get_a_message_that_says_what_to_do(run_ok, usage_error, setup, cell, words):
    if setup:
        run_ok(setup)
    message = usage_error(cell)
    for word in words:
        assert word in message, message


def test_no_tensor_requires_grad_keeps_the_cells_names(ip, usage_error):
    usage_error("%%vjp\nx = torch.ones(3)\ny = x**2")
    assert "x" in ip.user_ns and "y" in ip.user_ns


def test_bad_option_does_not_run_the_cell(ip):
    result = ip.run_cell("%%vjp --nonsense\nran = True")
    assert isinstance(result.error_in_exec, UsageError) and "ran" not in ip.user_ns


def test_output_that_is_the_input_itself_has_derivative_one(run_vjp, assert_tensor):
    r = run_vjp("x = torch.randn(3, requires_grad=True)", line="--of x")
    assert_tensor(r.derivatives["x"], [1.0, 1.0, 1.0])


def test_expression_output_gets_a_name_in_the_hand_written_line(ip, run_vjp):
    r = run_vjp("x = torch.randn(3, requires_grad=True)\ny = x**2\ny.sum()")
    assert "out = y.sum()\nout.backward()" in shown(r)
    torch.testing.assert_close(r.derivatives["x"], 2 * ip.user_ns["x"].detach())


# -- one pipeline for every magic -----------------------------------------------------------------
def test_every_magic_goes_through_the_one_pipeline(ip, run_ok, monkeypatch):
    """%%vjp and %jacobian ask for first derivatives, %hessian for second ones, of the same
    pipeline; the features' flags travel by name."""
    import vjp_magic.magics as magics
    from vjp_magic.core.hessian import HessianResult

    asked = []
    real = magics.pipeline
    monkeypatch.setattr(magics, "pipeline", lambda s, r: asked.append(r) or real(s, r))
    run_ok("x = torch.linspace(0.5, 2, 3, requires_grad=True)")
    run_ok("%%vjp --explain\ny = torch.sin(x)")
    run_ok("%jacobian torch.sin(x) wrt x")
    h = run_ok("%hessian torch.sin(x) wrt x")
    assert [(r.order, r.jacobian) for r in asked] == [(1, False), (1, True), (2, False)]
    assert asked[0].flag("explain") is True and asked[1].flag("explain") is None
    assert isinstance(h, HessianResult) and h.order == 2


# -- the same pipeline from plain Python ------------------------------------------------------

def test_differentiate_in_plain_python_displays_like_the_magic(run_vjp):
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    r = vjp_magic.differentiate(x**2, x)
    assert set(r._repr_mimebundle_()) == {"text/markdown", "text/latex", "text/plain"}
    assert shown(r, "text/plain") == repr(r)
    assert shown(r) == shown(run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
                                     "y = x**2"))
    assert x.grad is None and r.output.grad_fn is None


def test_differentiate_takes_names_and_display_options():
    a, b = torch.ones(2, requires_grad=True), torch.full((2,), 1 / 3, requires_grad=True)
    r = vjp_magic.differentiate(a * b, [a, b], names=["a", "b"], output_name="s",
                                options=vjp_magic.RenderOptions(precision=2), code=True)
    assert list(r.derivatives) == ["a", "b"] and r.output_name == "s"
    assert "0.33" in shown(r) and "0.333" not in shown(r)
    assert "```python" in shown(r)


# -- targets: each part evaluated once, as in a plain cell ----------------------------------------
TARGET_SETUP = """
class Holder:
    reads = 0
    def __init__(self):
        self._store = [None]
    @property
    def prop(self):
        Holder.reads += 1
        return self._store
"""


@pytest.mark.parametrize("cell, check", [
    ("it = iter(range(5))\nd = {}\nd[next(it)] = x * 2", "next(it) == 1"),
    ("it = iter(range(5))\nd = {0: 0}\nd[next(it)] += x * 2", "next(it) == 1 and 0 in d"),
    ("h = Holder()\nh.prop[0] = x * 2", "Holder.reads == 1"),
    ("h = Holder()\nh.prop[0], other = x * 2, 1", "Holder.reads == 1"),
    ("h = Holder()\nh._store[0] = x * 1\nh.prop[0] += x * 2", "Holder.reads == 1"),
    ("it = iter(range(5))\ny = torch.zeros(4)\ny[next(it):next(it)] += x[:1]",
     "next(it) == 2"),
])
def test_targets_are_evaluated_once(ip, run_ok, cell, check):
    run_ok(TARGET_SETUP + "x = torch.ones(3, requires_grad=True)")
    run_vjp_cell = f"%%vjp --wrt x\n{cell}"
    run_ok(run_vjp_cell)
    assert run_ok(check) is True


@pytest.mark.parametrize("cell, name", [
    ("it = iter(range(5))\nd = {}\nd[next(it)] = x * 2", "d[0]"),
    ("it = iter('ab')\nd = {'a': {}}\nd[next(it)][str(1)] = x * 2", "d['a']['1']"),
    ("it = iter(range(5))\nd = {0: 0}\nd[next(it)] += x * 2", "d[0]"),
    ("d = {}\nd[x.sum()] = x * 2", "d[x.sum()]"),
])
def test_a_target_whose_key_calls_something_is_named_by_the_key(run_ok, run_vjp, cell, name):
    run_ok("x = torch.ones(3, requires_grad=True)")
    assert run_vjp(cell).output_name == name


def test_the_cell_leaves_no_hidden_name(ip, run_ok):
    from vjp_magic.core.tagging import is_visible_name

    run_ok("x = torch.ones(3, requires_grad=True)")
    names = set(ip.user_ns)
    run_ok("%%vjp\nd = {}\nd['y'], e = x * 2, 1\nd['y'] += 1")
    assert {n for n in set(ip.user_ns) - names if is_visible_name(n)} == {"d", "e"}
    assert not [n for n in ip.user_ns if "vjp" in n]


def test_an_error_in_a_target_points_at_the_users_line(ip, capsys):
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\nd = {}\n"
                         "d[undefined_key] = x * 2\ny = x")
    assert isinstance(result.error_in_exec, NameError)
    shown_text = capsys.readouterr().out
    assert "----> 3 d[undefined_key] = x * 2" in shown_text and "__vjp" not in shown_text
    assert "__vjp_cell__" not in ip.user_ns and "y" not in ip.user_ns


@pytest.mark.parametrize("line", ["--of y.sum() + 1", '--of "y.sum() + 1"',
                                  "--of y.sum() + 1 --wrt x", "--of 'y.sum() + 1' --wrt x"])
def test_of_takes_an_expression_with_spaces(run_vjp, assert_tensor, line):
    r = run_vjp("x = torch.arange(3., requires_grad=True)\ny = x**2", line=line)
    assert r.output_name == "y.sum() + 1"
    assert_tensor(r.derivatives["x"], [0.0, 2.0, 4.0])


def test_a_sparse_output_densified_with_of(run_vjp, assert_tensor):
    r = run_vjp("x = torch.ones(3, requires_grad=True)\ny = x.to_sparse() * 2",
                line="--of y.to_dense()")
    assert_tensor(r.derivatives["x"], [2.0, 2.0, 2.0])
    assert "text/markdown" in r._repr_mimebundle_()


def test_sparse_output_in_plain_python_says_what_to_do():
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(vjp_magic.core.errors.VJPUsageError, match="to_dense"):
        vjp_magic.differentiate(x.to_sparse() * 2, x)


def test_grad_and_data_targets_are_not_outputs(run_vjp):
    r = run_vjp("x = torch.ones(3, requires_grad=True)\ny = x * 2\nx.grad = None\n"
                "w = torch.ones(3)\nw.data = torch.zeros(3)")
    assert r.output_name == "y"


class _Spy:
    """Logs every item and attribute access, in order (for the cell rewritten to record its
    targets: it must do exactly what the plain cell does)."""

    def __init__(self, log, name):
        vars(self).update(_log=log, _name=name, _items={}, _attrs={})

    def __getitem__(self, key):
        self._log.append(("get", self._name, repr(key)))
        return self._items.get(repr(key), _Spy(self._log, f"{self._name}[{key!r}]"))

    def __setitem__(self, key, value):
        self._log.append(("set", self._name, repr(key)))
        self._items[repr(key)] = value

    def __getattr__(self, name):
        self._log.append(("getattr", self._name, name))
        return self._attrs.get(name) or _Spy(self._log, f"{self._name}.{name}")

    def __setattr__(self, name, value):
        self._log.append(("setattr", self._name, name))
        self._attrs[name] = value

    def __iadd__(self, other):
        self._log.append(("iadd", self._name))
        return self

    def __enter__(self):
        self._log.append(("enter", self._name))
        return self

    def __exit__(self, *exc):
        self._log.append(("exit", self._name))


@pytest.mark.parametrize("cell", [
    "s[f(1)] = f(2)", "s.a[f(1)].b = f(2)", "s[f(1)] = t[f(2)] = f(3)",
    "s[f(1)], t.a = f(2), f(3)", "s[f(1)], (t[f(2)], u) = f(3), (f(4), f(5))",
    "s[f(1)] += f(2)", "s.a.b += f(2)", "s[f(1):f(2)] += f(3)", "s[f(1), f(2):f(3)] += f(4)",
    "i = 0\ns[i], i = f(1), f(2)", "a, *s[f(1)] = [f(2), f(3), f(4)]",
    "for s[f(1)] in [f(2), f(3)]:\n    f(4)", "s[f(1)]: int = f(2)",
    "if f(0):\n    s[f(1)] = f(2)\nelse:\n    t[f(3)] = 1",
    "while True:\n    s[f(1)] = f(2)\n    break",
    "try:\n    s[f(1)] = f(2)\nexcept KeyError:\n    pass",
    "def g():\n    s[f(1)] = f(2)\ng()", "s[(k := f(1))] = f(2)\nt[k] = 1",
    "with t as s[f(1)], t as t.a, t as u:\n    f(2)",
])
def test_the_rewritten_cell_does_what_the_cell_does(cell):
    import ast

    from vjp_magic.core.cell import CAPTURE_NAME, capture_targets

    def run(tree):
        log = []
        ns = {"s": _Spy(log, "s"), "t": _Spy(log, "t"), "f": lambda n: log.append(n) or n,
              CAPTURE_NAME: {}}
        exec(compile(tree, "<cell>", "exec"), ns)
        return log, sorted(ns)

    assert run(capture_targets(ast.parse(cell))) == run(ast.parse(cell))


# -- the help where people look: public docstrings carry the reference, examples run ----------

@pytest.mark.parametrize("function", [vjp_magic.differentiate, vjp_magic.check,
                                      vjp_magic.assert_correct, vjp_magic.hessian,
                                      vjp_magic.dependency],
                         ids=lambda f: f.__name__)
def test_public_docstrings_carry_the_reference_and_their_examples_run(function):
    import doctest

    doc = function.__doc__
    assert "Args:" in doc and "Returns:" in doc and ">>> " in doc and "see docs/api.md" not in doc
    tests = doctest.DocTestFinder().find(function, globs={"torch": torch, "vjp_magic": vjp_magic})
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    had_underscore = hasattr(builtins, "_")
    try:
        for test in tests:
            runner.run(test)
    finally:  # doctest shows values with sys.__displayhook__, which sets builtins._, and
        if not had_underscore:  # IPython stops updating _ while builtins has one
            builtins.__dict__.pop("_", None)
    assert runner.failures == 0 and runner.tries > 0


def test_magic_help_says_what_comes_back(ip):
    for kind, name in (("cell", "vjp"), ("line", "jacobian"), ("line", "hessian")):
        doc = ip.magics_manager.magics[kind][name].__doc__
        assert "Returns" in doc and "::" in doc, name  # what comes back, and an example
