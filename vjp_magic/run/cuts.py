"""Cut graphs: values computed from an input that reach the output as constants.

``x.detach()``, ``x.data``, ``torch.tensor(x)``, ``x.item()``/``.tolist()``/``.numpy()`` round
trips and calls under ``torch.no_grad()`` make a value computed from an input that autograd
does not track. Where such a value reaches the output, the derivatives autograd gives are
those of the graph as computed, not of the formula the cell spells. :func:`find_cuts` reads
it off the record of the cell's one run (no user code runs again), by data flow alone:

- *live*: the tensors autograd tracked from an input (through calls that read a live tensor
  and whose result requires grad; never through ``detach``/``.data``);
- a *cut*: a call that reads a live tensor and makes a floating value that is not live (a
  tensor, a Python number or list, a numpy array);
- *taint*: what is computed from a cut's value without autograd (by identity, and by memory:
  a numpy array of a tensor's memory, ``torch.from_numpy`` of it);
- a cut counts where a call whose result is live reads its taint (the *constant*) and the
  output needs that call. Only floating values carry a derivative: a mask or an index made
  from a detached value (``x.detach() > 0``) cuts nothing.

Each :class:`Cut` says the op as written, its cell line, what became constant (as written,
where the source positions are known: Python 3.11+), and the inputs whose derivatives it
changes. Words for it: :meth:`Cut.pieces`.
"""
from __future__ import annotations

import ast
import functools
import linecache
import os
import re
from dataclasses import dataclass, field

import torch

from ..core.marked import Marked, code, marked
from ..core.reach import reached, tensors_of
from ..core.textenum import TextEnum
from ..core.validation import sentence_name
from .plan import frozen_at, recorded_alias, storage_key
from .record import FunctionApply, outs_of, reads_of, tensors_in
from .steps import DETACHING, function_name

MAX_CUTS = 20  # distinct cuts named; past this the rest are counted
MAX_TEXT = 60  # characters of an expression quoted
_COPIES = {"tensor", "as_tensor", "asarray", "new_tensor", "from_numpy"}
_EXITS = {"item", "tolist", "numpy", "__float__", "__int__", "__complex__", "__array__"}
_SHAPE_ONLY = {"zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like",
               "randint_like", "new_zeros", "new_ones", "new_full", "new_empty"}  # no values read
_GRAD_SWITCHES = {"_set_grad_enabled", "__enter__", "set_grad_enabled",
                  "_enter_inference_mode"}


class CutKind(TextEnum):
    """How a value left autograd."""

    DETACH = "detach"  # x.detach()
    DATA = "data"  # x.data
    COPY = "copy"  # torch.tensor(x), x.new_tensor(...)
    EXIT = "exit"  # x.item(), x.tolist(), x.numpy(): out of torch
    NO_GRAD = "no_grad"  # computed under torch.no_grad()
    FUNCTION = "function"  # a custom Function given no tensor that requires grad (checkpoint)
    OTHER = "other"  # any other call whose result autograd does not track


@dataclass(frozen=True)
class Cut:
    """One place a value computed from the inputs became a constant on the way to the output.

    ``op``: the call as written (``x.detach()``; for a call made with gradients off, the
    switch as the cell wrote it: ``torch.inference_mode()``, ``@torch.no_grad()``,
    ``torch.set_grad_enabled(False)``, ``m[0].requires_grad_(False)``, on its line; where
    that is not told, the call itself and ``untold``) or, where the source is not known, its
    name (``.detach()``); ``line``: its line in the cell
    (None outside it); ``constants``: what became constant, as written, conversions left out
    (``x**3`` of ``x.detach()**3``; empty where not recoverable); ``inputs``: the inputs whose
    derivatives it changes; ``count``: how many times it ran; ``guessed``: the value went
    through numpy, where the record cannot follow it, and a tensor made from numpy data
    reaches the output (it may or may not hold the cut's values); ``function``: where the cut
    was made inside a function of another file that the cell called (a module's
    ``forward``), that function's name and "line 7 of model.py" (or ""), and ``caller``:
    the cell's call as written (``net(Xg)``; None where not known): the cut is then of a
    value inside that call, not of the call's result."""

    op: str
    kind: CutKind
    line: int | None
    constants: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    count: int = 1
    guessed: bool = False
    alone: bool = True  # the only input of the result (its derivative need not be named)
    function: tuple[str, str] | None = None
    caller: str | None = None
    untold: bool = False  # grad was off at the call, by a switch not read off the source

    def pieces(self, tail: bool = True) -> tuple[tuple[str, bool], ...]:
        """The sentence as (text, is_code) pieces: "`x.detach()` on line 2 makes `x**3` a
        constant: the derivative shown is that of the graph as computed, in which it does
        not change with x." (``tail=False``: up to "a constant.")"""
        names = _names(self.inputs)
        out: list = [(self.op, True)] + self._place()
        if self.count > 1:
            out.append((f" ({self.count:,} times)", False))
        if self.guessed:
            out.append((f" hands values computed from {names} out of torch (to Python or "
                        "numpy), and a number or tensor made from such data outside torch "
                        "reaches the output as a constant: if it holds them, the "
                        f"{self._shown()} of the graph as computed, in which they do not "
                        f"change with {names}.", False))
            return tuple(piece for piece in out if piece[0])
        if self.kind is CutKind.FUNCTION:
            out.append((" runs its function outside autograd (none of the tensors it is given "
                         "requires grad, so the parameters the function uses are never "
                         "recorded)", False))
            if not self.constants or self.constants == (self.op,):
                out.append((f" and makes its result, computed from {names},", False))
                out.append((" a constant." if not tail else " a constant: the "
                            f"{self._shown()} of the graph as computed, in which it does "
                            f"not change with {names}.", False))
                return tuple(piece for piece in out if piece[0])
            out.append((",", False))
        out.append((" runs with gradients off, which makes " if self.untold else " makes ",
                    False))
        for k, text in enumerate(self.constants):
            out += [(_joiner(k, len(self.constants)), False), (text, True)]
        if not self.constants:
            out.append((f"a value computed from {names}", False))
        plural = len(self.constants) > 1
        if not tail:
            out.append((" constants." if plural else " a constant.", False))
            return tuple(piece for piece in out if piece[0])
        out.append((f" {'constants' if plural else 'a constant'}: the {self._shown()} of the "
                    f"graph as computed, in which {'they do' if plural else 'it does'} not "
                    f"change with {names}.", False))
        return tuple(piece for piece in out if piece[0])

    def _place(self) -> list:
        """Where the cut is: "on line 2", or "in `forward` (line 7 of model.py), called by
        `net(X)` on line 2," for a cut inside a function the cell called."""
        on = f" on line {self.line}" if self.line else ""
        if self.function is None:
            return [(on, False)]
        name, where = self.function
        place = [(" in ", False), (name, True), (f" ({where})" if where else "", False)]
        if self.caller:
            return place + [(", called by ", False), (self.caller, True), (f"{on},", False)]
        return place + [(f", called{on or ' by the cell'},", False)]

    def _shown(self) -> str:
        if len(self.inputs) > 1:
            return f"derivatives shown with respect to {_names(self.inputs)} are those"
        if not self.alone:
            return f"derivative shown with respect to {_names(self.inputs)} is that"
        return "derivative shown is that"

    def sentence(self, tail: bool = True) -> Marked:
        """:meth:`pieces` as one sentence, its code marked (:mod:`vjp_magic.core.marked`)."""
        return marked("".join(code(text) if is_code else text
                              for text, is_code in self.pieces(tail)))

    def plain(self) -> str:
        """:meth:`pieces` as one line of text."""
        return str(self.sentence())


def _joiner(k: int, count: int) -> str:
    return "" if k == 0 else (" and " if k == count - 1 else ", ")


def _names(names) -> str:
    """The inputs as the rest of the display spells them (``m[0].weight``, not the key
    ``m.0.weight``: :func:`~vjp_magic.core.validation.sentence_name`)."""
    names = [sentence_name(n) for n in names]
    return "".join(_joiner(k, len(names)) + n for k, n in enumerate(names)) or "the inputs"


def cut_inputs(cuts) -> set[str]:
    """The inputs whose derivatives some cut changes."""
    return {name for cut in cuts or () for name in cut.inputs}


# -- the data flow ----------------------------------------------------------------------------
@dataclass
class _Flow:
    """The forward pass: live tensors (id → input names), taint (key → cut indices), the
    cuts found (call index, input names), the constants each reaches (cut → [(call index of
    the live reader, key of the constant)]), and which call made each value."""

    live: dict = field(default_factory=dict)
    taint: dict = field(default_factory=dict)
    cuts: list = field(default_factory=list)
    meets: dict = field(default_factory=dict)
    made_by: dict = field(default_factory=dict)
    to_numpy: set = field(default_factory=set)  # cuts whose values went into numpy arrays
    exited: set = field(default_factory=set)  # cuts whose values left torch (numbers, lists)
    guessed: set = field(default_factory=set)  # ids tainted by :meth:`from_outside` alone
    frozen: set = field(default_factory=set)  # cuts of inputs a call read frozen (no grad)

    def from_outside(self, value) -> set:
        """The cuts whose values went into numpy, for a floating tensor no recorded call
        made and whose memory torch did not allocate (``torch.from_numpy`` of an array
        computed in numpy): the record cannot follow numpy, so these are a guess."""
        if not self.to_numpy or not isinstance(value, torch.Tensor) \
                or id(value) in self.made_by or id(value) in self.live \
                or not (value.is_floating_point() or value.is_complex()):
            return set()
        try:
            external = not value.untyped_storage().resizable()
        except Exception:  # noqa: BLE001 - sparse, meta …: not numpy's
            return set()
        if external:
            self.guessed.add(id(value))
            return set(self.to_numpy)
        return set()

    def tainted(self, value) -> set:
        """The cuts ``value`` was computed from: by identity; by memory only for a value
        no recorded call made (``torch.from_numpy`` of a cut's numpy array), never for a live
        one (``x.detach()`` shares ``x``'s memory, yet ``x`` is not cut)."""
        if id(value) in self.made_by or id(value) in self.live:
            return set(self.taint.get(id(value), ()))
        return set().union(*(self.taint.get(k, ()) for k in _keys(value))) \
            or self.from_outside(value)


def find_cuts(record, inputs: dict, output) -> tuple[Cut, ...]:
    """The cuts on the way from ``inputs`` (name → tensor) to ``output`` in ``record`` (an
    :class:`~.record.OpRecord`), in the order they ran; empty without a (complete) record."""
    if record is None or record.failed is not None or not record.calls \
            or not isinstance(output, torch.Tensor):
        return ()
    calls = record.calls
    if not any(_makes_untracked(call) for call in calls):
        return ()  # nothing left autograd anywhere (what _forward would find, read cheaply)
    output = recorded_alias(record, inputs, output)
    flow = _forward(calls, inputs)
    if not flow.cuts:
        return ()
    needed = _needed(calls, output)
    return _described(calls, flow, needed, inputs)


def _forward(calls, inputs: dict) -> _Flow:
    flow = _Flow(live={})
    for name, t in inputs.items():  # one tensor named twice (b = a): both names
        if isinstance(t, torch.Tensor):
            flow.live.setdefault(id(t), set()).add(name)
    leaves = {id(t) for t in inputs.values() if isinstance(t, torch.Tensor)}
    for index, call in enumerate(calls):
        read = _objects((call.args, call.kwargs)) + _captured(call)
        if function_name(call.func) in _SHAPE_ONLY and not any(  # x's shape alone (a fill
                flow.tainted(o) for o in read if not isinstance(o, torch.Tensor)):  # from x: cut)
            flow.made_by.update((id(out), index) for out in _floating(outs_of(call)))
            continue
        names = set().union(*(flow.live.get(id(o), ()) for o in read))
        tainted = set().union(*(flow.tainted(o) for o in read)) \
            if flow.taint or flow.to_numpy else set()  # nothing is tainted before a cut
        gone = flow.to_numpy | flow.exited  # cuts whose values left torch so far
        loose = [o for o in read if _loose(o, call, flow)] if gone and not tainted else []
        outside = bool(loose) and not names
        if outside:  # torch.tensor(a), torch.ones(3) * v of a number or an array computed
            tainted = set(gone)  # outside torch after a value left it: a guess, as above
        outs = _floating(outs_of(call)) + _exits(call)
        detaching = function_name(call.func) in DETACHING
        tracked = [o for o in outs if isinstance(o, torch.Tensor) and id(o) in call.tracked
                   and not detaching]  # (from an input, or from a tensor not asked about)
        live = tracked if names else []
        if live and loose:  # x * (x.sum().item() + 0.5): the number may hold the values
            for o in loose:
                flow.guessed.add(id(o))
                for cut in gone:
                    flow.meets.setdefault(cut, []).append((index, id(o)))
        if live:  # a weight frozen for this call alone, its bias not: the output is tracked
            _frozen_reads(flow, call, index)
        # (an input written in place before it required grad, x.add_(1) then
        # x.requires_grad_(), is the input still: no value left autograd)
        dead = [o for o in outs if not any(o is t for t in live) and id(o) not in leaves]
        for out in outs:
            flow.made_by[id(out)] = index
        for out in live:
            flow.live.setdefault(id(out), set()).update(names)
        if names and dead:
            tainted = tainted | {len(flow.cuts)}
            flow.cuts.append((index, frozenset(names)))
            for out in dead:  # the cut's own value, where it meets a live call later
                flow.taint.setdefault(id(out), set()).add(len(flow.cuts) - 1)
        if not tainted:
            continue
        if _exits(call):
            flow.exited.update(tainted)
        for out in dead:
            for key in _keys(out):
                flow.taint.setdefault(key, set()).update(tainted)
            if _is_array(out):
                flow.to_numpy.update(tainted)
            if outside or any(id(o) in flow.guessed for o in read):
                flow.guessed.add(id(out))
        if tracked:  # a constant read where autograd tracks the result: it reaches the
            for o in read:  # output on the graph (a + b.detach() asked of b alone, too)
                for cut in flow.tainted(o):
                    flow.meets.setdefault(cut, []).append((index, id(o)))
    return flow


def _frozen_reads(flow: _Flow, call, index: int) -> None:
    """A cut for the inputs ``call`` read while they required no grad (:func:`.plan.frozen_at`:
    set aside with ``requires_grad_(False)`` around the call), where its result is tracked
    all the same: the cell's graph has no edge to them there, nor has the replay's."""
    frozen = frozen_at(call, flow.live)
    if not frozen:
        return
    flow.cuts.append((index, frozenset().union(*(flow.live[id(o)] for o in frozen))))
    flow.frozen.add(len(flow.cuts) - 1)
    flow.meets.setdefault(len(flow.cuts) - 1, []).extend((index, id(o)) for o in frozen)


def _captured(call) -> list:
    """The tensors a custom Function's call reads without being given them: those its
    callable arguments hold or read by a name (:func:`..core.reach.reached`: a module's
    parameters and buffers, a bound method's owner's, a partial's, a closure's, a global a
    lambda reads: ``checkpoint(m[:2], x)`` reads ``m[0].weight`` inside its forward, where
    the record does not look)."""
    if not isinstance(call.func, FunctionApply):
        return []
    found: dict = {}
    for value in [*call.args, *call.kwargs.values()]:
        if callable(value):
            for t in tensors_of(reached([value]), plain=False):
                found.setdefault(id(t), t)
    return list(found.values())


def _makes_untracked(call) -> bool:
    """Whether a call makes a floating value autograd does not track (a detaching call, a
    result or target without grad, a value out of torch): only such a call can be a cut."""
    if function_name(call.func) in DETACHING or _exits(call):
        return True
    return any(id(out) not in call.tracked
               for out in _floating(outs_of(call)))


def _needed(calls, output) -> set[int]:
    """The indices of the calls whose floating results the output is computed from (by
    identity, and in-place writes into its memory)."""
    wanted, memory, kept = {id(output)}, {storage_key(output)} - {None}, set()
    for index in range(len(calls) - 1, -1, -1):
        call = calls[index]
        outs = _floating(outs_of(call)) + _exits(call)
        writes = {storage_key(t) for t in call.targets} - {None}
        if not any(id(o) in wanted for o in outs) and not writes & memory:
            continue
        kept.add(index)
        for item in _objects((call.args, call.kwargs)):
            wanted.update(_keys(item))
            if isinstance(item, torch.Tensor) and storage_key(item) is not None:
                memory.add(storage_key(item))
    return kept


def _objects(value, depth: int = 0) -> list:
    """The values a call reads: tensors, Python numbers, lists and tuples (and what they
    hold), numpy arrays."""
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return [value] if _is_data(value) else []
    found = [value] if depth else []  # an argument list, not the call's own
    if depth > 4:
        return found
    for item in items:
        found.extend(_objects(item, depth + 1))
    return found


def _is_data(value) -> bool:
    return isinstance(value, (torch.Tensor, float, complex)) or _is_array(value)


def _loose(value, call, flow: _Flow) -> bool:
    """Whether ``value``, read by ``call``, is a floating number or array no recorded call made
    and that is no constant written in the calling code (``x * 2.0``): after a value left
    torch, Python or numpy arithmetic on it (``x.min().item() + 0.5``, ``sum(x.tolist())``)
    makes such a number, which the record cannot follow."""
    if id(value) in flow.made_by:
        return False
    if isinstance(value, (float, complex)):
        pass
    elif not _is_array(value) or getattr(value, "dtype", None) is None \
            or value.dtype.kind not in "fc":
        return False
    site = getattr(call, "site", None)  # (a constant of a function the cell called counts)
    codes = [site[0]] + [inner[0] for inner in site[4:]] if site else []
    return not any(value is c for code in codes for c in _constants(code))


def _constants(code) -> list:
    """The constants written in ``code`` (tuples of them opened)."""
    found: list = []
    todo = [(const, 0) for const in getattr(code, "co_consts", ())]
    while todo:
        const, depth = todo.pop()
        if isinstance(const, (tuple, frozenset)) and depth < 3:
            todo.extend((item, depth + 1) for item in const)
        else:
            found.append(const)
    return found


def _is_array(value) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "__array_interface__")


def _keys(value) -> list:
    """How a value is recognised again: its identity, and its memory (a tensor's storage, a
    numpy array's base)."""
    keys: list = [id(value)]
    if isinstance(value, torch.Tensor):
        memory = storage_key(value)
        if memory is not None:
            keys.append(("memory", memory))
    elif _is_array(value):
        keys.append(("memory", value.__array_interface__["data"][0]))
        base = getattr(value, "base", None)
        if base is not None:
            keys.append(id(base))
    return keys


def _floating(tensors) -> list:
    return [t for t in tensors if t.is_floating_point() or t.is_complex()]


def _exits(call) -> list:
    """What a call hands out of torch (a Python number or list, a numpy array), where it
    holds floating values."""
    result = call.result
    if isinstance(result, (float, complex)):
        return [result]
    if _is_array(result) and result.dtype.kind in "fc":
        return [result]
    if isinstance(result, (list, tuple)) and not tensors_in(result) and _holds_floats(result):
        return [result] + [o for o in _objects(result, 1) if o is not result]
    return []


def _holds_floats(value, depth: int = 0) -> bool:
    if isinstance(value, (float, complex)):
        return True
    if isinstance(value, (list, tuple)) and value and depth < 6:
        return _holds_floats(value[0], depth + 1)
    return False


# -- the words --------------------------------------------------------------------------------
def _described(calls, flow: _Flow, needed: set, inputs: dict) -> tuple[Cut, ...]:
    """Each cut whose constants the output needs, once per place in the source."""
    found: dict = {}
    for cut, (index, names) in enumerate(flow.cuts):
        reached = [key for at, key in flow.meets.get(cut, ()) if at in needed]
        if not reached:
            continue
        guessed = all(key in flow.guessed for key in reached)
        call = calls[index]
        kind = CutKind.OTHER if cut in flow.frozen else _kind(call)
        site = _Site.of(call)
        where = (site.key if site else None, kind, function_name(call.func))
        entry = found.setdefault(where, {"call": call, "kind": kind, "site": site,
                                         "names": set(), "constants": [], "count": 0,
                                         "index": index, "guessed": guessed,
                                         "frozen": cut in flow.frozen})
        entry["guessed"] = entry["guessed"] and guessed
        entry["names"] |= names
        entry["count"] += 1
        for key in reached:
            made = flow.made_by.get(key)
            if made is not None and made not in entry["constants"]:
                entry["constants"].append(made)
    order = [n for n in inputs]
    cuts = [_cut(calls, entry, order) for entry in found.values()]
    return tuple(cuts[:MAX_CUTS])


def _cut(calls, entry: dict, order: list) -> Cut:
    alone = len(order) == 1
    call, kind, site = entry["call"], entry["kind"], entry["site"]
    names = tuple(n for n in order if n in entry["names"])
    own = site.text() if site else None
    constants: list = []
    for index in entry["constants"]:
        made = _Site.of(calls[index])
        text = _unconverted(made.text()) if made else None
        if text is None:
            constants = []
            break
        if text not in constants:
            constants.append(text)
    op = own or (".data" if kind is CutKind.DATA else f".{function_name(call.func)}()")
    line = site.line if site else None
    written = None
    if kind is CutKind.NO_GRAD:
        written = _grad_off(calls, entry["index"], site)
    elif kind is CutKind.OTHER:
        written = _freeze(calls, entry["index"])
    if written is not None:
        op, line = written[0], written[1] or line
    if entry["frozen"] and written is not None and written[0].endswith(_FREEZE):
        constants = [written[0][:-len(_FREEZE)]]  # m[0].weight, set aside for the call
    if kind in (CutKind.NO_GRAD, CutKind.OTHER) and own and not constants:
        constants = [_unconverted(own) or own]
    return Cut(op, kind, line, tuple(constants[:3]), names, entry["count"], entry["guessed"],
               alone, site.function() if site else None, site.caller() if site else None,
               untold=kind is CutKind.NO_GRAD and written is None)


# Calls that only convert (leave autograd, change container or device): what became constant
# is named without them (x**3 of x.detach()**3, x of torch.tensor(x.tolist())).
_CONVERSIONS = {"detach", "detach_", "data", "numpy", "tolist", "item", "cpu", "cuda", "clone",
                "contiguous", "tensor", "as_tensor", "asarray", "array", "from_numpy",
                "new_tensor", "float", "double"}


def _unconverted(text: str | None) -> str | None:
    """``text`` with conversions taken off (:data:`_CONVERSIONS`), as written otherwise."""
    if text is None:
        return None
    for _ in range(8):  # one conversion at a time, outermost first
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError:
            return text
        found = next(((node, inner) for node in ast.walk(tree)
                      if (inner := _converted(node)) is not None), None)
        if found is None:
            return text
        node, inner = found
        raw = text.encode()
        text = (raw[:node.col_offset] + raw[inner.col_offset:inner.end_col_offset]
                + raw[node.end_col_offset:]).decode()
    return text


def _converted(node: ast.expr) -> ast.expr | None:
    """What a conversion converts (``x`` of ``x.detach()``, ``x.data``, ``torch.tensor(x)``),
    or None where ``node`` is none."""
    if isinstance(node, ast.Attribute) and node.attr == "data":
        return node.value
    if not isinstance(node, ast.Call) or node.lineno != node.end_lineno:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in _CONVERSIONS:
        return None
    if isinstance(func, ast.Attribute) and not _is_module(func.value):
        return func.value if not node.args and not node.keywords else None  # x.detach()
    return node.args[0] if node.args else None  # torch.tensor(a), np.asarray(a)


def _is_module(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("torch", "np", "numpy")


def _kind(call) -> CutKind:
    name = function_name(call.func)
    if not call.grad_enabled:
        return CutKind.NO_GRAD
    if isinstance(call.func, FunctionApply) and not any(
            needs for _, needs in call.seen.values()):  # (given a tensor that requires
        return CutKind.FUNCTION                          # grad: its output marked not so)
    if name in ("detach", "detach_"):
        return CutKind.DETACH
    if name == "data":
        return CutKind.DATA
    if name in _COPIES:
        return CutKind.COPY
    if name in _EXITS:
        return CutKind.EXIT
    return CutKind.OTHER


# a grad-mode switch that turns gradients off, as a cell writes it
_GRAD_OFF = re.compile(r"\bno_grad\b|\binference_mode\b(?!\(\s*(mode\s*=\s*)?False)"
                       r"|\b_?set_grad_enabled\(\s*(mode\s*=\s*)?False\s*\)")


def _grad_off(calls, index: int, site) -> tuple[str, int | None] | None:
    """What turned gradients off at call ``index``, as the cell wrote it, and its cell line
    (None: not in the cell): the ``with`` or decorator around the call in the source
    (``torch.inference_mode()``, ``@torch.no_grad()``), else the recorded switch before it
    (``torch.set_grad_enabled(False)`` as a statement); None where neither tells it."""
    around = _grad_off_around(site) if site is not None else None
    if around is not None:
        return around
    switch = _grad_switch(calls, index)
    if switch is None:
        return None
    written = switch.with_item() or switch.text() or switch.source_line()  # (3.10: no text)
    return (written, switch.line) if written and len(written) <= MAX_TEXT \
        and _GRAD_OFF.search(written) else None


def _grad_off_around(site) -> tuple[str, int | None] | None:
    """The innermost ``with`` item or function decorator holding ``site``'s line (its
    innermost frame's) that turns gradients off (:data:`_GRAD_OFF`), as written, and its line
    where the cell holds it."""
    code, lineno = (site.inner[0], site.inner[2]) if site.inner else (site.code, site.lineno)
    source = "".join(linecache.getlines(code.co_filename))
    try:
        tree = _parsed(source)
    except (SyntaxError, ValueError):
        return None
    found, start = None, 0
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list) or not body or body[0].lineno < start \
                or not body[0].lineno <= lineno <= body[-1].end_lineno:
            continue
        heads = [("", item.context_expr) for item in getattr(node, "items", ())] + \
            [("@", head) for head in getattr(node, "decorator_list", ())]
        for mark, head in heads:
            text = ast.get_source_segment(source, head) or ast.unparse(head)
            if _GRAD_OFF.search(text) and len(text) <= MAX_TEXT:
                found, start = (mark + text, head.lineno), body[0].lineno
    if found is None:
        return None
    return found[0], found[1] if site.line is not None and not site.inner else None


_FREEZE = ".requires_grad_(False)"


def _freeze(calls, index: int) -> tuple[str, int | None] | None:
    """The ``requires_grad_(False)`` (a tensor's or a module's) the cell called, or the
    ``p.requires_grad = False`` it set (``for p in enc.parameters(): ...``), on a tensor call
    ``index`` reads while it required no grad there, as written, and its line."""
    call = calls[index]
    frozen = {key for key, (_, needs) in call.seen.items() if not needs}
    for at in range(index - 1, -1, -1):
        earlier = calls[at]
        name = function_name(earlier.func)
        if name not in ("requires_grad_", "requires_grad") or not earlier.args \
                or id(earlier.args[0]) not in frozen or _needs_grad(earlier):
            continue
        site = _Site.of(earlier)
        written = site.text() if site else None
        if written and name == "requires_grad":  # the attribute set: the statement's spelling
            written = f"{written} = {earlier.args[1]!r}" if len(earlier.args) > 1 else None
        return (written, site.line) if written else None
    return None


def _needs_grad(call) -> bool:
    """The flag a ``requires_grad_`` call sets (True where not given)."""
    flag = call.args[1] if len(call.args) > 1 else call.kwargs.get("requires_grad", True)
    return bool(flag)


def _grad_switch(calls, index: int):
    """The site of the ``torch.no_grad()`` (or ``set_grad_enabled(False)``) in force at
    call ``index``: the last switch made with grad enabled before it."""
    for at in range(index - 1, -1, -1):
        call = calls[at]
        if call.grad_enabled and function_name(call.func) in _GRAD_SWITCHES:
            return _Site.of(call)
        if call.grad_enabled:
            return None
    return None


@dataclass(frozen=True)
class _Site:
    """Where a recorded call was made (:func:`~.record.call_site`); ``inner``: where it was
    made inside a function of another file the cell called (a module's ``forward``)."""

    code: object
    lasti: int
    lineno: int
    in_cell: bool
    inner: tuple | None = None

    @classmethod
    def of(cls, call) -> _Site | None:
        site = getattr(call, "site", None)
        return cls(*site) if site else None

    @property
    def key(self) -> tuple:
        inner = (id(self.inner[0]), self.inner[1]) if self.inner else ()
        return (id(self.code), self.lasti, *inner)

    @property
    def line(self) -> int | None:
        return self.lineno if self.in_cell and self.code.co_filename != "<string>" else None

    def with_item(self) -> str | None:
        """``torch.no_grad()`` of a ``with torch.no_grad():`` line this site (its innermost
        frame) is on."""
        line = self.source_line() or ""
        if not line.startswith("with ") or not line.endswith(":"):
            return None
        item = line[5:-1].strip()
        return item if 0 < len(item) <= MAX_TEXT else None

    def source_line(self) -> str | None:
        """The line this site (its innermost frame) is on, stripped (None: not known)."""
        code, lineno = (self.inner[0], self.inner[2]) if self.inner else (self.code, self.lineno)
        lines = linecache.getlines(code.co_filename)
        return lines[lineno - 1].strip() if lineno and len(lines) >= lineno else None

    def text(self) -> str | None:
        """The call's expression as written where it was made (its innermost frame's; Python
        3.11+: the instruction's positions)."""
        return _written_at(*self.inner[:2]) if self.inner else _written_at(self.code, self.lasti)

    def caller(self) -> str | None:
        """The cell's call that made this one deeper (``net(Xg)``), as written; None where
        the cell made it itself or the source is not known."""
        return _written_at(self.code, self.lasti) if self.inner else None

    def function(self) -> tuple[str, str] | None:
        """(the function it was made in, "line 7 of model.py" or ""), where ``inner``."""
        if not self.inner:
            return None
        code, line = self.inner[0], self.inner[2]
        name = getattr(code, "co_qualname", code.co_name)
        file = code.co_filename
        shown = not file.startswith("<") and "ipykernel" not in file and "ipython-input" \
            not in file
        return name, (f"line {line} of {os.path.basename(file)}" if shown and line else "")


def _written_at(code, lasti: int) -> str | None:
    """The expression of instruction ``lasti`` of ``code`` as written (Python 3.11+)."""
    positions = getattr(code, "co_positions", None)
    if positions is None:
        return None
    try:
        start, end, col, end_col = list(positions())[lasti // 2]
    except (IndexError, ValueError):
        return None
    lines = linecache.getlines(code.co_filename)
    if None in (start, end, col, end_col) or start != end or len(lines) < start:
        return None
    source = lines[start - 1].encode()  # the positions count UTF-8 bytes
    text = source[col:end_col].decode(errors="replace").strip()
    return text if 0 < len(text) <= MAX_TEXT else None


# -- values read into Python ------------------------------------------------------------------
# Calls that hand a tensor's values to Python (a truth value, a number, a list, an array)
_READS = {"__bool__", "item", "__float__", "__int__", "__index__", "__complex__", "tolist",
          "numpy", "__array__", "equal", "allclose", "is_nonzero", "__format__",
          "__contains__", "__repr__", "__str__"}  # and printing: ``if '-' in str(x):``
_PRINTS = {"__repr__", "__str__", "__format__"}  # print(x), print(f"{x}") only show, anywhere
# Functions called by name in a statement that only shows a value (``print(f"{y.item():.3f}")``,
# ``print(tuple(x.tolist()))``): a read in one, after the output's last call, binds and chooses
# nothing. A function of the user's called by name may rebind the output (``global y``): not here
_SHOWS = {"print", "display", "pprint", "str", "repr", "format", "float", "int", "round",
          "abs", "len", "tuple", "list", "sorted", "min", "max", "sum", "type", "id", "hex",
          "bool", "complex"}


@dataclass(frozen=True)
class Read:
    """A value computed from the inputs read into Python (``if x.sum() > 0:``,
    ``float(x.sum())``, ``x.max().item()``): it may choose the path the cell takes, so what
    the recorded graph proves holds for the path these inputs took. ``op``: the call as
    written (its name where the source is not known); ``line``: its cell line; ``inputs``:
    the inputs it was computed from."""

    op: str
    line: int | None
    inputs: tuple[str, ...]
    shape: bool = False  # a result whose shape the values set (``x[x > 0]``, ``nonzero``)

    def sentence(self) -> Marked:
        """One sentence: what was read, and what it means for the claim."""
        names = _names(self.inputs)
        where = f" on line {self.line}" if self.line else ""
        if self.shape:
            return marked(f"{code(self.op)}{where} makes a tensor whose shape the values of "
                          f"{names} set (its length can choose the cell's path: `len`, "
                          f"`.shape`, an `if`): the structure shown is proved for the graph "
                          f"this {names} made, so it is claimed at this {names} only.")
        return marked(f"{code(self.op)}{where} reads a value computed from {names} into "
                      f"Python, where it may choose the cell's path (an `if`, a loop, a "
                      f"number used later): the structure shown is proved for the graph this "
                      f"{names} made, so it is claimed at this {names} only.")


def graph_notes(record, inputs: dict, output) -> dict:
    """The result's ``cuts`` (:func:`find_cuts`) and ``steers`` (:func:`find_reads`, those not
    a cut), each only where there are some: stored before any feature builds text, since
    every sentence that words a proof asks ``r.steers``
    (:func:`vjp_magic.core.pairing.proved_for_every`)."""
    cuts = find_cuts(record, inputs, output)
    named = {(cut.op, cut.line) for cut in cuts}  # a value read that is a cut: said there
    reads = tuple(read for read in find_reads(record, inputs, output)
                  if (read.op, read.line) not in named)
    return {**({"cuts": cuts} if cuts else {}), **({"steers": reads} if reads else {})}


def find_reads(record, inputs: dict, output) -> tuple[Read, ...]:
    """The places (one each, in the order they ran) where a value computed from ``inputs``
    (name -> tensor; by identity, through any recorded call) was read into Python or set a
    result's shape (:func:`_what_is_read`), and whose value did not go back into torch
    (``torch.tensor(x.tolist())``: a cut, said as one); empty without a (complete) record.
    A read after the last call ``output`` needs counts too (``if x.sum() < 0: y = ...``),
    unless its statement only shows a value (``print(loss.item())``, :func:`_shown_only`); a
    print or a shape only shown (``print(x)``) counts nowhere. A numpy array sharing an
    input's memory is no value going back into torch when ``x`` is read again: only a tensor
    no recorded call made (``torch.from_numpy``) is matched by memory."""
    if record is None or record.failed is not None or not record.calls \
            or not isinstance(output, torch.Tensor):
        return ()
    derived = {id(t): {n for n, u in inputs.items() if u is t} for t in inputs.values()
               if isinstance(t, torch.Tensor)}
    made = set(derived)  # tensors of the record: recognised by identity only
    found: dict = {}
    handed: dict = {}  # key of a value read (_keys) -> the key of its read in ``found``
    back: set = set()  # reads whose value went back into torch
    last = None  # the index of the last call the output needs, once a read was found
    shaped: set = set()  # reads of a shape set by values (no value handed to Python)
    for index, call in enumerate(record.calls):
        if handed:
            for item in _objects((call.args, call.kwargs)):
                keys = [id(item)] if isinstance(item, torch.Tensor) and id(item) in made \
                    else _keys(item)
                back.update(handed[k] for k in keys if k in handed)
        made.update(id(out) for out in outs_of(call))
        names = set().union(*(derived.get(id(t), ()) for t in reads_of(call)))
        if not names:
            continue
        for out in outs_of(call):
            derived.setdefault(id(out), set()).update(names)
        name = function_name(call.func)
        read = _what_is_read(call, name, names, derived)
        if read is None:
            continue
        names, shape = read
        if last is None:
            needed = _needed(record.calls, recorded_alias(record, inputs, output))
            last = max(needed, default=-1)
        site = _Site.of(call)
        shows = index >= last or name in _PRINTS or shape  # these only show, anywhere
        if shows and _shown_only(site, stores=index >= last):
            continue
        key = site.key if site else name
        entry = found.setdefault(key, [site, name, set()])
        entry[2] |= names
        shaped.update([key] if shape else [])
        for value in [] if shape else [call.result] + _objects(call.result, 1):
            if _is_data(value) or isinstance(value, list):
                for k in _keys(value):
                    handed[k] = key
        if len(found) >= MAX_CUTS:
            break
    order = list(inputs)
    return tuple(Read((site.text() if site else None) or f".{name}()",
                      site.line if site else None, tuple(n for n in order if n in names),
                      key in shaped)
                 for key, (site, name, names) in found.items() if key not in back)


def _what_is_read(call, name: str, names: set, derived: dict) -> tuple[set, bool] | None:
    """The inputs a call reads into Python (``names``, where it is in :data:`_READS`), or
    whose values set its result's shape (:func:`_shape_setters`: those of the setters
    alone), and whether it is a shape; None where it reads none."""
    setters = _shape_setters(name, call.args, call.kwargs or {})
    if setters is not None:
        names = set().union(*(derived.get(id(t), ()) for t in setters))
    elif name not in _READS:
        return None
    return (names, setters is not None) if names else None


@functools.lru_cache(maxsize=256)
def _tagged(name: str) -> bool:
    """Whether torch tags an aten op of this name (or its private kernel, ``_name`` /
    ``_name2``: ``torch.unique``) as making a result whose shape or Python value its input's
    values set (``torch.Tag.dynamic_output_shape`` / ``data_dependent_output``)."""
    for aten in (name, f"_{name}", f"_{name}2"):
        try:
            packet = getattr(torch.ops.aten, aten)
            overloads = [getattr(packet, o) for o in packet.overloads()]
        except (AttributeError, RuntimeError):
            continue
        if any(_SET_BY_VALUES & set(op.tags) for op in overloads):
            return True
    return False


_SET_BY_VALUES = {torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output}


def _shape_setters(name: str, args: tuple, kwargs: dict) -> list | None:
    """The tensors whose values set the shape of a call's result (``x[x > 0]``: the mask;
    ``torch.nonzero(m)``, ``m.unique()``, ``torch.bincount(i)``: ``m`` / ``i``), or None where
    the shape is set by shapes alone (``x[i]`` with an integer ``i``, ``torch.where(c, a,
    b)``, ``one_hot(i, 3)``, ``nonzero_static``). Torch's tags name the ops
    (:func:`_tagged`); the overloads of one name that are not, by their arguments."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    if name in ("__getitem__", "index"):
        index = args[1] if len(args) > 1 else None
        return [t for t in tensors_in(index) if t.dtype in (torch.bool, torch.uint8)] or None
    if name == "where":
        return [first] if len(args) + len(kwargs) == 1 else None
    if name == "masked_select":
        return tensors_in(args[1:] or kwargs.get("mask"))
    if name == "one_hot":
        classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
        return [first] if classes == -1 else None
    if name == "repeat_interleave":
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats", first)
        sized = kwargs.get("output_size") is not None
        return [repeats] if isinstance(repeats, torch.Tensor) and not sized else None
    if name == "argwhere" or (name not in _READS and _tagged(name)):  # argwhere: nonzero's
        return [first]
    return None


def _shown_only(site: _Site | None, stores: bool = True) -> bool:
    """Whether the read at ``site`` is in a statement that only shows a value: an expression
    statement (nothing bound: ``print(...)``, ``log.info(...)``, ``losses.append(...)``, a
    displayed last line) whose functions called by name are in :data:`_SHOWS` (methods are
    free; with ``stores`` False, only a tensor's own: ``losses.append`` may keep the value for
    a later ``if``), with no conditional (``a if c else b``, ``and``/``or``, ``:=``, a lambda or
    comprehension) in it. Before Python 3.11 (no positions) the statement is the one its line
    holds, where that line holds one statement alone. False where the source is not known (a
    read outside the cell, or a line shared with another statement): the read counts."""
    if site is None or not site.in_cell:
        return False
    positions = getattr(site.code, "co_positions", None)
    try:
        tree = _parsed("".join(linecache.getlines(site.code.co_filename)))
        start, end, col, end_col = list(positions())[site.lasti // 2] if positions else (
            site.lineno, site.lineno, None, None)
    except Exception:  # noqa: BLE001 - no positions, a source that does not parse: counted
        return False
    if start is None or end is None:
        return False
    statement = _statement_at(tree, start, end, col, end_col)
    if not isinstance(statement, ast.Expr):
        return False
    for node in ast.walk(statement.value):
        if isinstance(node, (ast.IfExp, ast.BoolOp, ast.NamedExpr, ast.Lambda,
                             ast.comprehension, ast.Await, ast.Yield, ast.YieldFrom)):
            return False
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Attribute) \
                and not (isinstance(node.func, ast.Name) and node.func.id in _SHOWS):
            return False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and not stores and not hasattr(torch.Tensor, node.func.attr):
            return False
    return True


@functools.lru_cache(maxsize=4)
def _parsed(source: str) -> ast.Module:
    """The cell's syntax tree, parsed once for all its reads (not changed by its readers)."""
    return ast.parse(source)


def _statement_at(tree, start: int, end: int, col, end_col):
    """The innermost statement holding the span (``col`` None: the one statement on line
    ``start``, None where the line holds several or none)."""
    if col is None or end_col is None:
        on_line = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)
                   and node.lineno <= start <= node.end_lineno
                   and not isinstance(node, _COMPOUND)]
        return on_line[0] if len(on_line) == 1 else None
    statement = None
    for node in ast.walk(tree):  # breadth first: the last statement holding it is innermost
        if isinstance(node, ast.stmt) and (node.lineno, node.col_offset) <= (start, col) \
                and (node.end_lineno, node.end_col_offset) >= (end, end_col):
            statement = node
    return statement


# statements holding others (their own lines are read by the statements inside)
_COMPOUND = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.FunctionDef, ast.ClassDef,
             ast.AsyncFunctionDef, ast.AsyncFor, ast.AsyncWith)


__all__ = ["Cut", "CutKind", "Read", "cut_inputs", "find_cuts", "find_reads"]
