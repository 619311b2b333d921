"""--explain on a sparse result names the probe vectors as the code beneath names them (issue
20, session 31): where the cell's input is named v (or u), the code's vector is v2 (u2), and
the explanation's step 4 says v2 (u2) too, never the cell's own tensor's name."""
from __future__ import annotations

from sparse_cells_s31 import GATHER, flat, plain, shown_code


def test_rows_the_explanation_says_v2_beside_an_input_v(run_vjp):
    r = run_vjp("v = torch.linspace(0, 1, 2001, requires_grad=True)\n"
                "y = v.roll(1) - 2*v + v.roll(-1) + v**3", "--explain")
    text, code = flat(plain(r)), shown_code(r)
    assert "y.backward(gradient=v2" in code
    assert "4. For the v2 of one colour (v2 = e0 + e3 + …" in text
    assert "entry j of v2ᵀJ is" in text


def test_columns_the_explanation_says_u2_beside_an_input_u(run_vjp):
    r = run_vjp(GATHER.replace("x", "u").replace("y =", "w ="), "--explain")
    text, code = flat(plain(r)), shown_code(r)
    assert "u2 = (colour == c)" in code
    assert "4. For the u2 of one colour (u2 = e" in text
    assert "the vector-Jacobian product of g with u2 is J·u2" in text
