"""Reading a result's coaching off its document (``words``, ``mistake``, ``notes``,
``corrected``), running a cell under the guard as the magic does (``cell_error``), and a
refusal's message with no frame of the package shown (``refused``)."""
from __future__ import annotations

import re

from IPython.core.error import UsageError

from vjp_magic.render.document import Bullets, CodeBlock, Math, Paragraph, Section
from vjp_magic.run.guard import keep_graphs
from vjp_magic.run.mistakes import MistakeKind

# -- reading the coaching off the document ------------------------------------------------------

def _spoken(span) -> str:
    return span.plain if isinstance(span, Math) else span.text


def words(section: Section) -> str:
    """A section's words, a line per paragraph; code blocks indented by four spaces."""
    lines = []
    for block in section.blocks:
        if isinstance(block, CodeBlock):
            lines += ["    " + line for line in block.source.splitlines()]
        elif isinstance(block, Bullets):
            lines += ["".join(map(_spoken, item.spans)) for item in block.items]
        elif isinstance(block, Paragraph):
            lines.append("".join(map(_spoken, block.spans)))
    return "\n".join(lines)


def corrected(section: Section) -> list[str]:
    """The lines of the code block after "Corrected:"."""
    blocks = list(section.blocks)
    at = next(i for i, b in enumerate(blocks)
              if isinstance(b, Paragraph) and words(Section((b,))).endswith("Corrected:"))
    assert isinstance(blocks[at + 1], CodeBlock), blocks
    return blocks[at + 1].source.splitlines()


def _lead(section: Section) -> str:
    return words(Section(section.blocks[:1]))


def coaching_of(r) -> list[Section]:
    """The coaching sections of the result's display, in order."""
    return [s for s in r.view.document(r).sections
            if _lead(s).startswith(("The cell stopped", "Note: "))]


def mistake(r) -> Section:
    found = [s for s in coaching_of(r) if _lead(s).startswith("The cell stopped")]
    assert len(found) == 1, coaching_of(r)
    return found[0]


def notes(r) -> list[Section]:
    return [s for s in coaching_of(r) if _lead(s).startswith("Note: ")]


def unquoted(text: str) -> str:
    """Plain text as one line: inline code's backquotes (if the renderer writes them) and
    the renderer's line breaks dropped."""
    return " ".join(text.replace("`", "").split())


def cell_error(source: str, ns: dict):
    """Run ``source`` as a cell under the guard, as the magic does: (log, error raised)."""
    with keep_graphs("<cell>") as log:
        try:
            exec(compile(source, "<cell>", "exec"), ns)
        except RuntimeError as error:
            log.record_failure(error)
            return log, error
    return log, None


# -- a refusal as the user sees it: the message, no frame of the package, nothing lost -------------

def refused(ip, capsys, source: str, keep=()) -> str:
    """Run ``source``: a UsageError whose display shows no frame from the package, and the
    names in ``keep`` still bound. Returns the message."""
    capsys.readouterr()
    result = ip.run_cell(source)
    shown = "".join(capsys.readouterr())
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "Traceback" not in shown and not re.search(r"vjp_magic[/\\][\w/\\]+\.py", shown), shown
    for name in keep:
        assert name in ip.user_ns, name
    return str(result.error_in_exec)


# cells that stop at each classic mistake of their own backward
FLOAT_5 = "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2\n"
CLASSIFIED = [  # (cell, kind, line of the failing call)
    (FLOAT_5 + "y.backward()", MistakeKind.IMPLICIT_SCALAR, 3),
    (FLOAT_5 + "(g,) = torch.autograd.grad(y, x)", MistakeKind.IMPLICIT_SCALAR, 3),
    (FLOAT_5 + "y.backward(torch.ones(3))", MistakeKind.GRADIENT_SHAPE, 3),
    (FLOAT_5 + "y.backward(torch.ones_like(y))\ny.backward(torch.ones_like(y))",
     MistakeKind.SECOND_PASS, 4),
]
