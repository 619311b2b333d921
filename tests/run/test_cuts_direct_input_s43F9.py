"""A cut of the very input asked about (helper F2, s43): ``%%vjp --wrt b`` of
``y = a*2 + b.detach()`` is no "y does not depend on b" (false of the formula, which uses b):
the cut is found and said, and the input called unreached in the graph as computed. Every
way of cutting (detach, .data, torch.tensor(b), a .tolist() round trip, a no_grad block) on
the direct input, as on an intermediate.

Derivatives expected: those of the graph as computed (0 for b: the derivative of a
constant; 2 for a, from mathematics); an input truly not used keeps "does not depend"."""
from __future__ import annotations

import re

import pytest
import torch

from vjp_magic.core.errors import UNREACHED

SETUP = "a = torch.ones(3, requires_grad=True)\nb = torch.ones(3, requires_grad=True)"
CUTS = {
    "detach": ("y = a*2 + b.detach()", "b.detach()"),
    ".data": ("y = a*2 + b.data", "b.data"),
    "torch.tensor": ("y = a*2 + torch.tensor(b)", "torch.tensor(b)"),
    "tolist round trip": ("y = a*2 + torch.tensor(b.tolist())", "b.tolist()"),
    "no_grad block": ("with torch.no_grad():\n    c = b * 3\ny = a*2 + c", "b * 3"),
    "an intermediate": ("c = b * 1\ny = a*2 + c.detach()", "c.detach()"),
    "detach, then arithmetic": ("y = a*2 + b.detach() ** 2", "b.detach()"),
}
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct")


def _plain(r) -> str:
    return re.sub(r"\s+", " ", r._repr_mimebundle_()["text/plain"])


@pytest.mark.parametrize("spelling", list(CUTS))
def test_a_cut_of_the_input_asked_about_is_said_not_independence(run_ok, spelling):
    run_ok(SETUP)
    body, said = CUTS[spelling]
    r = run_ok(f"%%vjp --wrt b\n{body}")
    assert len(r.cuts) == 1 and set(r.cuts[0].inputs) == {"b"}, r.cuts
    assert float(r.derivatives["b"].abs().max()) == 0.0  # the graph as computed
    plain = _plain(r)
    assert "graph is cut" in plain and said in plain, plain
    assert UNREACHED[1].strip() in plain and "does not depend on" not in plain, plain


@pytest.mark.parametrize("spelling", ["detach", "no_grad block"])
def test_both_inputs_asked_the_cut_one_unreached_the_other_exact(run_ok, spelling):
    run_ok(SETUP)
    r = run_ok(f"%%vjp --wrt a,b\n{CUTS[spelling][0]}")
    assert [set(c.inputs) for c in r.cuts] == [{"b"}]
    torch.testing.assert_close(r.jacobian("a"), 2 * torch.eye(3))
    assert float(r.jacobian("b").abs().max()) == 0.0
    assert "does not depend on" not in _plain(r)


def test_an_input_truly_unused_still_does_not_depend(run_ok):
    run_ok(SETUP)
    r = run_ok("%%vjp --wrt b\ny = a*2 + 1")
    assert not getattr(r, "cuts", ())
    assert "y does not depend on b" in _plain(r)
