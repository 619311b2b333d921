"""G27-4's class: an observed pattern must never cost more passes than one backward per output
entry. Where the small path's m passes computed every derivative and the graph's rules do
not prove the pattern, the display shows those m passes, with one sentence why no colouring
is taught (not "k backward passes … (after m to find the pattern)"). Other ops than the
review's: grid_sample in other modes, max_unpool1d / 3d, an opaque autograd.Function.
Values: torch.autograd.functional.jacobian."""
import pytest
import torch
import torch.nn.functional as F
from sparse_cells_s31 import bundle

import vjp_magic
from custom_functions import Identity  # no rule sees through it: observed

_THETA = torch.tensor([[[1.1, -0.2, 0.1], [0.15, 0.9, -0.05]]], dtype=torch.float64)


OPS = {
    "grid_sample nearest": lambda t: F.grid_sample(
        (t ** 2).reshape(1, 1, 20, 20), F.affine_grid(_THETA, (1, 1, 20, 20), False),
        mode="nearest", align_corners=False).reshape(-1),
    "grid_sample bilinear, border": lambda t: F.grid_sample(
        (t ** 2).reshape(1, 1, 20, 20), F.affine_grid(_THETA, (1, 1, 20, 20), True),
        padding_mode="border", align_corners=True).reshape(-1),
    "max_unpool1d": lambda t: F.max_unpool1d(*F.max_pool1d(
        (t * t.roll(1))[None, None], 2, return_indices=True), 2)[0, 0],
    "max_unpool3d": lambda t: F.max_unpool3d(*F.max_pool3d(
        (t * t.roll(1)).reshape(1, 1, 4, 10, 10), 2, return_indices=True), 2).reshape(-1),
    "opaque second difference": lambda t: torch.diff(
        Identity.apply(t * t.roll(1)), 2, prepend=t[:1] * 0, append=t[-1:] * 0),
}


@pytest.mark.parametrize("name", list(OPS))
def test_an_observed_pattern_never_costs_more_than_the_exact_path(name):
    f = OPS[name]
    x = torch.randn(400, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3)).requires_grad_()
    y = f(x)
    r = vjp_magic.differentiate(y, x, names=["x"], output_name="y", seed=0)
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(),
                               torch.autograd.functional.jacobian(f, x.detach()).reshape(
                                   y.numel(), -1), rtol=1e-12, atol=1e-12)
    sparse = r.inputs["x"].sparse
    text = " ".join(bundle(r)["text/plain"].split())
    if sparse is not None:
        assert sparse.pattern_passes + sparse.count < y.numel()
    else:
        assert "to find the pattern" not in text
        assert any("one backward per output entry" in note for note in r.notes), r.notes


UNPROVED = {  # no rule proves them (an opaque op): observed by grouped probes, or said why not
    "opaque bilinear upsampling": lambda t: F.interpolate(
        Identity.apply(t * t.roll(1)).reshape(1, 1, 20, 20), scale_factor=2,
        mode="bilinear").reshape(-1),
    "opaque nearest upsampling then a box filter": lambda t: F.avg_pool1d(F.interpolate(
        Identity.apply(t * t.roll(1) - t * t.roll(-1))[None, None], scale_factor=3,
        mode="nearest"), 3, 1)[0, 0],
}


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("name", list(UNPROVED))
def test_a_pattern_not_found_says_why_in_one_sentence(name, seed):
    """G27-2's class: a few nonzeros a row, shown one backward per entry with no sentence."""
    f = UNPROVED[name]
    x = torch.linspace(-1, 1, 400, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(f(x), x, names=["x"], output_name="y", seed=seed)
    if r.inputs["x"].sparse is None:
        assert any("grouped probes did not find it within" in note for note in r.notes), r.notes
        assert not any("reads too many entries" in note for note in r.notes)


def test_a_refusal_by_the_budget_says_why_there_is_no_sparse_jacobian():
    """G27-5's class (issue 20, bad input): the dense size alone is not the whole story."""
    f = UNPROVED["opaque bilinear upsampling"]
    x = torch.linspace(-1, 1, 400, dtype=torch.float64, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError) as refused:
        vjp_magic.differentiate(f(x), x, names=["x"], seed=0, memory_budget=1_000_000)
    text = " ".join(str(refused.value).split())
    assert "5.12 MB" in text and "As a sparse Jacobian: with respect to x, none:" in text
    assert "grouped probes did not find it within" in text
