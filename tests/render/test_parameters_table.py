"""The small display for big models (``render/parameters.py``): one table of the parameter
tensors (name as the cell writes it, shape, norm, largest |entry| and where), the matrices of
the largest, within one screen; a result with few inputs shows its matrices as before.

Expected values come from ``torch.autograd.grad`` and ``torch.func.jacrev``, computed here,
never from the code under test.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch

import vjp_magic
from vjp_magic.render import latex, markdown
from vjp_magic.render.budget import height
from vjp_magic.render.options import DISPLAY_HEIGHT
from vjp_magic.render.parameters import MANY_INPUTS, parameter_rows


def _mlp(layers: int, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    modules: list = []
    for _ in range(layers):
        modules += [torch.nn.Linear(6, 6), torch.nn.Tanh()]
    return torch.nn.Sequential(*modules[:-1])


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 6, generator=g)


def _plain(r) -> str:
    return r._repr_mimebundle_()["text/plain"]


def _row_line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(name + " ["))


def _numbers(line: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?",
                                          line.split("[", 1)[1])]


def test_twenty_tensors_make_one_table_of_true_norms_and_the_largest_matrix():
    mlp, x = _mlp(10), _batch()
    params = dict(mlp.named_parameters())
    assert len(params) == 20
    loss = (mlp(x) ** 2).mean()
    expected = dict(zip(params, torch.autograd.grad(loss, list(params.values()),
                                                    retain_graph=True)))
    r = vjp_magic.differentiate(loss, params)
    text = _plain(r)
    # the largest tensor's matrix beneath the table (issue 23, item 6); the table's rows give
    # way to it, counted: every name has its row, or is one of the rows said left out
    largest = max(expected, key=lambda n: float(torch.linalg.norm(expected[n])))
    assert f"∂y/∂({largest}) = [" in text
    rows = [name for name in expected if any(line.strip().startswith(name + " [")
                                             for line in text.splitlines())]
    left = re.search(r"(\d+) of\s+the\s+table's\s+rows", text)
    assert len(rows) + (int(left.group(1)) if left else 0) == len(expected), (rows, text)
    assert len(rows) >= 8
    for name in rows:
        grad = expected[name]
        line = _row_line(text, name)
        numbers = _numbers(line)  # shape's sizes, the norm, the largest, where
        dims = len(grad.shape)
        assert numbers[dims] == pytest.approx(float(torch.linalg.norm(grad)), rel=1e-3)
        assert numbers[dims + 1] == pytest.approx(float(grad.abs().max()), rel=1e-3)
        at = [i + 1 for i in torch.unravel_index(grad.abs().argmax(), grad.shape)]
        assert [int(n) for n in numbers[dims + 2:]] == at  # counted from 1, as the maths
    for row in parameter_rows(r):
        assert row.norm == pytest.approx(float(torch.linalg.norm(expected[row.name])),
                                         rel=1e-5)
    bundle = r._repr_mimebundle_()
    assert len(bundle["text/markdown"].encode()) < 12_000
    assert "r.derivatives['0.weight']" in text and "From 20 tensors" in text
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT


def test_per_sample_losses_norms_are_over_every_sample():
    mlp, x = _mlp(4), _batch()
    params = dict(mlp.named_parameters())
    losses = (mlp(x) ** 2).sum(1)
    r = vjp_magic.differentiate(losses, params)
    rows = {row.name: row for row in parameter_rows(r)}
    for name, p in params.items():
        per_sample = torch.stack([torch.autograd.grad(losses[i], p, retain_graph=True)[0]
                                  for i in range(len(x))])
        assert rows[name].norm == pytest.approx(float(torch.linalg.norm(per_sample)), rel=1e-5)
        assert rows[name].largest == pytest.approx(float(per_sample.abs().max()), rel=1e-6)
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT


MODEL = """\
import torch
torch.manual_seed(0)
mlp = torch.nn.Sequential(*[m for _ in range(5) for m in (torch.nn.Linear(4, 4), torch.nn.ReLU())])
inputs = torch.randn(3, 4)
y = mlp(inputs).pow(2).sum()
"""


def test_the_magic_shows_names_as_the_cell_writes_them(run_vjp, ip):
    r = run_vjp(MODEL, "--wrt mlp")
    assert "mlp.0.weight" in r.derivatives  # named_parameters()'s spelling, as the keys
    text = " ".join(_plain(r).split())
    for k in (0, 2, 4, 6, 8):
        assert f"mlp[{k}].weight [" in text and f"mlp[{k}].bias [" in text
    assert "r.derivatives['mlp.0.weight'] for mlp[0].weight" in text
    mlp, x = ip.user_ns["mlp"], ip.user_ns["inputs"]
    params = {k: v.detach() for k, v in mlp.named_parameters()}
    expected = torch.func.jacrev(
        lambda p: torch.func.functional_call(mlp, p, (x,)).pow(2).sum())(params)
    largest = max(expected, key=lambda n: float(torch.linalg.norm(expected[n])))
    assert f"∂y/∂mlp[{largest.replace('.', '].', 1)}" in text  # its matrix is shown
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[f"mlp.{name}"], value)


def test_many_tensors_keep_the_edges_and_the_largest_within_one_screen():
    mlp, x = _mlp(19), _batch()
    params = dict(mlp.named_parameters())
    loss = (mlp(x) ** 2).mean()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()),
                                                 retain_graph=True)))
    r = vjp_magic.differentiate(loss, params)
    text = _plain(r)
    largest = sorted(grads, key=lambda n: -float(torch.linalg.norm(grads[n])))[:3]
    for name in largest + ["0.weight", "0.bias", "36.weight", "36.bias"]:
        assert _row_line(text, name)
    assert re.search(r"^\s*: \[\s*:", text, flags=re.M)  # rows left out
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT
    assert len(r._repr_mimebundle_()["text/markdown"].encode()) < 12_000


def test_a_few_inputs_still_show_their_matrices():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(x * w, {"x": x, "w": w})
    text = _plain(r)
    assert "‖∂" not in text and "∂y/∂x" in text and "∂y/∂w" in text
    few = _mlp(3)  # six tensors: as before
    params = dict(few.named_parameters())
    assert len(params) == MANY_INPUTS
    r = vjp_magic.differentiate((few(_batch()) ** 2).mean(), params)
    assert "‖∂" not in _plain(r)


PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage{amsmath}\usepackage{amssymb}\usepackage{fontspec}\usepackage{unicode-math}
\usepackage{fancyvrb}
\begin{document}
"""


def test_the_table_in_markdown_and_latex(tmp_path):
    mlp, x = _mlp(10), _batch()
    r = vjp_magic.differentiate((mlp(x) ** 2).mean(), dict(mlp.named_parameters()))
    bundle = r._repr_mimebundle_()
    for tex in markdown.maths(bundle["text/markdown"]):
        assert latex.tex_problems(tex) == [], tex
    assert r"\mathtt{18{.}weight}" in bundle["text/markdown"]
    if shutil.which("xelatex") is None:
        pytest.skip("needs xelatex")
    (tmp_path / "out.tex").write_text(PREAMBLE + bundle["text/latex"] + "\n\\end{document}\n")
    run = subprocess.run(["xelatex", "-interaction=nonstopmode", "-halt-on-error", "out.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (tmp_path / "out.log").read_text(errors="replace")[-3000:]


def test_presentation_mode_leads_with_the_largest_few(run_vjp):
    r = run_vjp(MODEL, "--wrt mlp --present")
    lead = r.view.document(r).sections[0].blocks
    assert 1 <= len(lead) <= 3 and all(getattr(b, "large", False) for b in lead)
    assert "‖∂y/∂p‖" in _plain(r)
