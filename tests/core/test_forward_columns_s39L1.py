"""Columns read exactly by forward mode (grouptest.exact_columns) answer for several columns
at once: the rescaled tangents once broadcast over the wrong axis, every column came back
unknown and was read again one output index at a time (59 s for a leaked ghost group)."""
import pytest
import torch

from vjp_magic.core import grouptest


def _jacobian_columns(f, x, columns):
    j = torch.autograd.functional.jacobian(f, x)  # (out..., x...)
    j = j.reshape(x.shape[0], -1, x.shape[0], x[0].numel()) if x.dim() > 1 \
        else j.reshape(x.shape[0], 1, x.shape[0], 1)
    return (j != 0).any(3).any(1)[:, columns]


@pytest.mark.parametrize("shape", [(24,), (24, 3)])
def test_forward_answers_read_several_columns(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def f(x):  # groups of 4 centred, and y[17] also reads x[2]
        c = x.reshape(6, 4, -1)
        c = (c - c.mean(1, keepdim=True)).reshape(x.shape)
        return torch.tanh(c) + torch.nn.functional.one_hot(torch.tensor(17), 24).to(x).reshape(
            (24,) + (1,) * (x.dim() - 1)) * x[2]
    y = f(x)
    prober = grouptest.SetProber(y, x, 0, 0, 2**28, seed=3)
    columns = torch.tensor([0, 2, 5, 23])
    hit, unknown = grouptest._forward_answers(prober, columns)
    assert not bool(unknown.any())
    assert torch.equal(hit, _jacobian_columns(f, x.detach(), columns))


def test_exact_columns_make_no_reverse_pass():
    torch.manual_seed(0)
    x = torch.randn(32, 2, requires_grad=True)
    y = torch.tanh(x) * x.sum()
    prober = grouptest.SetProber(y, x, 0, 0, 2**28, seed=1)
    columns = torch.arange(0, 32, 3)
    assert bool(grouptest.exact_columns(prober, columns).all())
    assert prober.count == 0  # no halving, no row probes: forward mode answered them all
