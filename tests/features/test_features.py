"""The feature contract (``vjp_magic/features``): each feature one module that says whether it
is wanted, whether it replays the record, and what it adds; the pipeline runs the list.

- a feature that is not wanted costs nothing: neither it nor its module's work is called;
- the list's order is the order of the sections above and below the derivatives;
- flags reach a feature by name, from the magic's ``@argument`` lines, with no field of their
  own on the request;
- the subjects keep the typed ``Subject`` protocol.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import vjp_magic
from vjp_magic import features, pipeline
from vjp_magic.features import Added, Feature
from vjp_magic.pipeline import FEATURES, FLAGS, Request
from vjp_magic.render.document import Section, paragraph
from vjp_magic.run.choose import FromCell, FromExpression, Given, Subject

CELL = "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2"


def _fake(word: str, *, flags=(), after: str | None = None, stored=None):
    """A feature that writes ``word`` above the derivatives (and ``after`` below them)."""
    calls = []

    def add(result, request, subject):
        calls.append(request)
        return Added(before=(Section((paragraph(word),)),),
                     after=(Section((paragraph(after),)),) if after else (),
                     stored=stored or {})

    return SimpleNamespace(flags=flags, orders=(1,), replays_record=False, add=add, calls=calls)


def _given(output_power: int = 2):
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    return Given(x**output_power, x)


# -- the contract --------------------------------------------------------------------------------
@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.__name__.rsplit(".", 1)[-1])
def test_every_feature_module_keeps_the_contract(feature):
    assert isinstance(feature, Feature)
    assert set(feature.orders) <= {1, 2} and isinstance(feature.replays_record, bool)


def test_every_flag_is_an_argument_of_a_magic(ip):
    """Adding a flag is one feature module plus one @argument line: the magics hand every
    flag the features declare to the request by that name."""
    from vjp_magic.magics import VJPMagics

    magics = ip.magics_manager.registry[VJPMagics.__name__]
    dests = {action.dest for magic in (magics.vjp, magics.jacobian, magics.hessian)
             for action in magic.parser._actions}
    assert set(FLAGS) <= dests
    assert set(FLAGS) >= {"check", "reveal", "gradcheck", "explain", "code", "symbolic",
                          "picture"}


def test_a_flag_reaches_its_feature_by_name():
    shout = _fake("LOUD", flags=("shout",))
    quiet = pipeline.pipeline(_given(), Request(), features=[shout])
    loud = pipeline.pipeline(_given(), Request(flags={"shout": True}), features=[shout])
    assert "LOUD" not in repr(quiet) and "LOUD" in repr(loud) and len(shout.calls) == 1
    assert shout.calls[0].flag("shout") is True and shout.calls[0].flag("whisper") is None


def test_the_lists_order_is_the_sections_order():
    a, b = _fake("Alpha", after="Omega"), _fake("Beta", after="Psi")
    shown = repr(pipeline.pipeline(_given(), Request(), features=[a, b]))
    assert shown.index("Alpha") < shown.index("Beta") < shown.index("Omega") < shown.index("Psi")
    shown = repr(pipeline.pipeline(_given(), Request(), features=[b, a]))
    assert shown.index("Beta") < shown.index("Alpha") < shown.index("Psi") < shown.index("Omega")
    derivatives = shown.index("2x") if "2x" in shown else shown.index("-4")
    assert shown.index("Alpha") < derivatives < shown.index("Psi")


def test_what_a_feature_stores_is_on_the_result_built_once():
    noted = _fake("Noted", stored={"notes": ["a note of the feature's"]})
    r = pipeline.pipeline(_given(), Request(), features=[noted])
    assert r.notes == ["a note of the feature's"] and r.view is not None


def test_a_feature_at_another_order_is_not_called():
    first_only = _fake("First")
    h = pipeline.pipeline(_given(3), Request(order=2), features=[first_only])
    assert h.order == 2 and not first_only.calls and "First" not in repr(h)
    with pytest.raises(ValueError, match="order is 1 or 2"):
        Request(order=3)


# -- not wanted, not called --------------------------------------------------------------------
def _refuse(*_, **__):
    raise AssertionError("a feature that was not asked for was called")


def test_a_feature_not_asked_for_costs_nothing(monkeypatch, run_vjp):
    for feature in FEATURES:
        if feature.flags:  # coaching, without a flag, is always there for first derivatives
            monkeypatch.setattr(feature, "add", _refuse)
    monkeypatch.setattr("vjp_magic.run.gradcheck.gradcheck", _refuse)
    monkeypatch.setattr("vjp_magic.teach.grading.grade", _refuse)
    monkeypatch.setattr("vjp_magic.run.persample.per_sample_jacobians", _refuse)
    r = run_vjp(CELL)
    assert r.check is None and r.gradcheck is None and r.symbolic == {} and r.crosscheck == {}
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    assert vjp_magic.differentiate(x**2, x).view.hidden is False
    assert vjp_magic.hessian(torch.sin(x), x).symbolic == {}


def test_a_feature_asked_for_is_called_once(monkeypatch, run_vjp):
    calls = []
    real = features.gradcheck.add
    monkeypatch.setattr(features.gradcheck, "add", lambda *a: calls.append(a) or real(*a))
    r = run_vjp(CELL, "--gradcheck")
    assert len(calls) == 1 and r.gradcheck is not None and r.gradcheck.ok


# -- the subject ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [FromCell, FromExpression, Given])
def test_every_subject_has_what_the_pipeline_reads(kind):
    for name in ("record", "namespace", "scope", "log", "output_source", "output", "inputs"):
        assert hasattr(kind, name) or name in kind.__dataclass_fields__, (kind, name)


def test_a_given_subject_is_a_subject():
    assert isinstance(_given(), Subject)
