"""Cut graphs, flagged without asking (no flag: always, at both orders).

A value computed from an input that reaches the output as a constant (``x.detach()``,
``x.data``, ``torch.tensor(x)``, ``.item()``/``.tolist()``/``.numpy()`` round trips,
``torch.no_grad()``) is named above the derivatives with its cell line and what became
constant (:func:`vjp_magic.run.cuts.find_cuts`, from the record alone); the derivatives are
then those of the graph as computed, which the headline says (``r.cuts`` and ``r.steers``,
stored by the pipeline before any feature runs).
"""
from __future__ import annotations

from ..render.document import Bullets, Paragraph, Section, paragraph
from ..run.choose import Subject
from . import Added, Asked

flags = ()
orders = (1, 2)
replays_record = False  # words what the pipeline read off the record; never replays it


def add(result, request: Asked, subject: Subject) -> Added:
    """The cuts and reads the pipeline stored (``r.cuts``, ``r.steers``:
    :func:`vjp_magic.run.cuts.graph_notes`), in words above the derivatives."""
    cuts, reads = getattr(result, "cuts", ()), getattr(result, "steers", ())
    before = cut_sections(cuts) if cuts else ()
    if reads:  # the headline claims the structure at this x only (core.pairing.steered)
        said = [paragraph(read.sentence()) for read in reads[:3]]
        before += (Section((said[0] if len(said) == 1 else Bullets(tuple(said)),)),)
    return Added(before=before)


def cut_sections(cuts) -> tuple[Section, ...]:
    """A bold lead saying what the derivatives are, then each cut in a sentence."""
    lead = paragraph("The graph is cut: its derivatives are those of the graph as "
                     "computed, not of the formula the cell spells.", strong=True)
    said = [cut_paragraph(cut) for cut in cuts]
    body = said[0] if len(said) == 1 else Bullets(tuple(said))
    return (Section((lead, body)),)


def cut_paragraph(cut) -> Paragraph:
    return paragraph(cut.sentence())
