"""Mistakes on a result (a name, an index, a layout): a usage error that says what to do, and
the KeyError / IndexError that code catching the plain one expects; names as the display
spells them (``net[0].weight``) are taken everywhere a name is."""
import pytest
import torch
from torch import nn

import vjp_magic
from vjp_magic.core.errors import VJPUsageError


@pytest.fixture
def net_result():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    data = torch.randn(8, 4)
    return vjp_magic.differentiate(net(data).sum(1), {"net": net}, seed=0), net, data


def test_every_name_the_display_shows_is_taken(net_result):
    r, net, data = net_result
    reference = torch.autograd.functional.jacobian(
        lambda w: torch.func.functional_call(net, {"0.weight": w}, (data,)).sum(1),
        net[0].weight.detach())
    torch.testing.assert_close(r.jacobian("net[0].weight"), reference)
    torch.testing.assert_close(r.derivatives["net[0].weight"], r.derivatives["net.0.weight"])
    assert r.point_axes["net[2].bias"] == r.point_axes["net.2.bias"]
    assert len(r.gradients["net[2].weight"]) == len(r.gradients["net.2.weight"])
    assert set(r.derivatives) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}


@pytest.mark.parametrize("call", [lambda r: r.jacobian("net[0].wieght"),
                                  lambda r: r.derivatives["zz"],
                                  lambda r: r.dependency("w")])
def test_an_unknown_name_says_which_names_are_taken(net_result, call):
    r, _, _ = net_result
    with pytest.raises(KeyError) as caught:
        call(r)
    assert isinstance(caught.value, VJPUsageError)
    message = str(caught.value)
    assert "net.0.weight" in message and "net[0].weight for net.0.weight" in message
    assert not message.startswith("'")  # not quoted as a KeyError's key


def test_a_tensor_for_a_name_is_refused_by_name():
    x = torch.randn(5, requires_grad=True)
    r = vjp_magic.differentiate(x.sin(), x, seed=0)
    with pytest.raises(VJPUsageError, match="a str .*not a Tensor"):
        r.jacobian(x)


@pytest.mark.parametrize("rows, cols, said", [
    ([0, 5], [0], "0 to 4: 5 is not"), ([0], [-1], "-1 is not"),
    (torch.tensor([0.5]), [0], "list of ints"), ("ab", [0], "list of ints")])
def test_a_block_past_the_jacobian_is_refused_not_read_as_zero(rows, cols, said):
    x = torch.randn(5, requires_grad=True)
    r = vjp_magic.differentiate(x.sin(), x, seed=0)
    with pytest.raises(VJPUsageError, match=said):
        r.jacobian_block("x", rows, cols)


def test_a_block_from_lists_equals_the_jacobians_entries():
    x = torch.randn(5, requires_grad=True)
    r = vjp_magic.differentiate(x.sin(), x, seed=0)
    full = torch.autograd.functional.jacobian(torch.sin, x.detach())
    torch.testing.assert_close(r.jacobian_block("x", [1, 4], range(5)), full[[1, 4]])


def test_a_gradient_index_past_the_end_says_the_range():
    x = torch.randn(2, 3, requires_grad=True)
    r = vjp_magic.differentiate(x.sum(0), x, seed=0)
    count = len(r.gradients["x"])
    with pytest.raises(IndexError) as caught:
        r.gradients["x"][count]
    assert isinstance(caught.value, VJPUsageError) and f"0 to {count - 1}" in str(caught.value)


def test_a_usage_error_shows_as_one_line_without_a_traceback(ip, capsys):
    x = torch.randn(5, requires_grad=True)
    ip.user_ns["r"] = vjp_magic.differentiate(x.sin(), x, seed=0)
    lines = VJPUsageError("say what to do")._render_traceback_()
    assert lines == ["VJPUsageError: say what to do"]
    capsys.readouterr()
    done = ip.run_cell("r.jacobian('z')")
    shown = capsys.readouterr()
    assert isinstance(done.error_in_exec, KeyError)
    assert "UnknownName: No input named 'z'; inputs are x." in shown.out + shown.err
    assert "result.py" not in shown.out + shown.err
