"""The demo notebooks, run top to bottom by nbclient in a real ipykernel.

The kernel is this interpreter (a private kernelspec, see ``jupyter_harness``), so it imports the
package under test. Any error or stderr output fails; every magic cell must render LaTeX, and the
teaching claims the prose makes (values, structures) must show in those renderings.
"""
from __future__ import annotations

import sys

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_harness import demo_notebooks, isolated_jupyter_env

NOTEBOOKS = demo_notebooks()
MAGICS = ("%%vjp", "%jacobian")

# What each notebook must show (LaTeX fragments), beyond "no errors".
EXPECTED = {
    "01_backward_gradient.ipynb": [
        r"f'(x) = \begin{bmatrix}-4 & -2 & 0 & 2 & 4\end{bmatrix}",  # x**2 at 5 points
        r"\text{f applied at 5 points (proved for every x)}",
        r"\begin{bmatrix}0 & -3 & -12 \\ 5 & 5 & 5\end{bmatrix}",  # stack([-x**3, 5x]) at 0, 1, 2
        r"\begin{bmatrix}-6 & 20\end{bmatrix}",  # 3x1^2 + 5x2^2 at (-1, 2)
        r"\begin{bmatrix}0 & 2 \\ -4 & 6 \\ -8 & 10\end{bmatrix}",
        r"\begin{bmatrix}0 & 1 \\ 2 & 3 \\ 4 & 5\end{bmatrix}",  # the matrix-valued f at 1
        r"J = \begin{bmatrix}1 & 1 & 1 & 1 \\ 0 & 2 & 4 & 6\end{bmatrix}",
    ],
    "02_jacobians_and_structure.ipynb": [
        r"\text{f applied at 4 points (proved for every x)}",  # sigmoid is pointwise
        r"\text{Jacobian of a vector-valued function}",  # softmax is not
        r"\text{f applied at 100,000 points (proved for every x)}",
        r"\cdots",  # the large batch is summarised
        r"\hline y_{1,1}",  # labelled Jacobian of X @ X
        r"\frac{\partial y}{\partial b}",  # several inputs
    ],
}


def test_there_are_demo_notebooks():
    assert {p.name for p in NOTEBOOKS} >= set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_outputs_cleared(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory):
    """A private Jupyter tree whose python3 kernel is this interpreter."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in isolated_jupyter_env(tmp_path_factory.mktemp("jupyter")).items():
            mp.setenv(key, value)
        yield


def execute(path, workdir):
    """Run a copy of the notebook, a probe cell first (which python runs the kernel?)."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable, end='')"))
    client = NotebookClient(nb, kernel_name="python3", timeout=180, allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    probe = nb.cells.pop(0)
    return nb, probe.outputs[0]["text"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_real_kernel(path, jupyter_env, tmp_path):
    nb, kernel_python = execute(path, tmp_path)
    assert kernel_python == sys.executable

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    problems = [
        (i, out.get("ename") or out.get("name"), out.get("evalue") or out.get("text", "")[:300])
        for i, cell in enumerate(code_cells) for out in cell.outputs
        if out.output_type == "error"
        or (out.output_type == "stream" and out.name == "stderr")
    ]
    assert not problems, f"{path.name}: error/stderr outputs {problems}"

    latex = []
    for cell in code_cells:
        if cell.source.lstrip().startswith(MAGICS) or "\n%jacobian" in cell.source:
            found = [out.data["text/latex"] for out in cell.outputs
                     if out.output_type == "execute_result" and "text/latex" in out.data]
            assert found, f"{path.name}: no LaTeX beneath\n{cell.source}"
            assert found[0].startswith("$$"), found[0][:80]
            latex.extend(found)
    rendered = "\n".join(latex)
    assert rendered.count(r"\begin{bmatrix}") >= len(latex), "fewer matrices than displays"
    missing = [s for s in EXPECTED.get(path.name, []) if s not in rendered]
    assert not missing, f"{path.name}: missing from the LaTeX: {missing}"
