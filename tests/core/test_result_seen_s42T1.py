"""A result read after the user changed its input tensors (R1-3's class): every read is what
the analysis saw (shape, dtype, device, names, the numbers), whatever the user does to the
tensor afterwards: new data of another shape (``x.data = ...``), ``resize_``,
``requires_grad_(False)``, a ``.grad`` set, the name bound to another tensor or deleted, the
values changed in place.

Expected reads: a twin result, made the same way from a tensor of the same values, read
before anything was changed (the numbers also against ``torch.func.jacrev`` /
``torch.func.hessian``).
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic


def _stencil(x):
    return torch.nn.functional.pad(x, (1, 1))[2:] * x - x.roll(1)


def _leaf():
    return torch.linspace(-1.0, 1.0, 6, requires_grad=True)


def _change_data(x, y):
    x.data = torch.zeros(7, dtype=torch.float64)


def _resize(x, y):
    x.requires_grad_(False)
    x.resize_(2, 5)


def _no_grad(x, y):
    x.requires_grad_(False)


def _grad(x, y):
    x.grad = torch.full((6,), 7.0)


def _in_place(x, y):
    with torch.no_grad():
        x.mul_(-3).add_(5)


def _output_changed(x, y):
    with torch.no_grad():
        y.mul_(0).add_(3)
    y.data = torch.zeros(9, 2)


_CHANGES = {"x.data = zeros(7) float64": _change_data, "x.resize_(2, 5)": _resize,
            "x.requires_grad_(False)": _no_grad, "x.grad = ...": _grad,
            "x *= -3; x += 5 (no_grad)": _in_place, "y *= 0; y.data = ...": _output_changed}


def _bundle(r) -> dict:
    return {k: v for k, v in r._repr_mimebundle_().items() if isinstance(v, str)}


def _first_order_reads(r) -> dict:
    """Every public read of a first-order result, as plain values to compare."""
    d = r.dependency("x")
    return {
        "jacobian": r.jacobian("x"),
        "csr": r.jacobian("x", layout=torch.sparse_csr).to_dense(),
        "block": r.jacobian_block("x", torch.arange(3), torch.tensor([0, 2, 5])),
        "dependency": (d.kind, d.describe(), d.pattern.tolist()),
        "derivatives": r.derivatives["x"].to_dense() if r.derivatives["x"].is_sparse
        else r.derivatives["x"],
        "gradients": [v.clone() for v in r.gradients["x"]],
        "tangents": [u.clone() for u in r.tangents["x"]],
        "point_axes": r.point_axes["x"],
        "repr": repr(r),
        "bundle": _bundle(r),
        "code": r.code,
        "picture": (r.picture("x").png, r.picture("x").alt),
    }


def _same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=where)
    elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
        assert len(a) == len(b), where
        for k, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}[{k}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("change", list(_CHANGES), ids=list(_CHANGES))
@pytest.mark.parametrize("f", [_stencil, lambda x: x ** 3, lambda x: torch.outer(x, x).sum(1)],
                         ids=["sparse", "points", "dense"])
def test_every_read_of_a_result_is_what_the_analysis_saw(f, change):
    twin, x = _leaf(), _leaf()
    expected = _first_order_reads(vjp_magic.differentiate(f(twin), twin, names=["x"], seed=0))
    y = f(x)
    r = vjp_magic.differentiate(y, x, names=["x"], seed=0)
    _CHANGES[change](x, y)
    for key, value in _first_order_reads(r).items():
        _same(value, expected[key], key)
    torch.testing.assert_close(expected["jacobian"], torch.func.jacrev(f)(_leaf().detach()))


_CELL = ("x = torch.linspace(-1, 1, 6, requires_grad=True)\n"
         "y = torch.nn.functional.pad(x, (1, 1))[2:] * x")


@pytest.mark.parametrize("cell", [f"%%vjp {line}\n{_CELL}" for line in
                                  ["", "--explain", "--gradcheck", "--symbolic", "--picture",
                                   "--full", "--present"]]
                         + [f"{_CELL}\nz = (y ** 2).sum()\n", f"{_CELL}\n"],
                         ids=["vjp", "explain", "gradcheck", "symbolic", "picture", "full",
                              "present", "%hessian", "%jacobian"])
def test_a_cells_result_read_after_x_got_new_data(ip, run_ok, cell):
    second = "%hessian z wrt x" if cell.endswith("sum()\n") else \
        "%jacobian y wrt x" if cell.endswith("\n") else None
    runs = [run_ok(cell) if second is None else (run_ok(cell), run_ok(second))[1]
            for _ in range(2)]
    expected, r = runs
    shown = _cell_reads(expected)
    run_ok("x.data = torch.zeros(7, dtype=torch.float64)")
    for key, value in _cell_reads(r).items():  # (IPython displayed each: its text is kept)
        _same(value, shown[key], key)


def _cell_reads(r) -> dict:
    if r.order == 2:
        return {"hessian": r.hessian("x"), "csr": r.hessian("x", layout=torch.sparse_csr)
                .to_dense(), "bundle": _bundle(r)}
    return {"jacobian": r.jacobian("x"), "block": r.jacobian_block("x", [0, 5], [1, 2]),
            "dependency": r.dependency("x").describe(), "code": r.code,
            "picture": r.picture("x").png, "bundle": _bundle(r), "repr": repr(r)}


def test_a_result_read_after_its_input_is_deleted_and_the_name_rebound(ip, run_ok):
    cell = "%%vjp --explain\nx = torch.linspace(-1, 1, 6, requires_grad=True)\ny = x.sin() * x"
    expected = run_ok(cell)
    expected_reads = (_bundle(expected), expected.jacobian("x"), expected.code)
    r = run_ok(cell)
    run_ok("x = torch.zeros(3, 3, dtype=torch.float64)")  # the name now another tensor's
    run_ok("del x")
    assert (_bundle(r), r.code) == (expected_reads[0], expected_reads[2])
    torch.testing.assert_close(r.jacobian("x"), expected_reads[1], rtol=0, atol=0)


def test_a_parameters_result_keeps_its_shapes_and_names_after_reinitialising(ip, run_ok):
    setup = ("torch.manual_seed(0)\nnet = torch.nn.Sequential(torch.nn.Linear(3, 2))\n"
             "x = torch.randn(4, 3)")
    run_ok(setup)
    expected = run_ok("%%vjp --wrt net\ny = net(x).tanh()")
    expected_reads = (_bundle(expected), expected.jacobian("net.0.weight"), expected.code)
    run_ok(setup)
    r = run_ok("%%vjp --wrt net\ny = net(x).tanh()")
    run_ok("net[0].weight.data = torch.zeros(5, 7)\nnet = torch.nn.Linear(9, 9)")
    assert (_bundle(r), r.code) == (expected_reads[0], expected_reads[2])
    torch.testing.assert_close(r.jacobian("net[0].weight"), expected_reads[1], rtol=0, atol=0)


def _hessian_reads(h) -> dict:
    return {"hessian": h.hessian("x"), "csr": h.hessian("x", layout=torch.sparse_csr).to_dense(),
            "derivatives": h.derivatives["x"].to_dense() if h.derivatives["x"].is_sparse
            else h.derivatives["x"], "repr": repr(h), "bundle": _bundle(h)}


@pytest.mark.parametrize("change", list(_CHANGES), ids=list(_CHANGES))
@pytest.mark.parametrize("f", [lambda x: (x ** 3).sum() + (x[1:] * x[:-1]).sum(),
                               lambda x: x.sin() * x], ids=["scalar", "points"])
def test_every_read_of_a_hessian_is_what_the_analysis_saw(f, change):
    twin, x = _leaf(), _leaf()
    expected = _hessian_reads(vjp_magic.hessian(f(twin), twin, names=["x"], seed=0))
    y = f(x)
    h = vjp_magic.hessian(y, x, names=["x"], seed=0)
    _CHANGES[change](x, y)
    for key, value in _hessian_reads(h).items():
        _same(value, expected[key], key)
    full = torch.func.jacrev(torch.func.jacrev(f))(_leaf().detach())
    torch.testing.assert_close(expected["hessian"], full)


def test_no_read_of_a_result_takes_an_inputs_shape_from_its_live_tensor():
    """The display (render/) and the result's own reads ask the record (``item.shape``,
    ``item.numel()``, ...: core/result.SeenInput), never ``item.tensor.shape``."""
    import pathlib
    import re

    package = pathlib.Path(vjp_magic.__file__).parent
    live = re.compile(r"\.tensor\.(shape|numel|dtype|device|dim|element_size|is_leaf|layout)\b")
    files = [*sorted((package / "render").rglob("*.py")), package / "core" / "result.py",
             package / "core" / "dependency.py"]
    found = [f"{path.relative_to(package)}:{k}" for path in files
             for k, line in enumerate(path.read_text().splitlines(), 1) if live.search(line)]
    assert found == []
