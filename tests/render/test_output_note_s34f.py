"""The note on an infinite output (G14's s34 finding 5): an infinite constant (an attention
mask) is no overflow, %hessian's derivatives are f'', and a scalar output has no "1 of its
entry"."""
import torch

import vjp_magic

INF = float("inf")


def _text(r) -> str:
    return " ".join(r._repr_mimebundle_()["text/plain"].split())


def test_a_mask_of_minus_infinity_is_not_said_to_have_overflowed():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    r = vjp_magic.differentiate(x + torch.tensor([0.0, -INF, 0.0, -INF]), x)
    assert r.derivatives["x"].tolist() == [1.0, 1.0, 1.0, 1.0]  # d(x + c)/dx = 1
    text = _text(r)
    assert "overflowed" not in text and "too large to hold" not in text, text
    assert "infinite at 2 of its 4 entries" in text
    assert "an infinite constant such as a mask" in text


def test_the_hessians_note_names_the_second_derivatives():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    r = vjp_magic.hessian(x**3 + torch.tensor([INF, 0.0]), x)
    text = _text(r)
    assert "the derivatives shown are f'' all the same" in text, text
    assert "shown are f' all" not in text


def test_a_scalar_output_is_infinite_without_a_count():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    r = vjp_magic.differentiate((x**3).sum() + INF, x)
    assert r.derivatives["x"].tolist() == [3.0, 12.0]  # 3x²
    text = _text(r)
    assert "y itself is infinite, with finite derivatives" in text, text
    assert "of its entry" not in text
