"""Stage 5c — teaching: explain mode, reproducing code, coaching on the cell's own mistakes.

(To be filled by issue 5; ``enrich`` is called by the magics after the analysis.)
"""
from __future__ import annotations


def enrich(result, *, explain: bool = False, show_code: bool = False, log=None) -> None:
    """Add teaching sections to ``result`` as its flags ask."""
    return None
