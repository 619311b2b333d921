"""The demo notebooks and the client-check notebook, run top to bottom by nbclient in a real
ipykernel (once per session, shared with test_clients.py and test_browser.py).

The kernel is this interpreter (a private kernelspec, see ``jupyter_harness``), so it imports the
package under test. Any error or stderr output fails; every magic cell must display markdown
(plus LaTeX and plain text, no HTML), and the teaching claims the prose makes (values,
structures) must show in those displays.
"""
from __future__ import annotations

import os
import sys

import nbformat
import pytest

from jupyter_harness import CHECK_NOTEBOOK, client_notebooks, demo_notebooks, execute_notebook

NOTEBOOKS = client_notebooks()
MAGICS = ("%%vjp", "%jacobian", "%hessian")

# What each notebook must show (fragments of its markdown displays), beyond "no errors".
EXPECTED = {
    "01_backward_gradient.ipynb": [
        r"\begin{bmatrix}-4 & -2 & 0 & 2 & 4\end{bmatrix}",  # x**2 at 5 points
        r"\begin{bmatrix}0 & -3 & -12 \\ 5 & 5 & 5\end{bmatrix}",  # stack([-x**3, 5x]) at 0, 1, 2
        r"\begin{bmatrix}-6 & 20\end{bmatrix}",  # 3x1^2 + 5x2^2 at (-1, 2)
        r"\begin{bmatrix}0 & 2 \\ -4 & 6 \\ -8 & 10\end{bmatrix}",
        r"\begin{bmatrix}0 & 1 \\ 2 & 3 \\ 4 & 5\end{bmatrix}",  # the matrix-valued f at 1
        r"\begin{bmatrix}1 & 1 & 1 & 1 \\ 0 & 2 & 4 & 6\end{bmatrix}",  # J of (sum, sum of squares)
        "y.backward(gradient=torch.ones_like(y))",  # the tutorial's own line, as code
    ],
    "03_exercises_hessians_pictures.ipynb": [
        "✓ correct",  # the right answer
        "the components summed", "one component only", "accumulated", "transposed",
        "wrong at some points",  # each classic mistake, graded
        # H of the Rosenbrock-like f at (-0.5, 1.5)
        r"\begin{bmatrix}-28 & 20 \\ 20 & 20\end{bmatrix}",
    ],
    "04_practitioners.ipynb": [
        "$y[1]$ ← $x[0]$",  # the batch leak, where it broke
        "s \\le t + 1",  # the off-by-one mask: a band reaching t + 1
        "Gradient check FAILED",  # the wrong custom backward
        "mlp.0.weight",  # per-sample gradients, a module's parameters named
        r"\mathrm{mean} & \max",  # the sensitivity summary
    ],
    "05_sparse_jacobians.ipynb": [
        "is tridiagonal: $y[i]$ reads $x[i-1]$",  # the pattern in words, the cell's names
        "3 backward passes give all 5,998 nonzero derivatives",
        "colour = torch.arange(y.numel()) % 3",  # the coloured v as the code to write
        "nothing collides",  # --explain on the 5-point Laplacian
    ],
    "02_jacobians_and_structure.ipynb": [
        "100,000",  # the large batch, with a thousands separator
        r"\cdots",  # ... summarised
        r"\frac{\partial y",  # several inputs
    ],
}


def test_there_are_demo_notebooks():
    assert {p.name for p in demo_notebooks()} >= set(EXPECTED)
    assert CHECK_NOTEBOOK.exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_outputs_cleared(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


def is_magic(source: str) -> bool:
    return source.lstrip().startswith(MAGICS) or any(f"\n{m}" in source for m in MAGICS[1:])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_real_kernel(path):
    nb, kernel_python = execute_notebook(path)
    # the same file, however this Python was started (../venv/bin/python): the path made
    # absolute and normalised, links kept (a venv's python links to the base interpreter)
    assert os.path.abspath(kernel_python) == os.path.abspath(sys.executable)

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    problems = [
        (i, out.get("ename") or out.get("name"), out.get("evalue") or out.get("text", "")[:300])
        for i, cell in enumerate(code_cells) for out in cell.outputs
        if out.output_type == "error"
        or (out.output_type == "stream" and out.name == "stderr")
    ]
    assert not problems, f"{path.name}: error/stderr outputs {problems}"

    shown = []
    for cell in code_cells:
        if not is_magic(cell.source):
            continue
        bundles = [out.data for out in cell.outputs
                   if out.output_type in ("execute_result", "display_data")]
        assert bundles, f"{path.name}: no display beneath\n{cell.source}"
        for data in bundles:
            if "image/png" in data:  # a picture of a Jacobian's pattern, beneath the display
                assert "text/plain" in data, f"{path.name}: a picture with no text\n{cell.source}"
                continue
            assert "text/markdown" in data and "text/plain" in data, \
                f"{path.name}: {sorted(data)} beneath\n{cell.source}"
            assert "text/html" not in data, f"{path.name}: text/html beneath\n{cell.source}"
            shown.append(data["text/markdown"])
    rendered = "\n".join(shown)
    missing = [s for s in EXPECTED.get(path.name, []) if s not in rendered]
    assert not missing, f"{path.name}: missing from the displays: {missing}"
