"""s36 U11: where the coloured passes start, as docs/api.md says and the display says it.

A band of 7 (offsets −3..3): rows i and i + 7 never share a column, so 7 coloured passes give
every nonzero (mathematics). docs/api.md: an input with no points, of an output with 32
entries or more and a Jacobian of more than 64 × 64 entries, is computed by the coloured
passes; at most 64 × 64 the Jacobian is computed whole (one backward per output entry), and
the display says why a larger one would take fewer passes.
"""
from __future__ import annotations

import torch

BAND_7 = ("import torch.nn.functional as F\nsignal = torch.randn({n}, requires_grad=True)\n"
          "p = F.pad(signal, (3, 3))\n"
          "out = p[:-6] + p[1:-5] + p[2:-4] + p[3:-3] + p[4:-2] + p[5:-1] + p[6:]")


def plain(result) -> str:
    shown = result._repr_mimebundle_()
    shown = shown[0] if isinstance(shown, tuple) else shown
    return " ".join(shown["text/plain"].split())


def test_at_64_entries_the_whole_jacobian_and_the_display_says_why(run_vjp):
    r = run_vjp(BAND_7.format(n=64))
    assert len(r.gradients["signal"]) == 64  # one backward per output entry: 64 × 64 = 4,096
    assert r.derivatives["signal"].layout == torch.strided
    text = plain(r)
    assert "at most 64 × 64 entries is computed whole" in text, text[:600]
    # the band itself: entry t reads t−3..t+3 (ones inside the signal)
    d = r.derivatives["signal"]
    assert d[10, 7] == 1 and d[10, 13] == 1 and d[10, 14] == 0 and d[10, 6] == 0


def test_at_65_entries_the_seven_coloured_passes(run_vjp):
    r = run_vjp(BAND_7.format(n=65))
    assert len(r.gradients["signal"]) == 7
    assert "computed whole" not in plain(r)


def test_the_docs_state_the_rule_the_code_keeps():
    from pathlib import Path

    from vjp_magic.core.compressed import SPARSE_MIN_ENTRIES, SPARSE_MIN_OUTPUT

    api = " ".join((Path(__file__).parents[2] / "docs" / "api.md").read_text().split())
    assert SPARSE_MIN_ENTRIES == 64 * 64 and SPARSE_MIN_OUTPUT == 32
    assert "of an output with 32 entries or more and a Jacobian of more than 64 × 64" in api
