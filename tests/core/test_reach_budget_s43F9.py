"""What a custom backward reaches through an nn.Module (its other attributes, its children's),
and a search cut short by a budget: said (s43 F9).

Expected values: a plain run (the tensors and generators as the user's code left them) and
the counts the user's code makes (how many items, objects, functions)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vjp_magic
from vjp_magic.core import reach


class _Mod(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.stat = torch.zeros(())
        self.log = {"t": torch.zeros(())}
        self.gen = torch.Generator().manual_seed(0)
        self.rng = np.random.default_rng(0)


def test_a_modules_other_attributes_and_its_childrens_are_reached():
    m = _Mod()
    m.lin.extra = torch.ones(())  # a plain tensor on a library module, not a buffer
    found = reach.reached([m])
    tensors = reach.tensors_of(found)
    for t in (m.stat, m.log["t"], m.lin.extra, m.lin.weight, m.lin.bias):
        assert any(t is f for f in tensors)
    assert any(m.gen is f for f in found) and any(m.rng is f for f in found)
    assert not any(isinstance(v, torch.nn.Parameter) for v in found)  # tensors_of's


def test_a_big_model_within_the_budget_is_searched_without_a_cut():
    short: list = []
    model = torch.nn.Sequential(*(torch.nn.Linear(2, 2) for _ in range(600)))
    reach.reached([model], short=short)
    assert short == []  # (its hook tables are empty: nothing spent on them)


@pytest.mark.parametrize("values, said", [
    ([[torch.zeros(()) for _ in range(1000)]], "a list of 1,000 items"),
    ([{i: torch.zeros(()) for i in range(600)}], "a dict of 600 items"),
    ([[[object.__new__(type("O", (), {})) for _ in range(300)] for _ in range(8)]],
     f"more than {reach.OPEN_MOST:,} containers and objects"),
])
def test_a_search_cut_short_says_what_was_too_big(values, said):
    short: list = []
    reach.reached(values, short=short)
    assert short == [said]


def test_numbers_and_strings_spend_no_item_budget():
    short: list = []
    reach.reached([[float(i) for i in range(20_000)], {str(i): i for i in range(20_000)}],
                  short=short)
    assert short == []


def test_more_functions_than_read_most_is_said():
    ns: dict = {}
    n = reach.READ_MOST + 5
    exec("\n".join(f"def h{i}(): return h{i + 1}()" for i in range(n)) + f"\ndef h{n}(): pass",
         ns)
    short: list = []
    reach.read_by(ns["h0"], short)
    assert short == [f"more than {reach.READ_MOST} of your functions"]


def test_a_backward_writing_a_child_modules_plain_tensor_through_ctx_is_put_back_and_refused():
    ns: dict = {"torch": torch, "M": _Mod()}
    exec("class F(torch.autograd.Function):\n"
         "    @staticmethod\n"
         "    def forward(ctx, x): ctx.m = M; return x * 2\n"
         "    @staticmethod\n"
         "    def backward(ctx, g): ctx.m.lin.extra.add_(1); return g * 2\n", ns)
    ns["M"].lin.extra = torch.zeros(())
    x = torch.linspace(1., 2., 4, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="F's backward writes"):
        vjp_magic.differentiate(ns["F"].apply(x) ** 2, x)
    assert ns["M"].lin.extra.item() == 0 and ns["M"].lin.extra._version == 0
