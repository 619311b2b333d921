"""The note of a cell computed on the user's own graph names the tensor from an earlier cell
as the namespace does (else by its shape), in one well-formed sentence (no nested brackets)."""
import re

import torch


def _note(r) -> str:
    notes = [n for n in map(str, r.notes) if "own graph" in n]
    assert len(notes) == 1, r.notes
    return notes[0]


def test_an_earlier_cells_tensor_is_named(ip, run_ok):
    run_ok("w = torch.linspace(-1, 1, 20, requires_grad=True)\ns = (w ** 3).sum()")
    r = run_ok("%%vjp\nq, = torch.autograd.grad(s, w, create_graph=True)")
    note = _note(r)
    assert "because s was computed from w" in note, note
    assert not re.search(r"\([^()]*\(", note), note
    torch.testing.assert_close(r.derivatives["w"], 6 * ip.user_ns["w"].detach())


def test_an_unnamed_tensor_is_named_by_its_shape(ip, run_ok):
    run_ok("w = torch.linspace(-1, 1, 20, requires_grad=True)\n"
           "keep = [(w ** 3).sum()]")  # bound to no name: only a list holds it
    r = run_ok("%%vjp\nq, = torch.autograd.grad(keep[0], w, create_graph=True)")
    assert "because a tensor of shape () was computed from w" in _note(r), _note(r)
