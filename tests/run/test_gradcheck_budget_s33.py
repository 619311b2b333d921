"""--gradcheck's count budget (session 33, F2): ``gradcheck(passes=N)``, or the module's
``PASSES`` default, stops sampling after N checks instead of at a wall-clock deadline, so a
verdict is the same on a loaded machine as on an idle one; the user's time budget is
unchanged. Expected counts follow from the rule (the first entry of each input is always
checked, each further check costs one pass), never from the code's output."""
from __future__ import annotations

import torch

import vjp_magic.run.gradcheck as gradcheck_module
from vjp_magic.run.gradcheck import MAX_SECONDS, gradcheck
from vjp_magic.run.record import recording


def product(n: int = 100):
    x = torch.linspace(-1, 1, n, dtype=torch.float64, requires_grad=True)
    w = torch.linspace(0.5, 2, n, dtype=torch.float64, requires_grad=True)
    with recording() as rec:
        y = x * w
    return rec, {"x": x, "w": w}, y


def test_the_count_stops_sampling_at_the_same_place_every_time():
    for _ in range(2):
        rec, inputs, y = product()
        report = gradcheck(rec, inputs, y, ["x", "w"], passes=10)
        # x: its first entry and 9 more (10 passes); w: its first entry only
        assert report.checked == {"x": 10, "w": 1}
        assert report.ok is None and report.passes == 10 and report.stopped is None
        assert "Sampling stopped after 10 checks" in report.note


def test_a_count_budget_is_not_timed():
    """A deadline already past, yet every entry checked: the count decides, not the clock."""
    rec, inputs, y = product(20)
    report = gradcheck(rec, inputs, y, ["x", "w"], seconds=0.0, passes=1000)
    assert report.checked == {"x": 20, "w": 20}
    assert report.ok is True and report.passes is None and report.note is None


def test_the_time_budget_stays_the_users_default(monkeypatch):
    monkeypatch.setattr(gradcheck_module, "PASSES", None)  # the user's time budget
    rec, inputs, y = product()
    report = gradcheck(rec, inputs, y, ["x", "w"], seconds=0.0)
    assert report.checked == {"x": 1, "w": 1} and report.ok is None
    assert report.stopped == 0.0 and report.passes is None
    assert MAX_SECONDS == 10.0  # what the user gets, as before


def test_the_module_default_reaches_the_magic(run_vjp, monkeypatch):
    monkeypatch.setattr(gradcheck_module, "PASSES", 0)
    r = run_vjp("x = torch.linspace(-1, 1, 100, dtype=torch.float64, requires_grad=True)\n"
                "y = torch.sin(x)", "--gradcheck")
    assert r.gradcheck.ok is None and r.gradcheck.checked == {"x": 1}
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "sampling stopped after 0 checks" in text
