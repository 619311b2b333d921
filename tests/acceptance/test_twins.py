"""Plain-cell twins: a ``%%vjp`` cell leaves exactly the state the same cell leaves plainly.

Each row is a cell run twice from the same starting state (a fresh namespace, ``import
torch``, ``torch.manual_seed(0)``, the row's setup): once plainly, once under ``%%vjp`` with
the row's flags. Afterwards both must agree on

- how the cell ended: fine, or the same exception (a classic ``backward`` mistake that the
  magic coaches, "The cell stopped at ...", counts as PyTorch's ``RuntimeError``);
- every name in the namespace, compared deeply: tensors with ``torch.equal`` (and NaNs in the
  same places), their ``requires_grad``, whether they have a ``grad_fn``, and their ``.grad``;
  modules' parameters, buffers and attributes (``self.h``) and how many hooks they hold;
  items of lists, tuples and dicts; attributes of plain objects; numbers and strings. Hook
  counters live in the namespace, so they are compared too;
- ``torch.get_rng_state()``, grad mode and the default dtype;
- then a later cell (``loss.backward()``, ``y.sum().backward()``): it raises in both or in
  neither, and leaves the same state again.

No row is marked xfail: a row that fails is a real difference between ``%%vjp`` and a
plain cell.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch

from vjp_magic.core.tagging import is_visible_name

import cells


@dataclass(frozen=True)
class Twin:
    id: str
    cell: str
    after: str | None = None  # a later plain cell: raises in both or in neither
    line: str = ""  # %%vjp's flags
    setup: str = ""
    refused: str = ""  # the magic refuses with a message holding this; the state still agrees


MODULE_WITH_RETAIN_GRAD = """
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
    def forward(self, x):
        self.h = self.lin(x)
        self.h.retain_grad()
        return torch.tanh(self.h)
net = Net()
"""

GRAD_CAM = """
conv = torch.nn.Conv2d(1, 2, 3)
acts, grads = [], []
conv.register_forward_hook(lambda m, i, o: acts.append(o.detach().clone()))
conv.register_full_backward_hook(lambda m, gi, go: grads.append(go[0].detach().clone()))
"""

BACKWARD_HOOK_COUNTER = """
lin = torch.nn.Linear(3, 2)
calls = [0]
def count_call(module, grad_in, grad_out):
    calls[0] += 1
lin.register_full_backward_hook(count_call)
"""

CHECKPOINTED = """
runs = [0]
def block(t):
    runs[0] += 1
    return t.sin() * 2
"""

HOLDER = """
class Holder:
    def __init__(self):
        self.reads = 0
        self._store = [None]
    @property
    def prop(self):
        self.reads += 1
        return self._store
holder = Holder()
"""

MLP = """
mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
X = torch.randn(6, 3)
"""

COUNTED = "count = []\n"
X3 = "x = torch.randn(3, requires_grad=True)\n"

ROWS = [
    # -- hooks on tensors -----------------------------------------------------------------------
    Twin("intermediate_hook_counter", X3 + "h = x * 2\nh.register_hook(lambda g: count.append(1))\n"
         "y = h.sin()", "y.sum().backward()", setup=COUNTED),
    Twin("intermediate_hook_counter_backward_in_cell",
         X3 + "h = x * 2\nh.register_hook(lambda g: count.append(1))\nloss = h.sin().sum()\n"
         "loss.backward()", "loss.backward()", setup=COUNTED),
    Twin("leaf_hook_doubles_gradient_backward_in_cell",
         X3 + "x.register_hook(lambda g: g * 2)\ny = x ** 2\nloss = y.sum()\nloss.backward()",
         "loss.backward()"),
    Twin("leaf_hook_counter", X3 + "x.register_hook(lambda g: count.append(1))\ny = x ** 2",
         "y.sum().backward()", setup=COUNTED),
    Twin("accumulator_hook_no_backward",
         X3 + "h = x.exp()\nh.register_hook(lambda g: total.add_(g))\ny = h * 3",
         "y.sum().backward()", setup="total = torch.zeros(3)\n"),
    Twin("retain_grad_top_level_backward_in_cell",
         X3 + "h = x * 2\nh.retain_grad()\nloss = (h ** 2).sum()\nloss.backward()",
         "loss.backward()"),
    Twin("retain_grad_top_level_no_backward", X3 + "h = x * 2\nh.retain_grad()\ny = h ** 2",
         "y.sum().backward()"),
    Twin("hook_on_the_output", X3 + "y = x.tanh()\ny.register_hook(lambda g: count.append(1))",
         "y.sum().backward()", setup=COUNTED),
    Twin("hook_removed_in_cell",
         X3 + "h = x * 2\nhandle = h.register_hook(lambda g: count.append(1))\ny = h.sin()\n"
         "y.sum().backward(retain_graph=True)\nhandle.remove()", "y.sum().backward()",
         setup=COUNTED),
    Twin("in_place_updates_of_the_output", X3 + "y = x * 2\ny.add_(1)\ny.mul_(x)",
         "y.sum().backward()"),
    Twin("no_grad_buffer_update", X3 + "y = x.exp()\nwith torch.no_grad():\n"
         "    running.mul_(0.9).add_(y)", "y.sum().backward()",
         setup="running = torch.zeros(3)\n"),
    # -- hooks on modules -----------------------------------------------------------------------
    Twin("retain_grad_in_module_forward_backward_in_cell",
         "x = torch.randn(4, 3, requires_grad=True)\nout = net(x)\nloss = out.sum()\n"
         "loss.backward()", "loss.backward()", setup=MODULE_WITH_RETAIN_GRAD),
    Twin("retain_grad_in_module_forward_no_backward",
         "x = torch.randn(4, 3, requires_grad=True)\nout = net(x)", "out.sum().backward()",
         setup=MODULE_WITH_RETAIN_GRAD),
    Twin("grad_cam_hooks_on_a_conv",
         "img = torch.randn(1, 1, 5, 5, requires_grad=True)\nscore = conv(img).mean()\n"
         "score.backward()", "score.backward()", setup=GRAD_CAM),
    Twin("grad_cam_hooks_no_backward",
         "img = torch.randn(1, 1, 5, 5, requires_grad=True)\nfeatures = conv(img)",
         "features.sum().backward()", setup=GRAD_CAM),
    Twin("module_full_backward_hook_counter",
         "x = torch.randn(2, 3, requires_grad=True)\ny = lin(x)", "y.sum().backward()",
         setup=BACKWARD_HOOK_COUNTER),
    Twin("module_full_backward_hook_counter_backward_in_cell",
         "x = torch.randn(2, 3, requires_grad=True)\nloss = lin(x).sum()\nloss.backward()",
         "loss.backward()", setup=BACKWARD_HOOK_COUNTER),
    Twin("forward_pre_hook_counter",
         "x = torch.randn(2, 3, requires_grad=True)\ny = lin(x)", "y.sum().backward()",
         setup="lin = torch.nn.Linear(3, 2)\nseen = [0]\n"
               "lin.register_forward_pre_hook(lambda m, i: seen.__setitem__(0, seen[0] + 1))\n"),
    Twin("batch_norm_running_stats", "x = torch.randn(5, 3, requires_grad=True)\ny = bn(x)",
         "y.sum().backward()", setup="bn = torch.nn.BatchNorm1d(3)\n"),
    Twin("dropout_module_in_training", X3 + "y = drop(x.exp())", "y.sum().backward()",
         setup="drop = torch.nn.Dropout(0.5)\n"),
    Twin("lstm", "seq = torch.randn(4, 1, 3, requires_grad=True)\nout, (hn, cn) = lstm(seq)",
         "out.sum().backward()", setup="lstm = torch.nn.LSTM(3, 2)\n"),
    # -- checkpointing --------------------------------------------------------------------------
    Twin("checkpoint_non_reentrant_counts_runs",
         X3 + "y = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)",
         "y.sum().backward()", setup=CHECKPOINTED),
    Twin("checkpoint_non_reentrant_backward_in_cell",
         X3 + "loss = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).sum()\n"
         "loss.backward()", "loss.backward()", setup=CHECKPOINTED),
    # -- the cell's own backward and grad calls -------------------------------------------------
    Twin("backward_inputs_then_second_backward",
         "w = torch.randn(3, requires_grad=True)\nb = torch.randn(3, requires_grad=True)\n"
         "a = w * 2 + b\nloss = (a ** 2).sum()\nloss.backward(inputs=[w])\na.sum().backward()",
         "loss.backward()"),
    Twin("autograd_grad_then_backward",
         "w = torch.randn(3, requires_grad=True)\nloss = (w.sin() ** 2).sum()\n"
         "g, = torch.autograd.grad(loss, w)\nloss.backward()", "loss.backward()"),
    Twin("autograd_grad_retained_then_backward",
         "w = torch.randn(3, requires_grad=True)\nloss = (w.sin() ** 2).sum()\n"
         "g, = torch.autograd.grad(loss, w, retain_graph=True)\nloss.backward()",
         "loss.backward()"),
    Twin("backward_then_raise",
         X3 + "loss = (x ** 2).sum()\nloss.backward()\nraise ValueError('after backward')",
         "loss.backward()"),
    Twin("backward_inputs_intermediate",
         X3 + "h = x.exp()\ny = (h ** 2).sum()\ny.backward(inputs=[h])", "y.backward()"),
    Twin("backward_retain_graph_twice",
         X3 + "loss = (x ** 3).sum()\nloss.backward(retain_graph=True)\nloss.backward()",
         "loss.backward()"),
    Twin("optimizer_step_in_cell",
         "opt.zero_grad()\nloss = (mlp(X) ** 2).mean()\nloss.backward()\nopt.step()",
         "loss.backward()", line="--wrt mlp",
         setup=MLP + "opt = torch.optim.SGD(mlp.parameters(), lr=0.1)\n",
         refused="was modified in place afterwards"),
    Twin("non_scalar_backward_mistake", X3 + "y = x ** 2\ny.backward()", "y.sum().backward()"),
    Twin("backward_retain_graph_then_later_backward",
         X3 + "loss = (x ** 3).sum()\nloss.backward(retain_graph=True)", "loss.backward()"),
    Twin("create_graph_then_double_backward",
         X3 + "loss = (x ** 3).sum()\nloss.backward(create_graph=True)\ng = x.grad.clone()\n"
         "x.grad.sum().backward()", "loss.backward()"),
    Twin("autograd_backward_of_two_outputs",
         X3 + "a = x.sin()\nb = x.cos() * 2\n"
         "torch.autograd.backward([a, b], [torch.ones(3), torch.ones(3)])", "a.sum().backward()"),
    Twin("post_accumulate_grad_hook",
         X3 + "x.register_post_accumulate_grad_hook(lambda p: count.append(1))\n"
         "loss = (x ** 2).sum()\nloss.backward()", "loss.backward()", setup=COUNTED),
    Twin("multi_grad_hook",
         X3 + "a = x * 2\nb = x * 3\ntorch.autograd.graph.register_multi_grad_hook("
         "(a, b), lambda grads: count.append(1))\ny = a + b", "y.sum().backward()",
         setup=COUNTED),
    Twin("clip_grad_norm_after_backward",
         "loss = (mlp(X) ** 2).mean()\nloss.backward()\n"
         "norm = torch.nn.utils.clip_grad_norm_(mlp.parameters(), 0.01)", "loss.backward()",
         line="--wrt mlp", setup=MLP),
    Twin("side_effect_in_forward",
         X3 + "def f(t):\n    calls.append(1)\n    return t.sin() * t\ny = f(x)",
         "y.sum().backward()", setup="calls = []\n"),
    Twin("error_without_backward", X3 + "y = x * 2\nraise KeyError('mine')",
         "y.sum().backward()"),
    Twin("final_expression", X3 + "x.exp()", "x.exp().sum().backward()"),
    Twin("check_x_grad", X3 + "y = x.sin()\ny.backward(torch.ones_like(y))",
         "y.sum().backward()", line="--check x.grad"),
    # -- randomness ------------------------------------------------------------------------------
    Twin("gradcheck_rand_like_and_dropout",
         "x = torch.randn(4, requires_grad=True)\nnoise = torch.rand_like(x)\n"
         "y = torch.nn.functional.dropout(x * noise, p=0.5, training=True)",
         "y.sum().backward()", line="--gradcheck"),
    Twin("gradcheck_dropout_module_and_hook",
         X3 + "h = drop(x * 2)\nh.register_hook(lambda g: count.append(1))\ny = h.exp()",
         "y.sum().backward()", line="--gradcheck",
         setup=COUNTED + "drop = torch.nn.Dropout(0.5)\n"),
    Twin("random_draws_in_cell", X3 + "y = x * torch.rand(3) + torch.randn(3)",
         "y.sum().backward()"),
    # -- targets ---------------------------------------------------------------------------------
    Twin("target_with_next", X3 + "d[next(it)] = x * 2", "d[0].sum().backward()",
         setup="it = iter(range(5))\nd = {}\n"),
    Twin("target_property", X3 + "holder.prop[0] = x * 2", "holder._store[0].sum().backward()",
         setup=HOLDER),
    Twin("target_augmented_property", X3 + "holder._store[0] = x * 1\nholder.prop[0] += x * 2",
         "holder._store[0].sum().backward()", setup=HOLDER),
    Twin("target_tuple_unpacking", X3 + "d['a'], d['b'] = x * 2, x.sin()",
         "d['b'].sum().backward()", setup="d = {}\n"),
    Twin("target_index_into_tensor", X3 + "y = torch.zeros(3)\ny[:] = x.exp()",
         "y.sum().backward()"),
    # -- flags -----------------------------------------------------------------------------------
    Twin("symbolic", "x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = torch.sin(x) * x",
         "y.sum().backward()", line="--symbolic"),
    Twin("symbolic_with_hook_counter",
         "x = torch.linspace(-1, 1, 4, requires_grad=True)\nh = x ** 2\n"
         "h.register_hook(lambda g: count.append(1))\ny = h.exp()", "y.sum().backward()",
         line="--symbolic", setup=COUNTED),
    Twin("check", "x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x ** 3\n"
         "y.backward(torch.ones_like(y), retain_graph=True)\nans = x.grad.clone()",
         "y.sum().backward()", line="--check ans"),
    Twin("explain", cells.STACK_AT_POINTS.short, "y.sum().backward()", line="--explain"),
    Twin("code", cells.MULTIPLE_POINTS.short, "y.sum().backward()", line="--code"),
    Twin("full", cells.MULTIPLE_POINTS.short, "y.sum().backward()", line="--full"),
    Twin("of_expression", X3 + "y = x ** 2", "y.sum().backward()", line="--of y.sum() + 1"),
    Twin("wrt_module", "loss = (mlp(X) ** 2).mean()", "loss.backward()", line="--wrt mlp",
         setup=MLP),
    Twin("wrt_module_per_sample", "losses = (mlp(X) ** 2).squeeze(1)",
         "losses.sum().backward()", line="--wrt mlp", setup=MLP),
    Twin("wrt_module_backward_in_cell", "loss = (mlp(X) ** 2).mean()\nloss.backward()",
         "loss.backward()", line="--wrt mlp", setup=MLP),
    Twin("picture", "x = torch.randn(4, 3, requires_grad=True)\ny = x @ torch.randn(3, 2)",
         "y.sum().backward()", line="--picture"),
] + [
    # -- the tutorial's cells, as written ------------------------------------------------------
    Twin(f"tutorial_{cell.name}", cell.source, "y.sum().backward()") for cell in cells.TUTORIAL
]


# -- the state a cell leaves -----------------------------------------------------------------------
def _tensor(t: torch.Tensor, seen: set, depth: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # .grad of a non-leaf
        grad = t.grad
    values = t.detach()
    values = values.to_dense() if values.layout != torch.strided else values
    return ("tensor", values.clone(), t.requires_grad, t.grad_fn is not None,
            None if grad is None else _state(grad, seen, depth + 1))


def _module(m: torch.nn.Module, seen: set, depth: int):
    attributes = {}
    for name, value in vars(m).items():
        if name.endswith("hooks") or name.endswith("hooks_with_kwargs") or \
                name.endswith("always_called"):
            attributes[name] = ("hooks", len(value))
        else:
            attributes[name] = _state(value, seen, depth + 1)
    return ("module", type(m).__name__, attributes)


def _state(value, seen: set | None = None, depth: int = 0):
    """A comparable picture of ``value``: tensors by value, grad and history; containers,
    modules and plain objects item by item; anything else by its type."""
    seen = set() if seen is None else seen
    if isinstance(value, (bool, int, float, complex, str, bytes, type(None))):
        return value
    if id(value) in seen or depth > 8:
        return ("seen", type(value).__name__)
    seen = seen | {id(value)}
    if isinstance(value, torch.Tensor):
        return _tensor(value, seen, depth)
    if isinstance(value, torch.nn.Module):
        return _module(value, seen, depth)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_state(v, seen, depth + 1) for v in value])
    if isinstance(value, dict):
        return ("dict", [(repr(k), _state(v, seen, depth + 1)) for k, v in value.items()])
    if isinstance(value, type) or callable(value) or type(value).__module__ == "builtins":
        return ("object", type(value).__name__, getattr(value, "__qualname__", None))
    if hasattr(value, "__dict__") and not type(value).__module__.startswith(("torch", "IPython")):
        return ("object", type(value).__name__,
                {k: _state(v, seen, depth + 1) for k, v in vars(value).items()})
    return ("object", type(value).__name__)


def _differences(a, b, path: str = "") -> list[str]:
    """Where two states differ (tensors exactly, NaNs in the same places)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
            a.dtype == b.dtype and a.shape == b.shape and (
                torch.equal(a, b) or (a.is_floating_point() and bool(
                    ((a == b) | (a.isnan() & b.isnan())).all())))
        return [] if same else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _snapshot(ip) -> dict:
    names = {n: _state(v) for n, v in ip.user_ns.items() if is_visible_name(n)
             and not n.startswith("_")}
    return {"namespace": names, "rng": torch.get_rng_state().clone(),
            "grad_enabled": torch.is_grad_enabled(), "dtype": str(torch.get_default_dtype())}


def _outcome(result, refused: str = "") -> str | None:
    """How a cell ended: None (fine) or its exception's type; a classic ``backward`` mistake
    coached by the magic counts as the RuntimeError PyTorch raised, and the refusal a row
    expects (``refused``, in a UsageError) as ending fine."""
    error = result.error_before_exec or result.error_in_exec
    if refused and type(error).__name__ == "UsageError" and refused in str(error):
        return None
    shown = "" if result.result is None or not hasattr(result.result, "_repr_mimebundle_") \
        else result.result._repr_mimebundle_().get("text/plain", "")
    if "The cell stopped at" in (shown + ("" if error is None else str(error))):
        return "RuntimeError"
    return None if error is None else type(error).__name__


def _run(ip, twin: Twin, magic: bool):
    """The twin run from a fresh namespace: (the cell's outcome, the state after it, the later
    cell's outcome, the state after that)."""
    ip.reset(new_session=False)
    ip.run_cell("import torch")
    torch.manual_seed(0)
    setup = ip.run_cell(twin.setup)
    assert setup.success, setup.error_in_exec
    source = f"%%vjp {twin.line}\n{twin.cell}" if magic else twin.cell
    outcome = _outcome(ip.run_cell(source), twin.refused if magic else "")
    state = _snapshot(ip)
    later = None if twin.after is None else _outcome(ip.run_cell(twin.after))
    return outcome, state, later, _snapshot(ip)


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True")
@pytest.mark.parametrize("twin", ROWS, ids=[t.id for t in ROWS])
def test_a_vjp_cell_leaves_what_a_plain_cell_leaves(ip, twin):
    plain = _run(ip, twin, magic=False)
    magic = _run(ip, twin, magic=True)
    assert magic[0] == plain[0], f"the cell ended {magic[0]} under %%vjp, {plain[0]} plainly"
    differences = _differences(magic[1], plain[1], "after the cell")
    assert not differences, "\n".join(differences[:10])
    assert magic[2] == plain[2], (f"{twin.after!r} then ended {magic[2]} after %%vjp, "
                                  f"{plain[2]} after the plain cell")
    differences = _differences(magic[3], plain[3], f"after {twin.after!r}")
    assert not differences, "\n".join(differences[:10])


def test_the_table_is_large_enough():
    assert len(ROWS) >= 40 and len({t.id for t in ROWS}) == len(ROWS)
