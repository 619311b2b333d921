"""What the running PyTorch lets the package prove (vjp_magic.core.capabilities).

A PyTorch whose autograd nodes hide their outputs' shapes (``Node._input_metadata``, added in
2.5) is simulated by pointing the check at an attribute no node has: the structure proof must
then claim nothing, say why, and no headline may say "proved for every x".
"""
from __future__ import annotations

import pytest
import torch

from vjp_magic import differentiate
from vjp_magic.core import axisflow, capabilities
from vjp_magic.render import document as D
from vjp_magic.render.options import RenderOptions
from vjp_magic.render.sections import derivatives_sections


@pytest.fixture
def hidden_shapes(monkeypatch):
    """This PyTorch, as if its autograd nodes had no ``_input_metadata``."""
    monkeypatch.setattr(capabilities, "SHAPES_ATTRIBUTE", "_no_such_metadata")
    capabilities.graph_shapes.cache_clear()
    yield
    capabilities.graph_shapes.cache_clear()  # monkeypatch restores the name after this


def _headline(result) -> str:
    sections = derivatives_sections(result, RenderOptions())
    return "\n".join("".join(s.plain if isinstance(s, D.Math) else s.text for s in b.spans)
                     for section in sections for b in section.blocks
                     if isinstance(b, D.Paragraph))


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_this_torch_shows_the_graphs_shapes():
    assert capabilities.graph_shapes()
    assert capabilities.graph_shapes_limitation() is None
    x = torch.randn(5, requires_grad=True)
    proof = axisflow.prove(torch.sin(x), x)
    assert proof.exact and proof.carries == {0: (0,)} and proof.limitation is None
    assert proof.workspace > 0


def test_hidden_shapes_are_detected_and_said(hidden_shapes):
    assert not capabilities.graph_shapes()
    limitation = capabilities.graph_shapes_limitation()
    assert torch.__version__ in limitation and "_no_such_metadata" in limitation
    assert "no structure is proved" in limitation and "memory estimate" in limitation


def test_hidden_shapes_prove_nothing_and_say_so(hidden_shapes):
    x = torch.randn(5, requires_grad=True)
    proof = axisflow.prove(torch.sin(x), x)
    assert proof.depends and proof.carries == {} and not proof.exact
    assert proof.limitation == capabilities.graph_shapes_limitation()
    assert not any(x.shape[b] > 1 for _, b in proof.pairing((5,), (5,)))


def test_hidden_shapes_still_see_what_depends_on_what(hidden_shapes):
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    assert not axisflow.prove(w.exp(), x).depends
    assert axisflow.prove((x * w).sum(), x).depends
    through = axisflow.prove(_Double.apply(x).sum(), x)
    assert through.depends and through.custom == ["_DoubleBackward"]
    parts = x.split(1)  # a node with several outputs, of which only one is used
    assert axisflow.prove(parts[0].exp(), x).depends


@pytest.mark.parametrize("build", [torch.sin, lambda x: x * x.sum()],
                         ids=["elementwise", "x * x.sum() at 0"])
def test_hidden_shapes_never_claim_a_proof(hidden_shapes, build):
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    result = differentiate(build(x), x)
    item = result.inputs["x"]
    assert not (item.has_points and item.evidence == "proved")
    assert "proved for every" not in _headline(result)
    expected = torch.autograd.functional.jacobian(build, x.detach())
    assert torch.allclose(result.jacobian("x"), expected)


def test_hidden_shapes_are_a_note_on_the_result(hidden_shapes):
    x = torch.randn(4, requires_grad=True)
    result = differentiate(torch.sin(x), x)
    assert capabilities.graph_shapes_limitation() in result.notes
