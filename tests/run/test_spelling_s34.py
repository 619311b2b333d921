"""A module's parameter is shown as the Python that reaches it, as its own module spells it
(``model.blocks['0'].weight`` in a ModuleDict, ``model.blocks[0].weight`` in a Sequential).
A result keeps its spellings: shown (or its code read) after a module of another structure
took the name ``model``, it still spells its own parameters, while a name typed now is
spelled as the module that holds the name now.

Expected spellings: the Python expressions that reach each parameter (checked by ``eval``).
"""
from __future__ import annotations

import torch
from torch import nn

import vjp_magic
from vjp_magic.core.validation import parameter_expression, spelled_for

_KEYED = "model.blocks['0'].weight"  # a ModuleDict's key '0': no attribute, no index
_INDEXED = "model.blocks[0].weight"  # a Sequential's index


class Keyed(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({"0": nn.Linear(3, 1)})

    def forward(self, x):
        return self.blocks["0"](x)


class Indexed(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(3, 1))

    def forward(self, x):
        return self.blocks(x)


def _two_results():
    """r1 of a Keyed model named ``model``, then r2 of an Indexed one under the same name."""
    torch.manual_seed(0)
    data = torch.randn(4, 3)
    first = Keyed()
    r1 = vjp_magic.differentiate(lambda: first(data).pow(2).sum(), first, names="model")
    second = Indexed()
    r2 = vjp_magic.differentiate(lambda: second(data).pow(2).sum(), second, names="model")
    return (r1, first), (r2, second)


def _tensors(result) -> dict:
    return {name: item.tensor for name, item in result.inputs.items()}


def test_spelling_each_result_keeps_its_own():
    (r1, first), (r2, second) = _two_results()
    assert eval(_KEYED, {"model": first}) is first.blocks["0"].weight  # noqa: S307
    assert eval(_INDEXED, {"model": second}) is second.blocks[0].weight  # noqa: S307
    with spelled_for(_tensors(r1)):
        assert parameter_expression("model.blocks.0.weight") == _KEYED
    with spelled_for(_tensors(r2)):
        assert parameter_expression("model.blocks.0.weight") == _INDEXED


def test_spelling_of_a_name_typed_now_is_the_latest_modules():
    _two_results()
    assert parameter_expression("model.blocks.0.weight") == _INDEXED


def test_spelling_an_old_result_shown_later_spells_its_own_parameters():
    (r1, _), _ = _two_results()
    text = r1._repr_mimebundle_()["text/plain"]  # shown for the first time now
    assert _KEYED in text and _INDEXED not in text, text


def test_spelling_an_old_results_code_reads_its_own_parameters():
    (r1, first), _ = _two_results()
    assert _KEYED in r1.code and _INDEXED not in r1.code, r1.code


def test_spelling_an_old_cells_code_after_the_name_took_another_module(ip, run_ok):
    ip.user_ns.update(Keyed=Keyed, Indexed=Indexed)
    run_ok("torch.manual_seed(0)\nxb = torch.randn(4, 3)\nmodel = Keyed()")
    r1 = run_ok("%%vjp --wrt model\nloss = model(xb).pow(2).sum()")
    run_ok("model = Indexed()")
    run_ok("%%vjp --wrt model\nloss = model(xb).pow(2).sum()")
    assert _KEYED in r1.code and _INDEXED not in r1.code, r1.code


class _KeyedScales(nn.Module):
    def __init__(self):
        super().__init__()
        self.scales = nn.ParameterDict({"0": nn.Parameter(torch.ones(4))})

    def forward(self, x):
        return (x * self.scales["0"]).cumsum(0)


class _ListedScales(nn.Module):
    def __init__(self):
        super().__init__()
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(4))])

    def forward(self, x):
        return (x * self.scales[0]).cumsum(0)


def test_spelling_an_old_results_dependency_note_names_its_own_parameter():
    """r.dependency's underflow note (float32 derivatives of 1e-25) says what to call
    ``.double()`` on: the result's own parameter, as its ParameterDict spells it."""
    data = torch.full((4,), 1e-25)
    first = _KeyedScales()
    r1 = vjp_magic.differentiate(lambda: first(data), first, names="model")
    second = _ListedScales()
    vjp_magic.differentiate(lambda: second(data), second, names="model")
    assert eval("model.scales['0']", {"model": first}) is first.scales["0"]  # noqa: S307
    note = r1.dependency("model.scales.0").note
    assert "model.scales['0'].double()" in note, note
