"""One walk of the output's graph for the display's graph facts (s35 F4): whoever asks first
(the names feature, or a feature's sections built while the result keeps its graph), the
others read what it found. (Before: 3 walks under --explain --code --symbolic --gradcheck.)"""
from __future__ import annotations

import pytest
import torch

from vjp_magic.core import graph_facts

CELL = "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = torch.sin(x)"


@pytest.mark.parametrize("line", ["%%vjp", "%%vjp --explain --code --symbolic --gradcheck"])
def test_the_graph_is_walked_once_a_request(ip, run_ok, monkeypatch, line):
    walks = []
    walk = graph_facts.facts
    monkeypatch.setattr(graph_facts, "facts", lambda *a: walks.append(1) or walk(*a))
    r = run_ok(f"{line}\n{CELL}")
    r._repr_mimebundle_()
    assert len(walks) == 1
    assert "f'" in r._repr_mimebundle_()["text/plain"]  # one f, proved: the fact was read
    torch.testing.assert_close(r.derivatives["x"], torch.cos(torch.linspace(-2, 2, 5)))
