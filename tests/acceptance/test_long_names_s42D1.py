"""Long names in the displays (s42 D1; the classes of R3-4 and R3-6 of test_review_s41R3).

R3-4's class: one long parameter name decided the columns of every row of the ``--wrt`` table.
Now a few names much longer than the rest are shortened (a middle …, their first part, every
index and their last part kept), each said in full beneath the table, and every row keeps its
shape. R3-6's class: a LaTeX sentence of long code names had no line break within LaTeX's
tolerance (nbconvert's PDF export). Expected values: shapes and norms from a loop of
``backward`` calls, one per sample (never the code under test); names from ``named_parameters``.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.render.latex import inline_code
from vjp_magic.render.parameters import shorten

MODELS = {
    "deep-sequential": '''
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.stem = nn.Linear(4, 4)
        s.feature_extractor = nn.Sequential(nn.Tanh(), nn.Sequential(
            nn.Identity(), nn.Sequential(nn.Tanh(), nn.Linear(4, 4))))
        s.mid, s.head = nn.Linear(4, 4), nn.Linear(4, 3)
    def forward(s, x):
        return s.head(s.mid(s.feature_extractor(s.stem(x))))
''',
    "moduledict-key": '''
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.stem = nn.Linear(4, 4)
        s.heads = nn.ModuleDict({"sentiment_classifier_for_reviews": nn.Linear(4, 4),
                                 "b": nn.Linear(4, 4)})
        s.mid, s.head = nn.Linear(4, 4), nn.Linear(4, 3)
    def forward(s, x):
        h = s.stem(x)
        h = s.heads["sentiment_classifier_for_reviews"](h) + s.heads["b"](h)
        return s.head(s.mid(h))
''',
    "even-lengths": '''
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.encoder_layers = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
    def forward(s, x):
        return s.encoder_layers(x)[:, :3]
''',
}
SETUP = '''import torch.nn.functional as F
from torch import nn
torch.manual_seed(0)
{model}
net = Net()
x = torch.randn(5, 4); t = torch.randint(0, 3, (5,))
'''
CELL = "%%vjp --wrt net\nlosses = F.cross_entropy(net(x), t, reduction='none')"
ROW = re.compile(r"^\s*(net[\w.\[\]…]+) \[\s*(\d+(?: × \d+)*)\s+([-\d.e+]+)")


def _reference(net, x, t) -> dict:
    """'net.' + name → (5, *shape): sample b's loss backward alone, in row b."""
    rows: dict = {n: [] for n, _ in net.named_parameters()}
    for b in range(x.shape[0]):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), t, reduction="none")[b].backward()
        for n, p in net.named_parameters():
            rows[n].append(p.grad.clone())
    net.zero_grad(set_to_none=True)
    return {f"net.{n}": torch.stack(v) for n, v in rows.items()}


def _shown(ip, run_ok, model):
    run_ok(SETUP.format(model=MODELS[model]))
    r = run_ok(CELL)
    ns = ip.user_ns
    bundle = r._repr_mimebundle_()
    return (bundle[0] if isinstance(bundle, tuple) else bundle), _reference(
        ns["net"], ns["x"], ns["t"])


def _spelled(name: str) -> str:
    """A dotted parameter name as the display writes it (net.a[0].b for net.a.0.b)."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name)


def _said_in_full(plain: str) -> dict:
    said = re.search(r"Shortened to fit the width: (.*?)\.(?:\s|$)", re.sub(r"\s+", " ", plain))
    return dict(pair.split(" is ") for pair in said.group(1).split("; ")) if said else {}


@pytest.mark.parametrize("model", ["deep-sequential", "moduledict-key"])
def test_a_few_long_names_are_shortened_and_every_row_keeps_its_shape(ip, run_ok, model):
    bundle, reference = _shown(ip, run_ok, model)
    plain = bundle["text/plain"]
    full = _said_in_full(plain)
    rows = {}
    for line in plain.splitlines():
        m = ROW.match(line)
        if m:
            rows[full.get(m.group(1), m.group(1))] = (m.group(2), float(m.group(3)))
    assert set(rows) == {_spelled(n) for n in reference}, plain  # every row, by its name
    assert full and all("…" in short and len(short) < len(name) for short, name in full.items())
    for name, grads in reference.items():
        shape, norm = rows[_spelled(name)]
        assert shape == " × ".join(map(str, grads.shape[1:])), (name, plain)
        assert norm == pytest.approx(float(grads.norm()), rel=6e-3), (name, plain)
    assert max(map(len, plain.splitlines())) <= 100
    for fmt in ("text/markdown", "text/latex"):
        text = bundle[fmt]
        assert text.count(r"{\ldots}") == len(full), fmt  # the same names shortened
        flat = re.sub(r"\$|`|\\texttt\{|\}|\\allowbreak\\mkern-10mu\\;\\;", "", text)
        for short, name in full.items():
            assert f"{short} is {name}" in flat.replace("\\_", "_"), (fmt, name)


def test_names_of_like_lengths_are_not_shortened(ip, run_ok):
    bundle, _ = _shown(ip, run_ok, "even-lengths")
    for text in bundle.values():
        assert "…" not in text and r"\ldots" not in text and "Shortened" not in text


@pytest.mark.parametrize("name, limit, expected", [
    ("net.proj.parametrizations.weight.original1", 25, "net.proj…weight.original1"),
    ("net.proj.parametrizations.weight.original1", 20, "net…weight.original1"),
    ("net.feature_extractor[1][1][1].weight", 24, "net…[1][1][1].weight"),
    ("net.heads.sentiment_classifier_for_reviews.bias", 20, "net.heads…bias"),
    ("net.blocks[3][0].bias", 14, None),  # only the indices could go: never
    ("net.blocks['a.b.c'].weight", 20, "net…['a.b.c'].weight"),  # (a key's dots: no parts)
    ("short", 10, "short"),
])
def test_shorten_keeps_the_ends_and_every_index(name, limit, expected):
    assert shorten(name, limit) == expected


def test_a_long_name_in_the_derivatives_display_leaves_a_small_matrix_whole(ip, run_ok):
    run_ok("from torch import nn\nfrom torch.nn.utils import parametrizations\n"
           "torch.manual_seed(0)\nclassifier_projection_layer = nn.Linear(3, 2)\n"
           "parametrizations.weight_norm(classifier_projection_layer)\nx = torch.randn(3)")
    name = "classifier_projection_layer.parametrizations.weight.original1"
    r = run_ok(f"%%vjp --wrt {name}\ny = torch.tanh(classifier_projection_layer(x))")
    bundle = r._repr_mimebundle_()
    plain = (bundle[0] if isinstance(bundle, tuple) else bundle)["text/plain"]
    rows = [line for line in plain.splitlines() if re.search(r"\[[^\]]*\d[^\]]*\]\s*$", line)]
    assert rows and not any("..." in row for row in rows), plain


# -- R3-6's class: LaTeX sentences of long code names ----------------------------------------
PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage{amsmath}\usepackage{amssymb}\usepackage{fontspec}\usepackage{unicode-math}
\usepackage{fancyvrb}
\usepackage{geometry}\geometry{tmargin=1in,bmargin=1in,lmargin=1in,rmargin=1in}
\begin{document}
"""


def _overfull(body: str, tmp_path) -> list:
    (tmp_path / "out.tex").write_text(PREAMBLE + body + "\n\\end{document}\n")
    run = subprocess.run(["xelatex", "-interaction=nonstopmode", "-halt-on-error", "out.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    log = (tmp_path / "out.log").read_text(errors="replace")
    assert run.returncode == 0 and "Missing character" not in log, log[-3000:]
    return [float(w) for w in re.findall(r"Overfull \\hbox \((\d+\.?\d*)pt too wide\)", log)
            if float(w) > 5.0]


NAMES = ["encoder.layers[0].self_attention.in_proj_weight", "net.frozen.weight",
         "backbone.stages[3].blocks[2].pointwise.bias", ".requires_grad_()",
         "model.parametrizations.weight.original1", "r.derivatives['net.emb.weight']"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("xelatex") is None, reason="needs xelatex")
@pytest.mark.parametrize("count", [2, 6, 24])
def test_a_sentence_of_long_code_names_fits_the_page(tmp_path, count):
    names = [NAMES[k % len(NAMES)] for k in range(count)]
    body = "Left out, frozen: " + ", ".join(inline_code(n) for n in names) + \
        "; call " + inline_code(".requires_grad_()") + " on those wanted."
    assert _overfull(body, tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("xelatex") is None, reason="needs xelatex")
def test_a_long_list_of_frozen_layers_fits_the_page(ip, run_ok, tmp_path):
    run_ok("import torch.nn.functional as F\nfrom torch import nn\ntorch.manual_seed(0)\n"
           "net = nn.ModuleDict({'frozen_projection_%d' % k: nn.Linear(3, 3) for k in range(8)})"
           "\nnet.requires_grad_(False)\nnet.trainable_head = nn.Linear(3, 2)\n"
           "x = torch.randn(4, 3); t = torch.randint(0, 2, (4,))")
    r = run_ok("%%vjp --wrt net\nlosses = F.cross_entropy(net.trainable_head("
               "net.frozen_projection_0(x)), t, reduction='none')")
    bundle = r._repr_mimebundle_()
    latex = (bundle[0] if isinstance(bundle, tuple) else bundle)["text/latex"]
    flat = re.sub(r"\\allowbreak\\mkern-10mu\\;\\;|\\texttt\{|\}|\$", "", latex)
    assert "net.frozen_projection_0.weight" in flat.replace("\\_", "_")
    assert _overfull(latex, tmp_path) == []
