"""The first vectorised batch of each batch size is checked too (G14's s34 finding 6): a
batching error that shows only at the last, smaller chunk's size is caught there, where the
1st, 2nd, 4th, 8th … batches alone missed the 6th. Expected values from plain
torch.autograd.grad passes."""
import torch

from vjp_magic.core import checked_batches
from vjp_magic.core.derivatives import Batching


def test_a_batching_error_only_at_the_last_chunks_size_is_caught(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.tanh(x) * x.sum()
    vectors = torch.randn((23,) + tuple(y.shape), dtype=y.dtype, generator=g)
    real = checked_batches.vjp_batch

    def wrong_at_three(output, inputs, grad_outputs, batched=True, log=None):
        grads = real(output, inputs, grad_outputs, batched=batched, log=log)
        if log is not None and log.vectorised and grad_outputs.shape[0] == 3:
            return [grad + 1.0 for grad in grads]  # a rule wrong at this size only
        return grads

    monkeypatch.setattr(checked_batches, "vjp_batch", wrong_at_three)
    log = Batching()
    for chunk in vectors.split(4):  # 5 batches of 4, then the 6th of 3
        (got,) = checked_batches.checked_batch(y, [x], chunk, log=log)
        expected = torch.stack([torch.autograd.grad(y, x, v, retain_graph=True)[0]
                                for v in chunk])
        torch.testing.assert_close(got, expected)


def test_a_new_set_is_checked_from_its_first_batch():
    log = Batching()
    log.vectorised_batches, log.checked_sizes = 5, {4}
    log.new_set()
    assert (log.vectorised_batches, log.checked_sizes) == (0, set())
