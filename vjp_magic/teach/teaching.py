"""Stage 5c — teaching: explain mode, reproducing code, coaching on the cell's own mistakes.

``enrich`` is called by the magics after the analysis. It sets ``result.code`` (plain
PyTorch reproducing the numbers) and appends sections — objects with ``.latex()``,
``.text()`` and ``.position`` that the renderers place above or below the derivatives.
"""
from __future__ import annotations

import math

import torch

from . import coaching

from ..render import latex
from .coaching import tex_rows
from ..render import plain
from ..render.codegen import derivative_name
from ..render.formatting import Block, jacobian_block, summary_indices


def enrich(result, *, explain: bool = False, show_code: bool = False, log=None) -> None:
    """Add teaching sections to ``result`` as its flags ask (coaching whenever ``log`` has some)."""
    if log is not None:
        if getattr(log, "mistake", None) is not None:
            result.sections.append(coaching.mistake_section(log.mistake, result))
        result.sections.extend(coaching.accumulation_notes(result, log))
    if explain:
        result.sections.append(ExplainSection(result))
    if show_code:
        result.sections.append(CodeSection(result))


def _explained_jacobian(result, name: str) -> Block:
    """The flattened Jacobian with exact zeros between different points.

    ``r.jacobian_block`` multiplies by a same-point mask, so a derivative that is inf or
    NaN at one point would read NaN (0 x inf) across its whole row and column: here the
    entries that belong to different points are 0, as the mathematics says.
    """
    block = jacobian_block(result, name)
    item = result.inputs[name]
    if not item.pairing:
        return block
    out_shape, in_shape = tuple(result.output.shape), tuple(item.tensor.shape)
    fetch = block.get_block

    def fetch_zeroed(rows, cols):
        values = fetch(rows, cols)
        if bool(torch.isfinite(values).all()):
            return values
        out_idx = torch.unravel_index(rows, out_shape)
        in_idx = torch.unravel_index(cols, in_shape)
        same = torch.ones(len(rows), len(cols), dtype=torch.bool, device=values.device)
        for a, b in item.pairing:
            same &= out_idx[a][:, None] == in_idx[b][None, :]
        return torch.where(same, values, torch.zeros((), dtype=values.dtype,
                                                     device=values.device))

    block.get_block = fetch_zeroed
    return block


def _row(tensor: torch.Tensor) -> Block:
    """A tensor flattened row-major into one 1 × n row (entries fetched on demand)."""
    flat = tensor.reshape(1, -1)
    return Block(lambda r, c: flat[r][:, c], 1, flat.shape[1], tensor.device)


class CodeSection:
    """``r.code`` beneath the cell (monospace LaTeX lines; plain text in a terminal)."""

    position = "bottom"

    def __init__(self, result):
        self.result = result

    def _title(self) -> str:
        names = ", ".join(derivative_name(n) for n in self.result.inputs)
        return f"Plain PyTorch reproducing these numbers (defines {names}):"

    def latex(self) -> str:
        rows = [latex.text(self._title())]
        rows.extend(latex.code(line) if line else r"\ " for line in self.result.code.splitlines())
        return latex.display(*rows)

    def text(self) -> str:
        return "\n".join([self._title()] + ["    " + line for line in self.result.code.splitlines()])


class ExplainSection:
    """The tutorial's steps for this result: shapes, J, each v, and vᵀJ = the derivatives."""

    position = "top"
    SHOWN_GRADIENTS = 4

    def __init__(self, result):
        self.result = result

    # -- the words, shared by both renderings ---------------------------------------------
    def _facts(self, name: str) -> dict:
        result = self.result
        item = result.inputs[name]
        comp = result.component_shape(name)
        count = math.prod(comp)
        y_name = result.output_name if result.output_name.isidentifier() else "y"
        m, n = result.output.numel(), item.tensor.numel()
        facts = dict(name=name, y=y_name, m=m, n=n, count=count, comp=comp,
                     x_shape=tuple(item.tensor.shape), y_shape=tuple(result.output.shape))
        if result.full or not item.has_points:
            if m == 1:
                structure = f"{y_name} is a single number: J has one row, the gradient of f."
            else:
                structure = (f"Row i of J is the gradient of the entry y_i; nothing is known to be "
                             f"zero, so each of the {count} entries needs its own v.")
        else:
            points = item.point_count
            per_point = item.per_point_numel()
            reordered = "diagonal" if per_point == 1 and count == 1 else "block-diagonal"
            in_order = ("J is diagonal." if reordered == "diagonal" and item.tensor.dim() <= 1
                        and result.output.dim() <= 1 else
                        f"after reordering the entries by point, J is {reordered} (shown here "
                        "in row-major order).")
            known = ("the autograd graph proves that" if item.evidence == "proved" else
                     f"at this {name} (checked by random probes, not proved for every {name}),")
            structure = (f"f acts at {points} points: {known} the entries of {y_name} at a "
                         f"point depend only on the entries of {name} at that point, so J is "
                         f"zero except where the output entry and the input entry belong to the "
                         f"same point; {in_order}")
        facts["structure"] = structure
        if count == 1 and m == 1:
            why_v = (f"{y_name} is a scalar, so v = 1 (backward's default) and v^T J = J, the "
                     "gradient itself.")
        elif count == 1:
            points = item.point_count
            why_v = ("v = ones: v^T J adds up each column of J, and each column of this "
                     "(block-)diagonal J has nonzero entries only at its own point, so v^T J "
                     f"lists the derivatives at all {points} points at once.")
        else:
            at = " (ones at every point)" if item.has_points and not result.full else ""
            why_v = (f"One v per component: v_k is one-hot on component k{at}, so v_k^T J is "
                     f"the gradient of component k alone. {count} components, {count} backward "
                     "calls (retain_graph=True between them).")
        facts["why_v"] = why_v
        return facts

    def _shown(self, count: int) -> list[int | None]:
        return summary_indices(count, self.SHOWN_GRADIENTS, 2)

    # -- LaTeX ----------------------------------------------------------------------------
    def latex(self) -> str:
        result = self.result
        options = result.options
        parts = []
        for name, item in result.inputs.items():
            f = self._facts(name)
            dtype = item.derivatives.dtype
            x_tex, y_tex = latex.name(name), latex.name(result.output_name)
            head = latex.text(f"Explained, with respect to {name}: " if len(result.inputs) > 1
                              else "Explained:")
            parts.append(latex.display(
                head,
                rf"\text{{1. The function: }} f: {latex.shape_space(f['x_shape'])} \to "
                rf"{latex.shape_space(f['y_shape'])},\quad {x_tex} \mapsto {y_tex}",
                *tex_rows(f"Flattened row-major, {name} has n = {f['n']} entries and {f['y']} "
                          f"has m = {f['m']}."),
            ))
            block = _explained_jacobian(result, name)
            parts.append(latex.display(
                latex.text(f"2. The Jacobian, m x n = {f['m']} x {f['n']}: ")
                + r"J_{ij} = \partial y_i / \partial x_j",
                *tex_rows(f["structure"]),
            ))
            parts.append(f"$$J = {latex.matrix(block, options, dtype)}$$")
            grads = result.gradients[name]
            rows = tex_rows("3. The gradient argument v of backward, shaped like "
                            f"{f['y']} {f['y_shape']} (flattened here). " + f["why_v"])
            parts.append(latex.display(*rows))
            for k in self._shown(f["count"]):
                if k is None:
                    parts.append(r"$$\vdots$$")
                    continue
                sub = f"_{{{k + 1}}}" if f["count"] > 1 else ""
                v = grads[k]
                d = item.derivatives.reshape((f["count"],) + f["x_shape"])[k]
                parts.append(
                    f"$$v{sub}^\\top = {latex.matrix(_row(v), options, result.output.dtype)}$$\n"
                    f"$$v{sub}^\\top J = {latex.matrix(_row(d), options, dtype)}$$"
                )
            parts.append(latex.display(*tex_rows(
                "4. Each v^T J, reshaped to the shape of " + f"{name} {f['x_shape']}, is the "
                "derivative shown below" + (" (one per component)." if f["count"] > 1 else "."))))
        return "\n".join(parts)

    # -- plain text -----------------------------------------------------------------------
    def text(self) -> str:
        result = self.result
        options = result.options
        lines = []
        for name, item in result.inputs.items():
            f = self._facts(name)
            dtype = item.derivatives.dtype
            lines.append(f"Explained (with respect to {name}):")
            lines.append(f"1. The function: f maps {name} {f['x_shape']} to {f['y']} "
                         f"{f['y_shape']}; flattened, n = {f['n']}, m = {f['m']}.")
            lines.append(f"2. The Jacobian J ({f['m']} x {f['n']}): {f['structure']}")
            lines.extend("   " + row for row in plain.matrix(_explained_jacobian(result, name),
                                                             options, dtype))
            lines.append(f"3. The gradient argument v: {f['why_v']}")
            grads = result.gradients[name]
            for k in self._shown(f["count"]):
                if k is None:
                    lines.append("   ...")
                    continue
                sub = f"_{k + 1}" if f["count"] > 1 else ""
                d = item.derivatives.reshape((f["count"],) + f["x_shape"])[k]
                v_rows = plain.matrix(_row(grads[k]), options, result.output.dtype)
                d_rows = plain.matrix(_row(d), options, dtype)
                lines.append(f"   v{sub}^T = {v_rows[0]}")
                lines.append(f"   v{sub}^T J = {d_rows[0]}")
            lines.append(f"4. Each v^T J, reshaped to {name}'s shape {f['x_shape']}, is the "
                         "derivative shown below.")
        return "\n".join(lines)
