"""Prose that agrees with the rest of the display (s32, G7's class): how a table's point
column counts, and --explain never denying zeros the display states."""
from __future__ import annotations

import pytest


def _text(result) -> str:
    return " ".join(result._repr_mimebundle_()["text/plain"].split())


def test_the_at_column_says_how_it_counts(run_vjp):
    r = run_vjp("img = ((torch.arange(32.) - 12.2) / 10).reshape(2, 4, 4).requires_grad_()\n"
                "out = torch.sigmoid(img)")
    assert "the point i where the largest is (counted from 1, from 0 in the code)" in _text(r)


@pytest.mark.parametrize("body", [
    "y = torch.cumsum(x, 0)",
    "y = torch.stack([x[0], x[0] + x[1], x[2] * 2])",
    "y = x.flip(0) * x",
])
def test_explain_never_denies_zeros(run_vjp, body):
    r = run_vjp(f"x = torch.tensor([0.5, -1., 2.], requires_grad=True)\n{body}", "--explain")
    assert "Nothing is known to be zero" not in _text(r)


@pytest.mark.parametrize("body", [
    "y = torch.stack([x[0]**2, torch.sin(x[1]), torch.exp(x[2])])",
    "y = torch.cat([x[:1].exp(), x[1:] * 3])",
])
def test_points_the_graph_does_not_prove_are_not_one_function(run_vjp, body):
    r = run_vjp(f"x = torch.tensor([0.5, -1., 2.], requires_grad=True)\n{body}")
    if r.inputs["x"].evidence != "proved":
        assert "one function f" not in _text(r) and "one by one" in _text(r)


def test_a_proved_elementwise_map_keeps_the_tutorials_words(run_vjp):
    r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2")
    assert "applies one function f at 5 points" in _text(r)


@pytest.mark.parametrize("dtype, big", [("float32", "1e8"), ("float64", "1e20"),
                                        ("float32", "-4e9")])
def test_a_points_own_derivative_is_never_0_beside_a_larger_one(run_vjp, dtype, big):
    r = run_vjp(f"x = torch.tensor([{big}, -3.0, 0.5], dtype=torch.{dtype}, "
                "requires_grad=True)\ny = x**2")
    shown = r._repr_mimebundle_()["text/plain"]
    row = next(t for t in shown.splitlines() if t.startswith("f'(x^(i))"))
    entries = row[row.index("[") + 1:row.index("]")].split()
    assert entries[1] != "0" and entries[2] != "0", row


def test_cancellation_noise_beside_a_large_entry_of_one_gradient_still_reads_0(run_vjp):
    r = run_vjp("x = torch.tensor([[1e4, 1.0]], requires_grad=True)\n"
                "y = ((x[:, 0] + x[:, 1]) - x[:, 0]) * x[:, 0]")
    assert r.inputs["x"].per_point_numel() == 2  # a gradient per point: the floor stays


@pytest.mark.parametrize("body", ["y = x[1:] - x[:-1]", "y = torch.softmax(x, 0)",
                                  "y = torch.cumsum(x, 0)"])
def test_explain_never_says_every_row_needs_its_own_backward(run_vjp, body):
    r = run_vjp(f"x = torch.tensor([0.5, -1., 2., 1.5, 3.], requires_grad=True)\n{body}",
                "--explain")
    assert "needs its own backward" not in _text(r)


def test_a_small_rows_gradient_never_reads_0_beside_a_large_row(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "y = torch.stack([(x**2).sum() * 1e6, x.mean(), (x * 1e-3).sum()])")
    shown = r._repr_mimebundle_()["text/plain"]
    for label in ("y[1]", "y[2]"):
        row = next(t for t in shown.splitlines() if label in t and "[" in t)
        entries = row[row.rindex("[") + 1:row.rindex("]")].split()
        assert "0" not in entries, row


def test_a_tiny_entry_within_one_row_reads_approximately_0_never_0(run_vjp):
    """1e-9 beside 1e8 in one gradient is below float32's resolution of that row: ≈0 (it is a
    true value here), never the 0 that claims it is none."""
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "y = torch.stack([x[0] * 1e8 + x[1] * 1e-9, x.sum()])")
    shown = r._repr_mimebundle_()["text/plain"]
    row = next(t for t in shown.splitlines() if "y[0] [" in t)
    assert row[row.rindex("[") + 1:row.rindex("]")].split()[1:] == ["≈0", "0"], row
