"""Review, session 42 (R1, tests only): the user's state, and "the analysis runs none of the
user's code".

What earlier reviews did not try: a custom ``autograd.Function``'s backward (which the
analysis calls in every pass, where a plain run of the cell calls none) that writes the
user's tensors held in containers or objects (a dict, a list, an instance's attribute, a
method of an instance) rather than by a global name, or that draws from generator objects
the user made (a ``torch.Generator``, a numpy ``default_rng``, a ``random.Random``); and
results read in a later cell (``quiet.guarded_reads``), per-sample weights kept as factors
(``core/outer.py``) read after the model changed.

Expected values: a plain run of the same cell from the same seeds (state), mathematics and
``torch.autograd.functional.jacobian`` (numbers). Strict xfails are findings (``R1-n``; the
reason says what is wrong and the class to fix); unmarked tests guard what held.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

import vjp_magic

# -- 1. a custom backward writing the user's tensors held in containers and objects -------

HELD = '''
import torch
class Logger:
    def __init__(self): self.total = torch.zeros(())
    def record(self, g): self.total.add_(g.abs().sum())
LOG = Logger()
STATS = {"n": torch.zeros(())}
HIST = [torch.zeros(())]
class ByDict(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): STATS["n"].add_(1); return g * 2
class ByList(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): HIST[0].add_(1); return g * 2
class ByAttribute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): LOG.total.add_(1); return g * 2
class ByMethod(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): LOG.record(g); return g * 2
import functools
BUF = torch.zeros(())
def log_default(g, buf=BUF): buf.add_(1)     # the tensor as a default argument
def log_into(buf, g): buf.add_(1)
class Counter:
    def __init__(self, buf): self.buf = buf
    def __call__(self, g): self.buf.add_(1)
class ByDefault(torch.autograd.Function):
    helper = staticmethod(log_default)       # (a class attribute: followed)
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): ByDefault.helper(g); return g * 2
class ByPartial(torch.autograd.Function):
    helper = functools.partial(log_into, BUF)
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): ByPartial.helper(g); return g * 2
class ByCallable(torch.autograd.Function):
    helper = Counter(BUF)
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): ByCallable.helper(g); return g * 2
'''
_HOLDERS = {"ByDict": lambda ns: ns["STATS"]["n"], "ByList": lambda ns: ns["HIST"][0],
            "ByAttribute": lambda ns: ns["LOG"].total, "ByMethod": lambda ns: ns["LOG"].total,
            "ByDefault": lambda ns: ns["BUF"], "ByPartial": lambda ns: ns["BUF"],
            "ByCallable": lambda ns: ns["BUF"]}
_CELL = "x = torch.linspace(1., 2., 4, requires_grad=True)\ny = {f}.apply(x) ** 2\n"

R1_1 = ("R1-1: a custom Function's backward that writes in place a tensor of the user's held "
        "in a dict (STATS['n'].add_), a list (HIST[0]), an instance's attribute "
        "(LOG.total), through an instance's method (LOG.record(g)), or through a helper "
        "holding it as a default argument, a functools.partial or a callable object's "
        "attribute leaves it changed "
        "after %%vjp / differentiate (by 6-53 passes' worth; a plain run of the cell calls "
        "no backward and leaves it 0), with no refusal; the same write through a global "
        "name is put back and refused (core/backward_writes); class: what a backward can "
        "reach is found by global names, closures and module/class attributes only, not "
        "through containers or instances")


def _plain_held(function: str):
    ns: dict = {}
    exec(HELD, ns)
    exec(_CELL.format(f=function), ns)
    held = _HOLDERS[function](ns)
    return held.clone(), held._version


@pytest.mark.parametrize("function", list(_HOLDERS))
def test_a_backward_writing_a_held_tensor_leaves_it_as_a_plain_run(function):
    ns: dict = {}
    exec(HELD, ns)
    exec(_CELL.format(f=function), ns)
    try:
        vjp_magic.differentiate(ns["y"], ns["x"])
    except vjp_magic.VJPUsageError:
        pass  # a refusal is an answer; what matters is the tensor after
    held = _HOLDERS[function](ns)
    value, version = _plain_held(function)
    assert torch.equal(held, value) and held._version == version


@pytest.mark.parametrize("function", list(_HOLDERS))
def test_a_vjp_cell_whose_backward_writes_a_held_tensor_leaves_it_as_a_plain_run(
        ip, run_ok, function):
    run_ok(HELD)
    ip.run_cell("%%vjp\n" + _CELL.format(f=function))  # a refusal is an answer too
    held = _HOLDERS[function](ip.user_ns)
    value, version = _plain_held(function)
    assert torch.equal(held, value) and held._version == version


def test_a_backward_writing_a_global_tensor_is_put_back_and_refused():
    ns: dict = {}
    exec(HELD.replace('STATS["n"]', "COUNT").replace(
        'STATS = {"n": torch.zeros(())}', "COUNT = torch.zeros(())"), ns)
    exec(_CELL.format(f="ByDict"), ns)
    with pytest.raises(vjp_magic.VJPUsageError, match="COUNT"):
        vjp_magic.differentiate(ns["y"], ns["x"])
    assert torch.equal(ns["COUNT"], torch.zeros(())) and ns["COUNT"]._version == 0


# -- 2. a custom backward drawing from generator objects the user made ----------------------

DRAWS = '''
import random
import numpy as np
import torch
G = torch.Generator().manual_seed(3)
RNG = np.random.default_rng(4)
PR = random.Random(5)
class DrawsG(torch.autograd.Function):       # a noisy straight-through estimator
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): return g * 2 + 0 * torch.rand(g.shape, generator=G)
class DrawsRng(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): return g * 2 + 0 * float(RNG.random())
class DrawsRandom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): return g * 2 + 0 * PR.random()
'''
_STATES = {"DrawsG": lambda ns: ns["G"].get_state().tolist(),
           "DrawsRng": lambda ns: ns["RNG"].bit_generator.state,
           "DrawsRandom": lambda ns: ns["PR"].getstate()}

R1_2 = ("R1-2: a custom Function's backward that draws from a generator object the user "
        "made (torch.rand(..., generator=G), a numpy default_rng, a random.Random) leaves "
        "it moved after %%vjp (any option), differentiate, dependency, sparse_jacobian and "
        "hessian, where a plain run of the cell calls no backward and leaves it as seeded: "
        "the next draws differ from a plain run's; quiet.generators_kept keeps only the "
        "global generators, run/own_generators only those a custom forward reaches; class: "
        "the user's own generator objects a backward reaches are not kept")


def _plain_state(function: str):
    ns: dict = {}
    exec(DRAWS, ns)
    exec(_CELL.format(f=function), ns)
    return _STATES[function](ns)


_API = {
    "differentiate": lambda ns: vjp_magic.differentiate(ns["y"], ns["x"]),
    "dependency": lambda ns: vjp_magic.dependency(ns["y"], ns["x"]),
    "sparse_jacobian": lambda ns: vjp_magic.sparse_jacobian(ns["y"], ns["x"]),
    "hessian": lambda ns: vjp_magic.hessian(lambda: (ns["y"] * ns["x"]).sum(), ns["x"]),
}


@pytest.mark.parametrize("api", list(_API))
@pytest.mark.parametrize("function", list(_STATES))
def test_a_backward_drawing_from_the_users_generator_leaves_it_as_a_plain_run(function, api):
    ns: dict = {}
    exec(DRAWS, ns)
    exec(_CELL.format(f=function), ns)
    _API[api](ns)
    assert _STATES[function](ns) == _plain_state(function)


@pytest.mark.parametrize("line", ["", "--gradcheck", "--explain"])
@pytest.mark.parametrize("function", list(_STATES))
def test_a_vjp_cell_whose_backward_draws_leaves_the_users_generator(ip, run_ok, function, line):
    run_ok(DRAWS)
    run_ok(f"%%vjp {line}\n" + _CELL.format(f=function))
    assert _STATES[function](ip.user_ns) == _plain_state(function)


def test_a_backward_drawing_from_the_global_generators_leaves_them():
    ns: dict = {}
    exec(DRAWS.replace("generator=G", "").replace("RNG.random()", "np.random.rand()")
         .replace("PR.random()", "random.random()"), ns)
    states = torch.get_rng_state(), np.random.get_state()[1].tolist(), random.getstate()
    for function in _STATES:
        exec(_CELL.format(f=function), ns)
        vjp_magic.differentiate(ns["y"], ns["x"])
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.random.get_state()[1].tolist() == states[1] and random.getstate() == states[2]


# -- 3. per-sample weights kept as factors, read in a later cell ----------------------------

NET = '''
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
data = torch.randn(16, 5)
targets = torch.randint(0, 3, (16,))
twin, data0 = copy.deepcopy(net), data.clone()
'''
_LATER = {
    "weights and data changed in place": (
        "with torch.no_grad():\n    net[0].weight.mul_(2); net[2].weight.add_(1); data.mul_(3)"),
    "backward run": "losses.sum().backward()",
    "model deleted": "del net, losses\nimport gc; gc.collect()",
    "new data given": "net[0].weight.data = torch.randn(7, 5)\ndata.data = torch.randn(16, 5)",
}


@pytest.mark.parametrize("later", list(_LATER))
def test_per_sample_weights_read_in_a_later_cell_are_the_cells(ip, run_ok, later):
    from per_sample_reference import vmap_grad

    run_ok(NET)
    ns = ip.user_ns
    reference = vmap_grad(ns["twin"], ns["data0"], ns["targets"])
    run_ok("%%vjp --wrt net\nlosses = F.cross_entropy(net(data), targets, reduction='none')")
    run_ok("r = _")
    run_ok(_LATER[later])
    r = ns["r"]
    for name, g in reference.items():
        torch.testing.assert_close(r.derivatives[f"net.{name}"], g, rtol=1e-4, atol=1e-6)


# -- 4. the freeing pass of a kept custom-Function graph (run/passes.free_graph) -------------

SQUARE = '''
import torch
calls = []
class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x); return x ** 2
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors; return 2 * x * g
x = torch.linspace(-1, 1, 5, requires_grad=True)
lin = torch.nn.Linear(5, 5)
'''
_TAIL = "y2 = y1.sin()\ny2.sum().backward()"
_HOOKED = {  # (an earlier cell, the cell): the cell runs its own backward through the hook
    "node prehook": ("", "y1 = Square.apply(x) * x.sin()\n"
                         "y1.grad_fn.register_prehook(lambda g: calls.append('pre'))\n"),
    "node hook": ("", "y1 = Square.apply(x) * x.sin()\n"
                      "y1.grad_fn.register_hook(lambda gi, go: calls.append('post'))\n"),
    "module full backward hook": (
        "lin.register_full_backward_hook(lambda m, gi, go: calls.append('mb'))",
        "y1 = lin(Square.apply(x))\n"),
    "module backward pre-hook": (
        "lin.register_full_backward_pre_hook(lambda m, go: calls.append('mp'))",
        "y1 = lin(Square.apply(x))\n"),
    "tensor hook (held)": ("", "box = [x.exp()]\n"
                               "box[0].register_hook(lambda g: calls.append('h'))\n"
                               "y1 = Square.apply(box[0]) * x.sin()\n"),
    "custom node's hook": ("", "s = Square.apply(x)\n"
                               "s.grad_fn.register_hook(lambda gi, go: calls.append('c'))\n"
                               "y1 = s * x.sin()\n"),
}

R1_3 = ("R1-3: a %%vjp cell (any option) with a custom Function whose graph also holds a "
        "hook on a built-in node (y1.grad_fn.register_prehook / register_hook) or a module's "
        "full backward (pre-)hook, and which runs its own y2.sum().backward(), is refused "
        "(right; where the hook is on another head of the cell's backward and --of y1 "
        "leaves it off the analysed path, the result is shown), but the graph that backward "
        "would have freed stays kept: the next cell's "
        "y1.sum().backward() succeeds, fires the user's hook again and adds a second "
        "gradient to x.grad, where after the plain cell PyTorch raises 'Trying to backward "
        "through the graph a second time'; class: free_graph mutes tensor hooks only, so a "
        "node hook stops the freeing pass (pass_guard) and the kept graph stays retained")


def _then_next_backward(ip, earlier: str, cell: str, line: str | None):
    torch.manual_seed(0)
    assert ip.run_cell(SQUARE).success
    if earlier:
        assert ip.run_cell(earlier).success
    ip.run_cell(cell + _TAIL if line is None else f"%%vjp {line}\n{cell}{_TAIL}")
    first = ip.user_ns["x"].grad.clone()
    later = ip.run_cell("y1.sum().backward()")
    error = type(later.error_in_exec).__name__ if later.error_in_exec else None
    return error, list(ip.user_ns["calls"]), first, ip.user_ns["x"].grad.clone()


def _as_plain(ip, hooked: str, line: str):
    plain = _then_next_backward(ip, *_HOOKED[hooked], None)
    assert plain[0] == "RuntimeError"
    magic = _then_next_backward(ip, *_HOOKED[hooked], line)
    assert magic[:2] == plain[:2]
    torch.testing.assert_close(magic[2], plain[2])
    torch.testing.assert_close(magic[3], plain[3])


@pytest.mark.parametrize("line", ["", "--gradcheck"])
@pytest.mark.parametrize("hooked", list(_HOOKED)[:4])
def test_a_kept_graph_with_a_node_hook_is_freed_as_a_plain_cell_frees_it(ip, hooked, line):
    _as_plain(ip, hooked, line)


@pytest.mark.parametrize("hooked", list(_HOOKED)[4:])
def test_a_kept_graph_with_a_tensor_hook_is_freed_as_a_plain_cell_frees_it(ip, hooked):
    _as_plain(ip, hooked, "")


R1_4 = ("R1-4: a %%vjp cell (any option) with a custom Function that runs its own "
        "y2.sum().backward() and then raises (its own ValueError, or a Ctrl-C: "
        "KeyboardInterrupt) leaves the graph that backward would have freed kept: the next "
        "cell's y1.sum().backward() succeeds and adds a second gradient to x.grad, where "
        "after the plain cell PyTorch raises 'Trying to backward through the graph a second "
        "time'; class: the kept graphs are freed (BackwardLog.release -> free_graph) only "
        "on the path where the cell ends normally")


@pytest.mark.parametrize("line", ["", "--gradcheck"])
@pytest.mark.parametrize("error", ["ValueError('mine')", "KeyboardInterrupt"])
def test_a_cell_raising_after_its_backward_frees_the_graph_as_a_plain_cell(ip, error, line):
    cell = f"y1 = Square.apply(x) * x.sin()\ny2 = y1.sin()\ny2.sum().backward()\nraise {error}\n"
    results = []
    for magic in (None, line):
        torch.manual_seed(0)
        assert ip.run_cell(SQUARE).success
        ip.run_cell(cell if magic is None else f"%%vjp {magic}\n{cell}")
        first = ip.user_ns["x"].grad.clone()
        later = ip.run_cell("y1.sum().backward()")
        results.append((type(later.error_in_exec).__name__ if later.error_in_exec else None,
                        first, ip.user_ns["x"].grad.clone()))
    (plain_error, plain_first, plain_after), (error_, first, after) = results
    assert plain_error == "RuntimeError" and error_ == plain_error
    torch.testing.assert_close(first, plain_first)
    torch.testing.assert_close(after, plain_after)


@pytest.mark.parametrize("cell", [
    "y1 = Square.apply(x) * x.sin()\ny2 = y1.sin()\n(gx,) = torch.autograd.grad(y2.sum(), x)\n",
    "y1 = Square.apply(x) * x.sin()\ny2 = y1.sin()\ny2.sum().backward(inputs=[x])\n",
    "y1 = Square.apply(x) * x.sin()\n(y1.sin().sum() + y1.cos().sum()).backward()\n",
], ids=["grad", "backward-inputs", "two-heads"])
def test_a_kept_graph_of_other_calls_is_freed_as_a_plain_cell_frees_it(ip, cell):
    outcomes = []
    for magic in (False, True):
        assert ip.run_cell(SQUARE).success
        ip.run_cell(("%%vjp\n" if magic else "") + cell)
        later = ip.run_cell("y1.sum().backward()")
        outcomes.append(type(later.error_in_exec).__name__ if later.error_in_exec else None)
    assert outcomes == ["RuntimeError", "RuntimeError"]


# -- 5. --gradcheck's replay of a custom forward that writes state ---------------------------

TRACKING = '''
import torch
STAT = torch.zeros(())
BOX = {"s": torch.zeros(())}
bn = torch.nn.BatchNorm1d(4)
class Track(torch.autograd.Function):      # a running statistic, by a global name
    @staticmethod
    def forward(ctx, x): STAT.add_(x.detach().sum()); return x * 2
    @staticmethod
    def backward(ctx, g): return 2 * g
class TrackBox(torch.autograd.Function):   # the same, held in a dict
    @staticmethod
    def forward(ctx, x): BOX["s"].add_(x.detach().sum()); return x * 2
    @staticmethod
    def backward(ctx, g): return 2 * g
class TrackBN(torch.autograd.Function):    # a module's running stats updated in the forward
    @staticmethod
    def forward(ctx, x):
        with torch.no_grad():
            bn(x.detach()[None].expand(3, 4).contiguous())
        return x * 2
    @staticmethod
    def backward(ctx, g): return 2 * g
'''
_TRACK_CELL = "x = torch.linspace(1., 2., 4, requires_grad=True)\ny = {f}.apply(x).sin()\n"


def _tracked(ns):
    bn = ns["bn"]
    return (ns["STAT"].item(), ns["STAT"]._version, ns["BOX"]["s"].item(),
            int(bn.num_batches_tracked), bn.running_mean.tolist(), bn.running_var.tolist())


R1_5 = ("R1-5: %%vjp --gradcheck of a cell with a custom Function whose forward writes state "
        "(a running statistic: a global tensor STAT.add_, one held in a dict, or a "
        "BatchNorm's running stats and num_batches_tracked updated inside the forward) "
        "leaves it written by every float64 replay of that forward (STAT's version 23 "
        "where the plain cell's is 1; num_batches_tracked 3 where it is 1), and a print "
        "in that forward shows 23 times beneath the cell where a plain run prints once; "
        "README: "
        "'--gradcheck replays the cell's recorded operations ... (the cell is not run "
        "again)' and 'a custom autograd.Function (its forward is the cell's own code and "
        "runs once)'; class: the gradcheck's replay runs the user's custom forward, and "
        "nothing keeps or puts back what it writes (core/backward_writes covers backwards)")


@pytest.mark.parametrize("function", ["Track", "TrackBox", "TrackBN"])
def test_gradcheck_leaves_what_a_custom_forward_writes_as_a_plain_run(ip, run_ok, function):
    run_ok(TRACKING)
    run_ok(_TRACK_CELL.format(f=function))
    plain = _tracked(ip.user_ns)
    run_ok(TRACKING)
    ip.run_cell("%%vjp --gradcheck\n" + _TRACK_CELL.format(f=function))
    assert _tracked(ip.user_ns) == plain


@pytest.mark.parametrize("function", ["Track", "TrackBox", "TrackBN"])
def test_a_plain_vjp_cell_leaves_what_a_custom_forward_writes_as_a_plain_run(
        ip, run_ok, function):
    run_ok(TRACKING)
    run_ok(_TRACK_CELL.format(f=function))
    plain = _tracked(ip.user_ns)
    run_ok(TRACKING)
    run_ok("%%vjp --explain\n" + _TRACK_CELL.format(f=function))
    assert _tracked(ip.user_ns) == plain


# -- 6. a custom backward that accumulates a parameter's gradient by hand --------------------

MANUAL = '''
import torch
W = torch.nn.Parameter(torch.ones(4))
class Manual(torch.autograd.Function):   # w's gradient accumulated by hand (a fused kernel's way)
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x); ctx.w = w; return x * w.detach()
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        if ctx.w.grad is None:
            ctx.w.grad = torch.zeros_like(ctx.w)
        ctx.w.grad.add_(g * x)
        return g * ctx.w.detach(), None
'''
_MANUAL_CELL = "x = torch.linspace(1., 2., 4, requires_grad=True)\ny = Manual.apply(x, W).sin()\n"

R1_6 = ("R1-6: a custom Function whose backward accumulates a parameter's gradient by hand "
        "(ctx.w.grad = zeros, then ctx.w.grad.add_(g * x): a fused kernel's habit) leaves "
        "W.grad after %%vjp (any option) and differentiate holding the sum of the "
        "analysis's probes, with a grad_fn, where a plain run of the cell leaves W.grad None "
        "(or the 7s an earlier cell put there, which are overwritten); class: the .grad of a "
        "tensor a backward reaches is not kept (core/backward_writes watches tensors' "
        "versions, not .grad assigned or written through)")


@pytest.mark.parametrize("earlier", [None, 7.0])
@pytest.mark.parametrize("line", ["", "--gradcheck", "--wrt x"])
def test_a_backward_writing_a_parameters_grad_leaves_it_as_a_plain_run(
        ip, run_ok, line, earlier):
    run_ok(MANUAL)
    if earlier is not None:
        run_ok(f"W.grad = torch.full((4,), {earlier})")
    ip.run_cell(f"%%vjp {line}\n{_MANUAL_CELL}")
    grad = ip.user_ns["W"].grad
    if earlier is None:
        assert grad is None
    else:
        assert grad is not None and torch.equal(grad, torch.full((4,), earlier))


def test_differentiate_through_a_hand_accumulating_backward_leaves_grad_none():
    ns: dict = {}
    exec(MANUAL, ns)
    exec(_MANUAL_CELL, ns)
    try:
        vjp_magic.differentiate(ns["y"], ns["x"])
    except vjp_magic.VJPUsageError:
        pass
    assert ns["W"].grad is None


_FIRST_READ = {
    "a function mode": "from mode_loggers import FunctionLog\n_log = []\n"
                       "with FunctionLog(_log):\n    d = r.derivatives['net.0.weight']\n",
    "inference mode": "with torch.inference_mode():\n    d = r.derivatives['net.0.weight']\n",
    "float64 default": "torch.set_default_dtype(torch.float64)\n"
                       "try:\n    d = r.derivatives['net.0.weight']\n"
                       "finally:\n    torch.set_default_dtype(torch.float32)\n",
}


@pytest.mark.parametrize("where", list(_FIRST_READ))
def test_a_later_read_of_a_cells_per_sample_weights_runs_nothing_of_the_users(ip, run_ok, where):
    from per_sample_reference import vmap_grad

    run_ok(NET)
    ns = ip.user_ns
    reference = vmap_grad(ns["twin"], ns["data0"], ns["targets"])["0.weight"]
    run_ok("%%vjp --wrt net\nlosses = F.cross_entropy(net(data), targets, reduction='none')")
    run_ok("r = _")
    run_ok(_FIRST_READ[where])
    d = ns["d"]
    assert ns.get("_log", []) == []
    assert not d.is_inference() and d.dtype == torch.float32
    torch.testing.assert_close(d, reference, rtol=1e-4, atol=1e-6)


def _factored(batch: int = 256):
    """(r, reference, net, data): per-sample gradients of an MLP from a function, its
    Linear weights kept as factors (unwritten), and vmap(grad)'s at the same weights."""
    import copy

    import torch.nn as nn
    import torch.nn.functional as F
    from per_sample_reference import vmap_grad

    from vjp_magic.core.outer import OuterProducts

    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    data, targets = torch.randn(batch, 5, generator=g), torch.randint(0, 3, (batch,), generator=g)
    reference = vmap_grad(copy.deepcopy(net), data.clone(), targets)
    r = vjp_magic.differentiate(lambda: F.cross_entropy(net(data), targets, reduction="none"),
                                net)
    kept = vars(r.inputs["0.weight"]).get("_derivatives")
    assert isinstance(kept, OuterProducts)  # the premise: not written yet
    return r, reference, net, data


def _weights_changed(net, data):
    with torch.no_grad():
        net[0].weight.mul_(2)
        net[2].weight.add_(1)
        data.mul_(3)


def _data_replaced(net, data):
    net[0].weight.data = torch.randn(7, 5)
    data.data = torch.zeros(256, 5)


def _backward_run(net, data):
    import torch.nn.functional as F
    F.cross_entropy(net(data), torch.zeros(256, dtype=torch.long)).backward()


@pytest.mark.parametrize("later", [_weights_changed, _data_replaced, _backward_run],
                         ids=["in-place", "new-data", "backward"])
def test_factored_weights_first_read_after_the_model_changed_are_the_calls(later):
    r, reference, net, data = _factored()
    later(net, data)
    del net
    for name, g in reference.items():
        torch.testing.assert_close(r.derivatives[name], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("where", ["function mode", "inference mode", "float64 default"])
def test_factored_weights_first_read_runs_nothing_of_the_users(where):
    from mode_loggers import FunctionLog

    r, reference, net, data = _factored()
    log: list = []
    if where == "function mode":
        with FunctionLog(log):
            d = r.derivatives["0.weight"]
    elif where == "inference mode":
        with torch.inference_mode():
            d = r.derivatives["0.weight"]
    else:
        torch.set_default_dtype(torch.float64)
        try:
            d = r.derivatives["0.weight"]
        finally:
            torch.set_default_dtype(torch.float32)
    assert log == []
    assert not d.is_inference() and d.dtype == torch.float32
    torch.testing.assert_close(d, reference["0.weight"], rtol=1e-4, atol=1e-6)


# -- 7. what held: a checkpointed block drawing from the user's generators; a Ctrl-C in the
#    analysis' call of a custom backward after the cell's own backward --------------------------

CHECKPOINTED = '''
import torch, numpy as np
from torch.utils.checkpoint import checkpoint
G = torch.Generator().manual_seed(3)
RNG = np.random.default_rng(4)
calls = []
def block(t):
    calls.append(1)
    m = (torch.rand(t.shape, generator=G) > 0.3).to(t.dtype) * float(1 + 0 * RNG.random())
    return torch.tanh(t) * m + torch.rand(t.shape) * 0.1
x = torch.linspace(-1., 1., 6, requires_grad=True)
'''


def _checkpoint_state(ns):
    return (ns["G"].get_state().tolist(), ns["RNG"].bit_generator.state,
            torch.get_rng_state().tolist(), len(ns["calls"]), ns["y"].detach().clone())


@pytest.mark.parametrize("line", ["", "--gradcheck"])
@pytest.mark.parametrize("tail", ["", "\ny.sum().backward()"], ids=["forward", "backward"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_a_checkpointed_block_drawing_from_own_generators_runs_as_in_a_plain_cell(
        ip, reentrant, tail, line):
    cell = (f"torch.manual_seed(0)\n"
            f"y = checkpoint(block, x * 2, use_reentrant={reentrant}) * x{tail}")
    assert ip.run_cell(CHECKPOINTED).success and ip.run_cell(cell).success
    plain = _checkpoint_state(ip.user_ns)
    assert ip.run_cell(CHECKPOINTED).success
    ip.run_cell(f"%%vjp {line}\n{cell}")  # reentrant: refused, with advice
    found = _checkpoint_state(ip.user_ns)
    assert found[:4] == plain[:4] and torch.equal(found[4], plain[4])


INTERRUPTED = SQUARE.replace(
    "        x, = ctx.saved_tensors; return 2 * x * g",
    "        if next(n) == AT: raise KeyboardInterrupt\n"  # (an itertools.count: beyond the
    "        x, = ctx.saved_tensors; return 2 * x * g").replace(  # put-back of Python state)
    "calls = []", "import itertools; n = itertools.count(1)")


@pytest.mark.parametrize("at", [2, 3, 5])
def test_a_ctrl_c_in_the_analysis_leaves_the_graph_freed_and_grad_as_a_plain_cell(ip, at):
    cell = "y1 = Square.apply(x) * x.sin()\ny2 = y1.sin()\ny2.sum().backward()\n"
    outcomes = []
    for magic in (False, True):
        assert ip.run_cell(INTERRUPTED.replace("== AT", f"== {at if magic else 0}")).success
        result = ip.run_cell(("%%vjp\n" if magic else "") + cell)
        first = ip.user_ns["x"].grad.clone()
        ip.user_ns["n"] = itertools.count(-10 ** 6)  # no more interrupts
        later = ip.run_cell("y1.sum().backward()")
        outcomes.append((type(result.error_in_exec).__name__ if result.error_in_exec else None,
                         type(later.error_in_exec).__name__, first, ip.user_ns["x"].grad))
    plain, magic = outcomes
    assert plain[:2] == (None, "RuntimeError")
    assert magic[:2] == ("KeyboardInterrupt", "RuntimeError")
    torch.testing.assert_close(magic[2], plain[2])
    torch.testing.assert_close(magic[3], plain[3])


# -- 8. a backward writing through .data (a version counter of its own) ----------------------

THROUGH_DATA = '''
import torch
W = torch.nn.Parameter(torch.ones(4))
B = torch.zeros(4)
A = torch.arange(16.).reshape(4, 4) / 10
class Dense(torch.autograd.Function):    # y = (A x) * w; its backward also "learns" w
    @staticmethod
    def forward(ctx, x): return A @ x * W.detach()
    @staticmethod
    def backward(ctx, g): W.data.add_(1); return A.t() @ (g * W.detach())
class Rebinds(torch.autograd.Function):  # a buffer given new data in the backward
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g): B.data = B.data + 1; return g * 2
'''
_DATA_CELL = "x = torch.linspace(1., 2., 4, requires_grad=True)\ny = {f}.apply(x)\n"

R1_7 = ("R1-7: a custom backward that writes the user's tensor through .data (W.data.add_(1): "
        ".data has a version counter of its own) or gives it new data (B.data = B.data + 1) "
        "is neither refused nor put back: W and B end 7 (six passes' worth) where a plain "
        "cell leaves 1 and 0, and where the backward reads W, the Jacobian shown is "
        "assembled from passes that each saw another W (rows 3x-6x of A: r.jacobian('x') "
        "[1] = 4 * A[1]), shown as exact; the same write through W.add_ under no_grad is "
        "refused and put back; class: core/backward_writes detects writes by version "
        "counters, which .data writes and .data rebinding do not move")


@pytest.mark.parametrize("function", ["Dense", "Rebinds"])
def test_a_backward_writing_through_data_is_refused_or_right_and_put_back(function):
    ns: dict = {}
    exec(THROUGH_DATA, ns)
    exec(_DATA_CELL.format(f=function), ns)
    try:
        r = vjp_magic.differentiate(ns["y"], ns["x"])
    except vjp_magic.VJPUsageError:
        r = None
    assert torch.equal(ns["W"].detach(), torch.ones(4)) and torch.equal(ns["B"], torch.zeros(4))
    if r is not None:  # d(A x * 1)/dx = A, and d(2x)/dx = 2 I
        expected = ns["A"] if function == "Dense" else 2 * torch.eye(4)
        torch.testing.assert_close(r.jacobian("x"), expected)


def test_a_vjp_cell_whose_backward_writes_through_data_leaves_w_as_a_plain_run(ip, run_ok):
    run_ok(THROUGH_DATA)
    result = ip.run_cell("%%vjp\n" + _DATA_CELL.format(f="Dense"))
    assert torch.equal(ip.user_ns["W"].detach(), torch.ones(4))
    if result.success:
        torch.testing.assert_close(result.result.jacobian("x"), ip.user_ns["A"])


R1_8 = ("R1-8: the first read of per-sample Linear weights kept as factors through "
        "r.inputs[name].derivatives (the field the tests and h.inputs['x'].symmetric use) "
        "while the user's TorchFunctionMode or TorchDispatchMode is entered runs that mode "
        "on the package's own write and check (33 calls: unsqueeze, mul, reshape, matmul, "
        "abs_, le_, ...), where r.derivatives[name] runs none; class: InputResult (its "
        "_Derivatives descriptor writes OuterProducts on first read) is a public read "
        "outside quiet.guarded_reads")


@pytest.mark.parametrize("mode", ["function", "dispatch"])
def test_reading_factored_weights_through_inputs_runs_no_mode_of_the_users(mode):
    from mode_loggers import DispatchLog, FunctionLog

    r, reference, net, data = _factored()
    log: list = []
    with (FunctionLog(log) if mode == "function" else DispatchLog(log)):
        d = r.inputs["0.weight"].derivatives
    torch.testing.assert_close(d, reference["0.weight"], rtol=1e-4, atol=1e-6)
    assert log == []


@pytest.mark.parametrize("earlier", [
    "y1 = Square.apply(x) * x.sin()",
    "y1 = (x ** 2) * x.sin()",
    "y1 = Square.apply(x) * x.sin()\ny1.register_hook(lambda g: calls.append('h'))",
], ids=["custom-before", "custom-in-cell", "hooked-before"])
def test_a_graph_begun_in_an_earlier_cell_is_freed_as_a_plain_cell_frees_it(ip, earlier):
    cell = ("y2 = y1.sin()\n" if "Square" in earlier else "y2 = Square.apply(y1).sin()\n") \
        + "y2.sum().backward()\n"
    outcomes = []
    for magic in (False, True):
        assert ip.run_cell(SQUARE).success and ip.run_cell(earlier).success
        ip.run_cell(("%%vjp\n" if magic else "") + cell)  # hooked: refused, with advice
        first = ip.user_ns["x"].grad.clone()
        later = ip.run_cell("y1.sum().backward()")
        outcomes.append((type(later.error_in_exec).__name__, list(ip.user_ns["calls"]), first,
                         ip.user_ns["x"].grad.clone()))
    (error, calls, first, after), magic = outcomes
    assert error == "RuntimeError" and magic[:2] == (error, calls)
    torch.testing.assert_close(magic[2], first)
    torch.testing.assert_close(magic[3], after)


_OTHER_HEAD = {  # the hook on a head of the cell's backward that --of y1 does not analyse
    "module full backward hook": (
        "lin.register_full_backward_hook(lambda m, gi, go: calls.append('mb'))",
        "z = lin(x.cos() * 3)\n"),
    "node prehook": ("", "z = x.cos() * 3\n"
                         "z.grad_fn.register_prehook(lambda g: calls.append('pre'))\n"),
    "tensor hook": ("", "z = x.cos() * 3\nz.register_hook(lambda g: calls.append('t'))\n"),
}


@pytest.mark.parametrize("hooked", list(_OTHER_HEAD))
def test_a_shown_result_frees_the_cells_graph_whatever_hooks_its_other_heads_hold(ip, hooked):
    earlier, head = _OTHER_HEAD[hooked]
    cell = "y1 = Square.apply(x) * x.sin()\n" + head + "(y1.sin().sum() + z.sum()).backward()\n"
    outcomes = []
    for magic in (False, True):
        torch.manual_seed(0)
        assert ip.run_cell(SQUARE).success
        if earlier:
            assert ip.run_cell(earlier).success
        result = ip.run_cell(("%%vjp --of y1\n" if magic else "") + cell)
        assert result.success
        first = ip.user_ns["x"].grad.clone()
        later = ip.run_cell("y1.sum().backward()")
        outcomes.append((type(later.error_in_exec).__name__, list(ip.user_ns["calls"]), first,
                         ip.user_ns["x"].grad.clone()))
    (error, calls, first, after), magic = outcomes
    assert error == "RuntimeError" and magic[:2] == (error, calls)
    torch.testing.assert_close(magic[2], first)
    torch.testing.assert_close(magic[3], after)


LOUD = '''
import torch
class Loud(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        print("forward ran"); return x * 2
    @staticmethod
    def backward(ctx, g): return 2 * g
'''


@pytest.mark.parametrize("line", [
    "", "--explain", "--gradcheck"])
def test_a_custom_forwards_print_shows_once_as_in_a_plain_cell(ip, line):
    from IPython.utils.capture import capture_output

    cell = "x = torch.linspace(1., 2., 4, requires_grad=True)\ny = Loud.apply(x).sin()\n"
    assert ip.run_cell(LOUD).success
    with capture_output() as captured:
        ip.run_cell(f"%%vjp {line}\n{cell}")
    assert captured.stdout.count("forward ran") == 1


OWN_DRAWS = "import torch, numpy as np\nG = torch.Generator().manual_seed(3)\n" \
            "RNG = np.random.default_rng(4)\n"


@pytest.mark.parametrize("line", ["", "--gradcheck", "--explain --picture", "--symbolic"])
@pytest.mark.parametrize("body", [
    "m = torch.rand(4, generator=G)\ny = x.sin() * m * float(RNG.random())",
    "y = torch.nn.functional.pad(x, (1, 1))[2:] * torch.randn(4, generator=G)"
    " + torch.bernoulli(x.detach() / 3, generator=G)",
    "y = x[torch.randperm(4, generator=G)] * x",
], ids=["rand", "stencil-bernoulli", "randperm"])
def test_a_cells_own_generator_draws_leave_it_and_y_as_a_plain_cell(ip, body, line):
    cell = "x = torch.linspace(1., 2., 4, requires_grad=True)\n" + body
    states = []
    for magic in (False, True):
        assert ip.run_cell(OWN_DRAWS).success
        assert ip.run_cell((f"%%vjp {line}\n" if magic else "") + cell).success
        ns = ip.user_ns
        states.append((ns["G"].get_state().tolist(), ns["RNG"].bit_generator.state,
                       ns["y"].detach().clone()))
    (g, rng, y), found = states
    assert found[:2] == (g, rng) and torch.equal(found[2], y)
