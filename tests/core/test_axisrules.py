"""The table of axis rules (core/axisrules/): every node name once, and each one a node this
PyTorch can put on a graph (so no rule waits for a name that never comes)."""
from __future__ import annotations

import re

import pytest
import torch

from vjp_magic.core import axisrules
from vjp_magic.core.axisrules import ELEMENTWISE_NAMES, ENTRIES, RULES, table


def test_every_node_name_is_listed_once():
    names = [name for family, _ in ENTRIES for name in family]
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert repeated == [] and len(RULES) == len(names)
    assert len(set(ELEMENTWISE_NAMES)) == len(ELEMENTWISE_NAMES)
    with pytest.raises(ValueError, match="'Tanh' is listed twice"):
        table([(["Tanh"], axisrules.elementwise.elementwise),
               (["Sin", "Tanh"], axisrules.elementwise.elementwise)])


def _node_names() -> set[str]:
    """The generated autograd node classes of this PyTorch, without ``Backward<n>``."""
    return {re.sub(r"Backward\d*$", "", name) for name in dir(torch._C._functions)
            if re.search(r"Backward\d*$", name)}


def test_every_key_names_a_node_of_this_pytorch():
    nodes = _node_names()
    if len(nodes) < 100:  # this PyTorch does not list its nodes there: nothing to check
        pytest.skip("torch._C._functions lists no generated autograd nodes")
    assert sorted(name for name in RULES if name not in nodes) == []


@pytest.mark.parametrize("op, name", [(torch.special.i0e, "SpecialI0E"),
                                      (torch.special.i1e, "SpecialI1E"),
                                      (torch.tanh, "Tanh"),
                                      (lambda t: t.reshape(3, 2), "View")])
def test_node_names_are_spelled_as_torch_spells_them(op, name):
    x = torch.randn(2, 3, requires_grad=True)
    node = op(x).grad_fn
    assert axisrules.base_name(node) == name and axisrules.rule_for(node) is not None
