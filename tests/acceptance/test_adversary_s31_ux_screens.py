"""Adversarial review, session 31 (issue 20): sizes and screens of sparse (coloured) results —
under 20 KB in each format, lines a terminal holds, one screen by the package's own height
estimate (render/budget.height against 647 px), no raw LaTeX in prose and no prose in maths.
Its findings (each default display taller than one screen) are fixed; the tests stay.
"""
from __future__ import annotations

import re

import pytest
from sparse_cells_s31 import CYCLIC, TALL, TERMINAL, TRIDIAGONAL, bundle, plain

from vjp_magic.render.budget import height
from vjp_magic.render.options import DISPLAY_HEIGHT


# -- sizes and screens ---------------------------------------------------------------------------
def test_a_million_entries_are_summarised_small_and_narrow(run_vjp):
    r = run_vjp(TRIDIAGONAL.format(n=10**6))
    shown = bundle(r)
    for kind, text in shown.items():
        assert len(text.encode()) < 20_000, kind
    assert "1,000,000" in shown["text/plain"] and "2,999,998 nonzero" in shown["text/plain"]
    assert max(len(line) for line in shown["text/plain"].splitlines()) <= TERMINAL
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT


def test_markdown_prose_has_no_raw_latex_and_maths_no_prose(run_vjp):
    r = run_vjp(CYCLIC.format(n=10**5), "--explain")
    md = bundle(r)["text/markdown"]
    prose = re.sub(r"```.*?```|\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|<[^>]*>", "", md, flags=re.S)
    assert not re.findall(r"\\[A-Za-z]+|_\{|\^\{", prose)
    for maths in re.findall(r"\$\$(.*?)\$\$", md, flags=re.S):
        assert not re.search(r"(?<![\\{A-Za-z])[a-z]{3,} [a-z]{3,} [a-z]{3,}", maths), maths


@pytest.mark.parametrize("case", [
    pytest.param("tridiagonal, 10^5", id="tridiagonal"),
    *[pytest.param(name, id=name) for name in TALL]])
def test_the_default_sparse_display_fits_one_screen(run_vjp, case):
    body = TRIDIAGONAL.format(n=10**5) if case == "tridiagonal, 10^5" else TALL[case]
    r = run_vjp(body)
    assert "backward" in plain(r) or "forward-mode" in plain(r)  # the coloured path
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT
