"""Deep models' names in the parameter table (R3-3 / R3-4's class): the lead counts every row
the table leaves out, and where no layout fits the width the shape stays and no name is a
column wider than the line (names too long shortened in the middle, each said in full).

Expected norms from ``torch.autograd.grad`` (never the code under test); names from
``named_parameters``.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import vjp_magic
from vjp_magic.render.options import RenderOptions

WIDTH = 50  # the width budget, counted characters (render/options.py)
MONO = 0.525 * 16 / 10  # counted characters per \mathtt character


class _Long(nn.Module):
    """Four layers whose names are all about 70 characters."""

    def __init__(self):
        super().__init__()
        for k in range(4):
            setattr(self, f"a_rather_long_attribute_name_for_the_encoder_block_number_{k}",
                    nn.Linear(2, 2))

    def forward(self, x):
        for k in range(4):
            x = getattr(self, f"a_rather_long_attribute_name_for_the_encoder_block_number_{k}")(x)
        return x


class _Keys(nn.Module):
    """A ModuleDict with long keys."""

    def __init__(self):
        super().__init__()
        self.task_heads = nn.ModuleDict({
            f"sentiment_classifier_for_product_reviews_in_language_{k}": nn.Linear(2, 2)
            for k in range(4)})

    def forward(self, x):
        return sum(head(x) for head in self.task_heads.values())


def _deep():
    return nn.Sequential(*[nn.Linear(2, 2) for _ in range(60)])  # 120 tensors


MODELS = {"long-names": _Long, "moduledict-keys": _Keys, "120-tensors": _deep}
HEIGHT = {"long-names": 647, "moduledict-keys": 647, "120-tensors": 300}  # (300: rows cut)


def _display(name):
    torch.manual_seed(0)
    model = MODELS[name]().double()
    params = dict(model.named_parameters())
    loss = torch.tanh(model(torch.randn(3, 2, dtype=torch.float64))).pow(2).sum()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()),
                                                        retain_graph=True)))
    r = vjp_magic.differentiate(loss, params, options=RenderOptions(height=HEIGHT[name]))
    return r, r._repr_mimebundle_(), grads


def _rows(plain: str) -> dict:
    """shown row label → norm, in the text/plain table (the shape, if kept, first)."""
    rows = {}
    for line in plain.splitlines():
        m = re.match(r"\s*(?:∂\S+ =\s+)?([A-Za-z0-9_.…][\w.\[\]'\"…]*) \[\s*"
                     r"(?:\d+(?: × \d+)*\s+)?([-+0-9.e]+)", line)
        if m:
            rows[m.group(1)] = float(m.group(2))
    return rows


def _full(plain: str, label: str) -> str:
    flat = " ".join(plain.split())
    said = re.search(rf"{re.escape(label)} is (\S+?)[;.](?:\s|$)", flat)
    return said.group(1) if said else label


@pytest.mark.parametrize("name", list(MODELS))
def test_every_norm_shown_is_the_gradients_and_the_lead_counts_every_row_left_out(name):
    r, bundle, grads = _display(name)
    plain = bundle["text/plain"]
    shown = _rows(plain)
    assert shown, plain
    corner = re.search(r"∂\S+/∂p = +(\S+) +(?:shape|‖)", plain)
    for label, norm in shown.items():
        full = _full(plain, label)
        key = full if not full.startswith(".") else corner.group(1) + full
        key = re.sub(r"\[(\d+)\]", r".\1", key)
        key = re.sub(r"\['([^']*)'\]", r".\1", key)
        assert key in grads, (key, plain)
        assert norm == pytest.approx(float(grads[key].norm()), rel=6e-3), (label, plain)
    said = re.search(r"(\d+) of the table's rows", " ".join(plain.split()))
    assert said is not None or len(shown) == len(grads), plain
    assert said is None or len(shown) + int(said.group(1)) == len(grads), plain


@pytest.mark.parametrize("name", ["long-names", "moduledict-keys"])
@pytest.mark.parametrize("fmt", ["text/markdown", "text/latex"])
def test_no_name_is_wider_than_the_line_and_the_shape_stays(name, fmt):
    _, bundle, _ = _display(name)
    table = re.search(r"\\begin\{array\}.*?\\end\{array\}", bundle[fmt], re.S).group(0)
    labels = re.findall(r"\\mathtt\{((?:[^{}]|\{[^{}]*\})*)\}", table)
    bodies = [re.sub(r"\{\.\}", ".", x).replace("\\_", "_").replace("{\\ldots}", "…")
              .replace("{", "").replace("}", "") for x in labels]
    assert max(len(b) for b in bodies) * MONO < WIDTH, bodies
    assert len(set(bodies)) == len(bodies), bodies
    assert "shape" in table, table
