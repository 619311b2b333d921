"""What a cell's text determines is kept by the text and the shell state that determines it
(``run/execute.py``: IPython's static input transforms, the parsed cell and its code), and
what is not kept still runs every time: the dynamic transforms, AST transformers, a
``__future__`` import's flags. Also the recorded calls' tensors, noted once per call
(``run/record.py``: ``outs_of``, ``reads_of``), and the cut finder's early answer."""
from __future__ import annotations

import ast

import torch

from vjp_magic.run import execute
from vjp_magic.run.cuts import find_cuts
from vjp_magic.run.execute import run_cell, transform_cell
from vjp_magic.run.record import KeptRecord, outs_of, reads_of, recording, tensors_in

TEXTS = ["y = x * 2\n", "y = x * 2", "%time y = x * 2\n", "a = !echo hi\ny = x", "x?",
         "  y = x\n", "y = x\n%time z = y\n", "%%time\ny = x\n", ""]


def test_transform_is_ipythons_own_every_time(ip):
    for text in TEXTS * 2:  # the second round from what was kept
        assert transform_cell(ip, text) == ip.transform_cell(text), text
    assert "transform_cell" not in vars(ip.input_transformer_manager)  # nothing left behind


def test_a_static_transformer_added_later_is_used(ip, run_vjp):
    ip.user_ns["x"] = torch.tensor([1.0, 2.0], requires_grad=True)
    cell = "y = x * 2.0"
    assert run_vjp(cell).derivatives["x"].tolist() == [2.0, 2.0]

    def three(lines):
        return [line.replace("2.0", "3.0") for line in lines]

    ip.input_transformer_manager.line_transforms.append(three)
    try:
        assert run_vjp(cell).derivatives["x"].tolist() == [3.0, 3.0]
    finally:
        ip.input_transformer_manager.line_transforms.remove(three)
    assert run_vjp(cell).derivatives["x"].tolist() == [2.0, 2.0]


def test_dynamic_transforms_run_every_time(ip, monkeypatch):
    seen = []
    prefilter = ip.prefilter_manager.prefilter_lines

    def spy(lines, *args, **kwargs):
        seen.append(lines)
        return prefilter(lines, *args, **kwargs)

    monkeypatch.setattr(ip.prefilter_manager, "prefilter_lines", spy)
    ip.user_ns["x"] = torch.tensor([1.0], requires_grad=True)
    for _ in range(3):
        run_cell(ip, "y = x * 2").release()
    assert len(seen) == 3  # a single line goes through IPython's prefilter each run


class _Counting(ast.NodeTransformer):
    """Makes every 2.0 a 5.0, counting the trees it saw."""

    def __init__(self):
        self.trees = 0

    def visit_Module(self, node):
        self.trees += 1
        return self.generic_visit(node)

    def visit_Constant(self, node):
        return ast.Constant(5.0) if node.value == 2.0 else node


def test_ast_transformers_see_a_fresh_tree_every_run(ip):
    ip.user_ns["x"] = torch.tensor([1.0, 2.0], requires_grad=True)
    cell = "y = x * 2.0"

    def y_after_a_run():
        run = run_cell(ip, cell)
        run.release()
        return ip.user_ns["y"].tolist()

    assert y_after_a_run() == [2.0, 4.0]
    counting = _Counting()
    ip.ast_transformers.append(counting)
    try:
        for runs in (1, 2):
            assert y_after_a_run() == [5.0, 10.0]
            assert counting.trees == runs
    finally:
        ip.ast_transformers.remove(counting)
    assert y_after_a_run() == [2.0, 4.0]


def test_a_future_import_cell_runs_again_under_its_flags(ip):
    cell = ("from __future__ import annotations\n"
            "def f(a: NotDefinedAnywhere) -> int:\n    return 1\n"
            "x = torch.ones(2, requires_grad=True)\ny = x * f(0)")
    for _ in range(3):  # the annotation is never evaluated: the future flag is in force
        run = run_cell(ip, cell)
        assert "y" in run.assigned and torch.equal(ip.user_ns["y"], torch.ones(2))
        run.release()


def test_each_run_gets_its_own_target_lists(ip):
    ip.user_ns["x"] = torch.ones(2, requires_grad=True)
    first = run_cell(ip, "d = {}\nd['y'] = x * 2")
    first.cell.targets.append("changed by a caller")
    second = run_cell(ip, "d = {}\nd['y'] = x * 2")
    assert second.cell.targets == ["d", "d['y']"]
    assert second.targets["d['y']"] is ip.user_ns["d"]["y"]
    first.release()
    second.release()


def test_a_new_file_name_compiles_again(ip):
    ip.user_ns["x"] = torch.ones(2, requires_grad=True)
    names = []
    for count in (7, 8):
        ip.execution_count = count
        run = run_cell(ip, "def g():\n    return x * 2\ny = g()")
        names.append(ip.user_ns["g"].__code__.co_filename)
        run.release()
    assert names[0] != names[1]  # each run's code names its own cell (tracebacks)
    assert len(execute._COMPILED) <= execute._KEPT_MAX


def test_noted_tensors_are_tensors_in_the_call():
    w = torch.randn(3, 2, requires_grad=True)
    x = torch.randn(4, 2)
    with recording() as record:
        h = torch.nn.functional.linear(x, w)
        parts = h.split(2)
        out = parts[0].sum(0) + parts[1].sum(0)
    for call in record.calls:
        assert reads_of(call) == tuple(tensors_in((call.args, call.kwargs)))
        assert outs_of(call) == tuple(tensors_in(call.result)) + tuple(call.targets)
    kept = KeptRecord(record, out)  # the output swapped for an alias, and back
    again = kept.record()
    assert any(t is out for call in again.calls for t in outs_of(call))
    assert not any(t is out for call in record.calls for t in outs_of(call))


def test_cuts_answer_early_only_where_nothing_left_autograd():
    x = torch.randn(3, requires_grad=True)
    with recording() as clean:
        y = (x * 2).sin()
    assert find_cuts(clean, {"x": x}, y) == ()
    with recording() as cut:
        z = x.detach() * x
    found = find_cuts(cut, {"x": x}, z)
    assert len(found) == 1 and "detach" in found[0].op
