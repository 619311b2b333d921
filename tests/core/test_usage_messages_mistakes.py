"""User mistakes in the core's words: the message names the user's own tensors, says the
cause and what to do, and its advice is code that runs."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core.errors import VJPUsageError, operand
from vjp_magic.core.tagging import no_output_message
from vjp_magic.core.validation import check_input, check_output, named_inputs


# -- the integer message names what the cell reads, never an earlier cell's leaf ----------------
@pytest.mark.parametrize("assigned, used, leaf", [
    (["x", "y"], ["x"], "x"),  # x = torch.arange(5); y = x**2
    (["n", "b", "y"], ["n", "b"], "n"),  # n = ...; b = n * 2; y = b**2
])
def test_the_integer_message_names_the_cells_own_integer_tensor(assigned, used, leaf):
    keep = torch.ones(3, requires_grad=True)  # an earlier cell's leaf, never read here
    values = {"x": torch.arange(5), "n": torch.arange(4), "b": torch.arange(4) * 2}
    ns = {"keep": keep, **{k: v for k, v in values.items() if k in assigned}}
    ns["y"] = ns[assigned[-2]] ** 2
    message = no_output_message(ns, assigned, used)
    assert "keep" not in message and "integer tensors have no derivatives" in message
    assert f"create {leaf} as floats" in message
    advice = message.split("e.g. ", 1)[1].split(" after", 1)[0]
    exec(advice, {}, ns)  # noqa: S102 - the advice runs, and gives a float input with grad
    assert ns[leaf].is_floating_point() and ns[leaf].requires_grad


def test_the_integer_message_names_a_module_the_cell_calls():
    net = torch.nn.Linear(4, 2)
    ns = {"net": net, "xb": torch.randn(3, 4), "x": torch.ones(2, requires_grad=True)}
    ns["loss"] = net(ns["xb"]).argmax()
    message = no_output_message(ns, ["loss"], ["net", "xb"])
    assert "computed from net" in message and "computed from x" not in message


@pytest.mark.parametrize("make, words", [
    (lambda: torch.nn.ReLU(), ["act (ReLU) has no parameters"]),
    (lambda: torch.nn.Tanh(), ["act (Tanh) has no parameters"]),
    (lambda: torch.nn.Linear(4, 2).requires_grad_(False), ["act's parameters have "
                                                           "requires_grad=False",
                                                           "act.requires_grad_()"]),
])
def test_a_module_without_trainable_parameters_is_named_with_the_cause(make, words):
    act = make()
    ns = {"act": act, "xb": torch.randn(3, 4)}
    ns["loss"] = act(ns["xb"]).sum()
    message = no_output_message(ns, ["loss"], ["act", "xb"])
    for word in words:
        assert word in message, message
    assert "xb.requires_grad_()" in message


def test_a_trainable_module_beside_a_frozen_one_keeps_the_no_grad_hint():
    net, frozen = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2).requires_grad_(False)
    ns = {"net": net, "frozen": frozen, "xb": torch.randn(3, 4)}
    with torch.no_grad():
        ns["loss"] = frozen(net(ns["xb"])).sum()
    message = no_output_message(ns, ["loss"], ["frozen", "net", "xb"])
    assert "torch.no_grad()" in message and "frozen" not in message


@pytest.mark.parametrize("module, words", [
    (torch.nn.ReLU(), ["has no parameters", "requires_grad=True"]),
    (torch.nn.Linear(3, 2).requires_grad_(False), ["frozen", "act.requires_grad_()"]),
])
def test_wrt_a_module_without_trainable_parameters(module, words):
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(VJPUsageError) as error:
        vjp_magic.differentiate(module(x).sum() + x.sum(), module, names="act", seed=0)
    for word in words:
        assert word in str(error.value), str(error.value)


# -- validation: names, .grad, complex advice -----------------------------------------------------
@pytest.mark.parametrize("inputs, names", [
    (torch.randn(3, requires_grad=True), ["a", "b"]),
    (torch.randn(3, requires_grad=True), ("a", "b", "c")),
    (torch.nn.Linear(2, 2), ["a", "b"]),
    ({"a": torch.randn(3, requires_grad=True)}, ["b"]),
    ([torch.randn(3, requires_grad=True)] * 2, ["a"]),
])
def test_names_that_do_not_match_the_inputs_are_refused(inputs, names):
    with pytest.raises(VJPUsageError):
        named_inputs(inputs, names)


def test_matching_names_still_name_the_inputs():
    x = torch.randn(3, requires_grad=True)
    assert list(named_inputs(x, ["a"])) == ["a"] and list(named_inputs(x, "a")) == ["a"]
    assert list(named_inputs(x, None)) == ["x"]


def test_an_empty_grad_says_use_the_tensor():
    message = str(pytest.raises(VJPUsageError, check_input, None, "w.grad").value)
    assert "w.grad is None" in message and "--wrt w" in message and "NoneType" not in message


def test_a_filled_grad_says_use_the_tensor_not_requires_grad():
    grad = torch.ones(3)  # what a backward leaves in w.grad
    message = str(pytest.raises(VJPUsageError, check_input, grad, "w.grad").value)
    assert "--wrt w" in message and "requires_grad_()" not in message


@pytest.mark.parametrize("name, spelled", [
    ("c", "c"), ("c**2", "(c**2)"), ("-c", "(-c)"), ("c * 2", "(c * 2)"), ("c[0]", "c[0]"),
    ("f(c)", "f(c)"), ("c.conj()", "c.conj()"), ("a if t else b", "(a if t else b)"),
])
def test_operand_parenthesises_what_needs_it(name, spelled):
    assert operand(name) == spelled
    compile(f"{operand(name)}.real", "<advice>", "eval")  # valid Python


@pytest.mark.parametrize("source", ["c**2", "c * 2", "-c", "c + c"])
def test_the_complex_advice_runs(source):
    c = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    value = eval(source, {"c": c})  # noqa: S307 - the test's own expression
    message = str(pytest.raises(VJPUsageError, check_output, value, source).value)
    advice = message.rsplit("separately: ", 1)[1].rstrip(".")
    parts = eval(f"({advice})", {"c": c})  # noqa: S307 - the advice, run
    torch.testing.assert_close(parts[0], value.real)
    torch.testing.assert_close(parts[1], value.imag)


# -- dependency: empty, 0-d, out-of-range and meta tensors ------------------------------------
@pytest.mark.parametrize("make, kw, words", [
    (lambda x: (x.sin()[:0], x), {}, ["output is empty", "at least one entry"]),
    (lambda x: (x.sin(), x[:0]), {}, ["input is empty", "at least one entry"]),
    (lambda x: (x.reshape(5, 10).sin()[:, :0], x), {}, ["output is empty"]),
    (lambda x: (x.sum(), x), {}, ["output (0-d) is a scalar", "vjp_magic.differentiate"]),
    (lambda x: (x[0].sin(), x[0]), {}, ["is a scalar"]),
    (lambda x: (x.sin(), x), {"in_axis": 1}, ["No axis 1 in the input", "0 (or -1)"]),
    (lambda x: (x.reshape(5, 10).sin(), x), {"out_axis": -3}, ["0 to 1 (or -2 to -1)"]),
])
def test_dependency_mistakes_say_what_to_give(make, kw, words):
    x = torch.randn(50, requires_grad=True)
    with pytest.raises(VJPUsageError) as error:
        vjp_magic.dependency(*make(x), **kw)
    for word in words:
        assert word in str(error.value), str(error.value)
    assert "axises" not in str(error.value) and x.grad is None


@pytest.mark.parametrize("call", [vjp_magic.differentiate, vjp_magic.dependency,
                                  vjp_magic.sparse_jacobian])
def test_meta_tensors_are_a_usage_error(call):
    x = torch.randn(3, requires_grad=True, device="meta")
    with pytest.raises(VJPUsageError, match="meta tensor"):
        call(x**2, x)


@pytest.mark.parametrize("value, name, words", [
    (None, "x.grad", ["x.grad is None", "create_graph=True"]),
    (None, "nothing", ["nothing is None, not a tensor"]),
])
def test_a_none_output_says_none_not_nonetype(value, name, words):
    message = str(pytest.raises(VJPUsageError, check_output, value, name).value)
    for word in words:
        assert word in message, message
    assert "NoneType" not in message


def test_a_none_input_says_none_not_nonetype():
    message = str(pytest.raises(VJPUsageError, check_input, None, "w").value)
    assert "Input w is None" in message and "NoneType" not in message


@pytest.mark.parametrize("names", [3, [1], ["a", None]])
def test_names_that_are_not_strings_are_refused(names):
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(VJPUsageError, match="names is a str or a list of str"):
        vjp_magic.differentiate(x.sin(), [x, x * 1] if isinstance(names, list) and
                                len(names) == 2 else x, names=names, seed=0)


def test_names_from_any_iterable_of_strings():
    x, w = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    r = vjp_magic.differentiate(x.sin() * w, [x, w], names=iter(["a", "b"]), seed=0)
    assert list(r.derivatives) == ["a", "b"]


@pytest.mark.parametrize("make, role", [
    (lambda x: (x.sin().long(), x), "output"), (lambda x: (x.sin(), torch.arange(5)), "input"),
    (lambda x: (x.sin() > 0, x), "output"),
])
def test_dependency_of_integer_tensors_says_floats(make, role):
    x = torch.randn(5, requires_grad=True)
    with pytest.raises(VJPUsageError, match=f"The {role} has dtype .*as floats"):
        vjp_magic.dependency(*make(x))


@pytest.mark.parametrize("name", [3, "", b"y"])  # (None: the default, y or out)
def test_a_wrong_output_name_says_it_is_a_str(name):
    x = torch.randn(4, requires_grad=True)
    for call, y in ((vjp_magic.differentiate, x.sin()), (vjp_magic.hessian, (x**3).sum())):
        with pytest.raises(VJPUsageError, match="output_name is the output's name, a str"):
            call(y, x, output_name=name, seed=0)
