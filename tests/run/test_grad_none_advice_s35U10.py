"""x.grad.zero_() before any backward gets a why and the line that works (s35 U10)."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.run.mistakes import creation_advice

SOURCE = "x = torch.tensor([1., 2.], requires_grad=True)\nx.grad.zero_()"


def test_zeroing_a_none_grad_is_explained():
    with pytest.raises(AttributeError) as caught:
        exec(compile(SOURCE, "<cell>", "exec"), {"torch": torch})
    advice = creation_advice(caught.value, SOURCE, "<cell>")
    assert advice.startswith("Why: x.grad is None until a backward reaches x")
    fixed = advice.split("Corrected: ", 1)[1].split(" (or")[0]
    namespace = {"torch": torch}
    exec(SOURCE.replace("x.grad.zero_()", fixed), namespace)  # the corrected line runs
    assert namespace["x"].grad is None


def test_another_attribute_error_gets_no_advice():
    source = "x = torch.ones(2)\nx.nope()"
    with pytest.raises(AttributeError) as caught:
        exec(compile(source, "<cell>", "exec"), {"torch": torch})
    assert creation_advice(caught.value, source, "<cell>") is None
