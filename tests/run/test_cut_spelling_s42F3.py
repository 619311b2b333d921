"""A cut note names what the cell wrote, on its line, and the inputs as the display spells
them (s42 R3-5, R3-6: other members of the classes).

Which line holds what is read off the cells below (their source), never off the code under
test; a mechanism the source does not tell is said generically, never named wrongly.
"""
from __future__ import annotations

import re

import pytest

from vjp_magic.render import notation

SETUP = '''import torch.nn.functional as F
from torch import nn
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
x, t = torch.randn(5, 4), torch.randint(0, 3, (5,))'''
LOSS = 'losses = F.cross_entropy(m[2](h), t, reduction="none")'

# the cell's body before LOSS, the words the note must hold, the line they are on
CUTS = {
    "inference_mode-block": (
        "with torch.inference_mode():\n    h = m[:2](x)\nh = h.clone()",
        "torch.inference_mode() on line 1"),
    "set_grad_enabled-with": (
        "with torch.set_grad_enabled(False):\n    h = m[:2](x)",
        "torch.set_grad_enabled(False) on line 1"),
    "set_grad_enabled-statement-later-line": (
        "a = 1\ntorch.set_grad_enabled(False)\nh = m[:2](x)\ntorch.set_grad_enabled(True)",
        "torch.set_grad_enabled(False) on line 2"),
    "no_grad-decorator": (
        "@torch.no_grad()\ndef first(a):\n    return m[:2](a)\nh = first(x)",
        "@torch.no_grad() on line 1"),
    "no_grad-nested-with": (
        "with torch.enable_grad():\n    with torch.no_grad():\n        h = m[:2](x)",
        "torch.no_grad() on line 2"),
    "parameters-frozen-in-a-loop": (
        "for p in m[0].parameters():\n    p.requires_grad_(False)\nh = m[:2](x)\n"
        "m[0].requires_grad_(True)",
        "p.requires_grad_(False) on line 2"),
}


def _plain(r) -> str:
    bundle = r._repr_mimebundle_()
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    return re.sub(r"\s+", " ", bundle["text/plain"])


@pytest.mark.parametrize("case", list(CUTS))
def test_the_cut_note_names_the_cells_own_switch_on_its_line(ip, run_ok, case):
    run_ok(SETUP)
    body, words = CUTS[case]
    r = run_ok(f"%%vjp --wrt m\n{body}\n{LOSS}")
    plain = _plain(r)
    assert "graph is cut" in plain and words in plain, plain
    if "no_grad" not in body:
        assert "no_grad" not in plain, plain
    assert float(r.derivatives["m.0.weight"].abs().max()) == 0.0  # the graph as computed


def test_a_switch_the_source_does_not_tell_is_said_generically(ip, run_ok):
    """Grad turned off by a context entered by hand: the note says the call ran with
    gradients off, on the call's own line, and names no switch on a line it is not on."""
    run_ok(SETUP)
    body = "off = torch.no_grad()\noff.__enter__()\nh = m[:2](x)\noff.__exit__(None, None, None)"
    plain = _plain(run_ok(f"%%vjp --wrt m\n{body}\n{LOSS}"))
    assert "graph is cut" in plain and "gradients off" in plain, plain
    assert "m[:2](x) on line 3" in plain, plain
    assert "no_grad() on line 3" not in plain and "no_grad() on line 2" not in plain, plain


def test_a_note_about_a_value_read_names_parameters_as_the_display_does(ip, run_ok):
    run_ok(SETUP)
    r = run_ok("%%vjp --wrt m\ny = m(x)\nif y.sum().item() > 0:\n    y = y * 2")
    for fmt, text in r._repr_mimebundle_()[0].items() if isinstance(
            r._repr_mimebundle_(), tuple) else r._repr_mimebundle_().items():
        text = re.sub(r"r\.derivatives\[[^\]]*\]", "", text)
        assert "m[0].weight" in text and not re.search(r"\bm\.\d", text), (fmt, text)


@pytest.mark.parametrize("fmt", ["text/plain", "text/markdown", "text/latex"])
def test_explain_names_parameters_as_the_display_does(ip, run_ok, fmt):
    run_ok(SETUP)
    r = run_ok("%%vjp --wrt m --explain\nlosses = F.cross_entropy(m(x), t, reduction='none')")
    bundle = r._repr_mimebundle_()
    text = (bundle[0] if isinstance(bundle, tuple) else bundle)[fmt]
    text = re.sub(r"r\.derivatives\[[^\]]*\]", "", text)
    assert "J is not block-diagonal" in text, text
    assert not re.search(r"\bm\.\d", text), text


def test_the_cut_note_spells_a_module_dict_key_as_python(ip, run_ok):
    run_ok("from torch import nn\ntorch.manual_seed(0)\n"
           "net = nn.ModuleDict({'enc-1': nn.Linear(4, 4), 'out': nn.Linear(4, 2)})\n"
           "x = torch.randn(3, 4)")
    r = run_ok("%%vjp --wrt net\nh = net['enc-1'](x).detach()\ny = net['out'](h)")
    plain = _plain(r)
    assert "graph is cut" in plain and "net['enc-1'].weight" in plain, plain
    assert "net.enc-1" not in plain, plain


@pytest.mark.parametrize("shape", [(), (5,), (3, 2), (1, 1), (1200, 3)])
def test_a_shape_reads_the_same_in_maths_and_text(shape):
    dims = notation.dims_math(shape)
    tex = re.sub(r"\\mathrm\{([^}]*)\}", r"\1", dims.tex).replace(r" \times ", " × ")
    assert tex.replace("{,}", ",") == dims.plain == (
        " × ".join(f"{n:,}" for n in shape) or "scalar")


@pytest.mark.parametrize("case", ["set_grad_enabled-statement-later-line", "no_grad-decorator",
                                  "inference_mode-block"])
def test_the_switch_is_named_without_source_positions(ip, run_ok, monkeypatch, case):
    """Python 3.10 has no instruction positions: the switch is still read off its line."""
    import vjp_magic.run.cuts as cuts
    monkeypatch.setattr(cuts, "_written_at", lambda code, lasti: None)
    run_ok(SETUP)
    body, words = CUTS[case]
    plain = _plain(run_ok(f"%%vjp --wrt m\n{body}\n{LOSS}"))
    assert "graph is cut" in plain and words in plain, plain


F3_1 = ("F3-1 (found in s42 F3): a weight frozen for one call alone (m[0].weight."
        "requires_grad_(False) ... (True), its bias left trainable) gets no cut note, and "
        "r.derivatives['m.0.weight'] is nonzero, the formula's, where the cell's graph has no "
        "path to the weight (autograd gives None) and the whole layer frozen so reads 0 with "
        "the note; class: a freeze of some of a call's inputs is not a cut the record sees")


def test_a_weight_frozen_for_one_call_is_named_as_a_cut(ip, run_ok):
    run_ok(SETUP)
    body = "m[0].weight.requires_grad_(False)\nh = m[:2](x)\nm[0].weight.requires_grad_(True)"
    r = run_ok(f"%%vjp --wrt m\n{body}\n{LOSS}")
    plain = _plain(r)
    assert "graph is cut" in plain and "m[0].weight.requires_grad_(False) on line 1" in plain, \
        plain
    assert float(r.derivatives["m.0.weight"].abs().max()) == 0.0  # the graph as computed
