"""Per-sample gradients on the cell's own graph, with no replay, only where no backward of it
can run the user's code (``run/hookfree.runs_no_user_code``): every kind of user code a
backward could run (tensor, node, module and leaf hooks, ``retain_grad``, a custom
Function's backward, a checkpoint's recompute, a saved-tensor unpack hook) still never runs
during the analysis, and the numbers are each sample's own ``torch.autograd.grad``."""
from __future__ import annotations

import pytest
import torch

from vjp_magic import pipeline
from vjp_magic.run import hookfree

SETUP = """
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
torch.manual_seed(5)
B = 40
model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
data, targets = torch.randn(B, 6), torch.randint(0, 3, (B,))
calls = []
"""
HEAD = "h = model[0](data)\n"
TAIL = "losses = F.cross_entropy(model[2](model[1](h)), targets, reduction='none')\n"

# name -> (before the cell, lines of the cell between HEAD and TAIL)
USER_CODE = {
    "tensor hook": ("", "h.register_hook(lambda g: calls.append('tensor hook'))\n"),
    "node hook": ("", "h.grad_fn.register_hook(lambda gi, go: calls.append('node hook'))\n"),
    "node prehook": ("", "h.grad_fn.register_prehook(lambda go: calls.append('prehook'))\n"),
    "gradient edge": ("", "torch.autograd.graph.get_gradient_edge(h).node.register_prehook("
                          "lambda go: calls.append('edge'))\n"),
    "multi grad hook": ("", "torch.autograd.graph.register_multi_grad_hook("
                            "[h], lambda gs: calls.append('multi'))\n"),
    "module hook": ("model[2].register_full_backward_hook("
                    "lambda m, gi, go: calls.append('module hook'))\n", ""),
    "module prehook": ("model[2].register_full_backward_pre_hook("
                       "lambda m, go: calls.append('module prehook'))\n", ""),
    "leaf hook": ("model[0].weight.register_hook(lambda g: calls.append('leaf hook'))\n", ""),
    "custom function": ("""
class Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        calls.append('custom backward')
        return 2 * g
""", "h = Twice.apply(h)\n"),
    "unpack hook": ("", """
with torch.autograd.graph.saved_tensors_hooks(
        lambda t: t, lambda t: (calls.append('unpack'), t)[1]):
    h = torch.tanh(h)
"""),
    "checkpoint": ("""
def counted(x):
    calls.append('checkpointed forward')
    return torch.tanh(x)
""", "h = checkpoint(counted, h, use_reentrant=False)\n"),
}


def _analysed(monkeypatch) -> list:
    """The analysed graphs the pipeline makes, as they come."""
    made = []
    original = pipeline.analysed_graph

    def spy(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(pipeline, "analysed_graph", spy)
    return made


def _per_sample(losses: torch.Tensor, params: dict) -> dict:
    """name -> (B, *shape): sample b's own torch.autograd.grad in row b (one pass each)."""
    rows = [torch.autograd.grad(loss, list(params.values()), retain_graph=True)
            for loss in losses]
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(params)}


def _cell(ip, before: str, body: str):
    assert ip.run_cell(SETUP + before).success
    result = ip.run_cell("%%vjp --wrt model\n" + HEAD + body + TAIL)
    assert result.success, result.error_in_exec
    return result.result


@pytest.mark.parametrize("kind", list(USER_CODE))
def test_user_code_never_runs_in_the_analysis(ip, monkeypatch, kind):
    """Not the cell's own graph; what ran is what a plain run of the cell runs (a custom
    Function's backward is the one exception, as before: the replay cannot run its forward
    again, so its own graph is differentiated, and a note says so)."""
    made = _analysed(monkeypatch)
    before, body = USER_CODE[kind]
    r = _cell(ip, before, body)
    ns = ip.user_ns
    ran = list(ns["calls"])
    assert not made[-1].proved_free
    if kind == "custom function":
        assert any("own graph" in str(note) for note in r.notes)
        monkeypatch.setattr(hookfree, "OWN_GRAPH_WHEN_FREE", False)
        _cell(ip, before, body)
        assert ran == ns["calls"]  # as many backward calls as the replay's path makes
    else:
        assert ran == (["checkpointed forward"] if kind == "checkpoint" else []), ran
    assert all(p.grad is None for p in ns["model"].parameters())
    params = dict(ns["model"].named_parameters())
    expected = _per_sample(ns["losses"], params)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[f"model.{name}"], value,
                                   rtol=1e-4, atol=1e-6)


def test_retain_grad_is_left_alone(ip, monkeypatch):
    made = _analysed(monkeypatch)
    _cell(ip, "", "h.retain_grad()\n")
    assert not made[-1].proved_free
    assert ip.user_ns["h"].grad is None


@pytest.mark.parametrize("kind", ["accumulator hooks", "post-accumulate hook"])
def test_hooks_on_a_grad_accumulator_never_run(ip, monkeypatch, kind):
    """Hooks on a parameter's grad accumulator (a DDP-style post hook, a prehook) or after
    its accumulation: every pass of the analysis names the parameters as its inputs, whose
    gradients the engine captures without running their accumulator, so the cell's own graph
    may be used, and they still never run."""
    made = _analysed(monkeypatch)
    before = ("acc = model[0].weight.view_as(model[0].weight).grad_fn.next_functions[0][0]\n"
              "acc.register_prehook(lambda go: calls.append('pre'))\n"
              "acc.register_hook(lambda gi, go: calls.append('post'))\n"
              if kind == "accumulator hooks" else
              "model[0].weight.register_post_accumulate_grad_hook("
              "lambda p: calls.append('accumulated'))\n")
    r = _cell(ip, before, "")
    ns = ip.user_ns
    assert ns["calls"] == []
    assert made[-1].proved_free
    expected = _per_sample(ns["losses"], dict(ns["model"].named_parameters()))
    torch.testing.assert_close(r.derivatives["model.0.weight"], expected["0.weight"],
                               rtol=1e-4, atol=1e-6)


def test_plain_model_uses_its_own_graph(ip, monkeypatch):
    """No user code on the way: no replay; the numbers are each sample's own gradient, no
    note, no .grad, and the cell's graph is left usable."""
    made = _analysed(monkeypatch)
    r = _cell(ip, "", "")
    ns = ip.user_ns
    graph = made[-1]
    assert graph.proved_free and not graph.replayed and graph.reason is None
    assert graph.output is ns["losses"]
    assert not any("own graph" in str(note) for note in r.notes)
    params = dict(ns["model"].named_parameters())
    assert all(p.grad is None for p in params.values())
    expected = _per_sample(ns["losses"], params)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[f"model.{name}"], value,
                                   rtol=1e-4, atol=1e-6)
    ns["losses"].sum().backward()  # the user's graph still runs
    torch.testing.assert_close(params["0.weight"].grad, expected["0.weight"].sum(0),
                               rtol=1e-4, atol=1e-6)


def test_same_result_as_the_replay(ip, monkeypatch):
    """The cell's own graph and its replay give the same numbers and display."""
    from vjp_magic.run import persample
    from vjp_magic.core import analysis

    monkeypatch.setattr(persample, "new_seed", lambda: 77)
    monkeypatch.setattr(analysis, "new_seed", lambda: 77)
    own = _cell(ip, "", "")
    monkeypatch.setattr(hookfree, "OWN_GRAPH_WHEN_FREE", False)
    copy = _cell(ip, "", "")
    for name, value in copy.derivatives.items():
        torch.testing.assert_close(own.derivatives[name], value, rtol=1e-6, atol=1e-7)
    assert own._repr_mimebundle_()["text/plain"] == copy._repr_mimebundle_()["text/plain"]


def test_layer_output_written_in_place(ip, monkeypatch):
    """The linear layer's own output written in place: the cell's tensor is not the layer's
    output any more (and a node may have saved it): the replay, and the numbers of each
    sample's own gradient."""
    made = _analysed(monkeypatch)
    r = _cell(ip, "", "h.mul_(2.0)\n")
    assert not made[-1].proved_free
    ns = ip.user_ns
    expected = _per_sample(ns["losses"], dict(ns["model"].named_parameters()))
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[f"model.{name}"], value,
                                   rtol=1e-4, atol=1e-6)


def test_take_recorded_reads_versions():
    """The rules take a recorded layer tensor only at the version it had at its call."""
    from vjp_magic.run import expanded
    from vjp_magic.run.record import recording
    from vjp_magic.run.replay import build

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    data = torch.randn(4, 3)
    with recording() as record:
        h = layer(data)
        losses = (h * h).sum(1)
    params = dict(layer.named_parameters())
    replay = build(record, params, losses, verify=False, at_point=True, user_code=False)
    capture = expanded.rules_interpreter(params, 4)(replay)
    assert capture.take_recorded(record) and len(capture.found) == 1
    data.mul_(1.0)  # the layer's input written after its call
    capture = expanded.rules_interpreter(params, 4)(replay)
    assert not capture.take_recorded(record) and capture.found == []


@pytest.mark.parametrize("kind", [*USER_CODE, "retain_grad", "plain"])
def test_proof_reads_each_kind(ip, kind):
    """``runs_no_user_code`` itself refuses every kind (the pipeline's other guards, the
    hook notes and the replay's refusals, catch some of them first)."""
    from vjp_magic.run.record import recording

    before, body = USER_CODE.get(kind, ("", "h.retain_grad()\n" if kind == "retain_grad"
                                        else ""))
    assert ip.run_cell(SETUP + before).success
    ns = ip.user_ns
    with recording() as record:
        exec(HEAD + body + TAIL, ns)  # noqa: S102 - the cell's lines, run once
    params = dict(ns["model"].named_parameters())
    assert hookfree.runs_no_user_code(record, ns["losses"], params) is (kind == "plain")
    assert ns["calls"] == (["checkpointed forward"] if kind == "checkpoint" else [])


def test_node_hook_registered_past_the_recorder(ip, monkeypatch):
    """A node hook registered with the recorder bypassed (no grad_fn read recorded): the
    record's count of hooks registered while the cell ran refuses it."""
    made = _analysed(monkeypatch)
    _cell(ip, "", "with torch._C.DisableTorchFunction():\n"
                  "    h.grad_fn.register_prehook(lambda go: calls.append('hidden'))\n")
    assert ip.user_ns["calls"] == []
    assert not made[-1].proved_free


def test_a_callable_among_a_calls_arguments_is_code():
    """User code handed to a recorded call would run inside it, unrecorded."""
    assert hookfree._hands_code((torch.ones(2), [1, (2, lambda: 0)]))
    assert hookfree._hands_code([{"f": torch.nn.Linear(2, 2)}])
    assert hookfree._hands_code([[[[[[1]]]]]])  # nested past what is read: not ruled out
    assert not hookfree._hands_code((torch.ones(2), torch.Size([2]), [1, 2.0], {"a": None},
                                     torch.float32, "mean"))


@pytest.mark.parametrize("body", [
    "s = torch.sigmoid(model[0](data))\n"
    "losses = F.cross_entropy(model[2](s * 1.5), targets, reduction='none')\ns.mul_(2.0)\n",
    "s = torch.sigmoid(model[0](data))\nz = s * 1.5\ns.mul_(1.0)\n"
    "losses = F.cross_entropy(model[2](z), targets, reduction='none')\n"],
    ids=["after the output", "between two reads"])
def test_a_saved_value_written_in_place(ip, monkeypatch, body):
    """A value a node saved, written in place later in the cell: the cell's own graph can no
    longer be differentiated (autograd refuses), its replay can (its constants as they were
    at each call): no own graph, and each sample's gradient all the same."""
    made = _analysed(monkeypatch)
    assert ip.run_cell(SETUP).success
    result = ip.run_cell("%%vjp --wrt model --of losses\n" + body)
    assert result.success, result.error_in_exec
    assert not made[-1].proved_free
    ns = ip.user_ns
    model, data, targets = ns["model"], ns["data"], ns["targets"]
    params = dict(model.named_parameters())

    def sample_loss(b):
        s = torch.sigmoid(model[0](data[b:b + 1]))
        return torch.nn.functional.cross_entropy(model[2](s * 1.5), targets[b:b + 1])
    for name, value in params.items():
        expected = torch.stack([torch.autograd.grad(sample_loss(b), value)[0]
                                for b in range(len(data))])
        torch.testing.assert_close(result.result.derivatives[f"model.{name}"], expected,
                                   rtol=1e-4, atol=1e-6)
