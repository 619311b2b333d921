"""The switches the user's code flips while the analysis calls it: put back as it left them.

A plain run of a cell calls no backward; the analysis calls a user's custom Function's
backward in each of its passes (:mod:`.backward_writes`). Such a backward may flip a switch:
one of the process's (the default dtype, the thread count, deterministic algorithms, the
backends' flags, anomaly mode, print options, warnings filters, numpy's error handling, the
recursion limit, a global module hook) or one of an object it reaches (a hook registered on a
tensor or a module, a tensor's ``requires_grad``, a module's ``training``). A hook left on
the user's tensor would fire in every later pass and in the user's next backward.
:func:`taken` reads them all when the analysis starts, after the user's code ran (by value and
identity: no code of the user's runs, no ``__eq__``); :func:`put_back` sets each one that
moved back as it was, after each pass (a hook or a flag would change the next pass) and at
the end, where the warnings filters too (the analysis's own ``catch_warnings`` blocks swap
that list during its passes). Only a graph with a user's custom Function pays (its
:func:`.backward_writes.keep_for` takes them): the dense path reads none.

Not here: grad and inference mode (autograd's engine puts its thread's modes back after each
node it runs), the random generators (:func:`.quiet.generators_kept` and
:mod:`.own_generators`), the saved-tensor hooks and autocast (:mod:`.quiet`'s modes, off for
the analysis). Not put back: the inter-op thread count (PyTorch sets it once per process), a
hook registered on a graph's node (PyTorch has no reader of a node's hooks) or on an object
the backward does not reach (:func:`.reach.reached`); a hook put back leaves an empty dict
where PyTorch made one for it on a non-leaf tensor (it calls nothing).
"""
from __future__ import annotations

import sys
import warnings

import torch
from torch.utils.hooks import RemovableHandle

from .reach import dict_type, instance_dict, is_a, modules_of

_PRINT, _PRINTED = torch._tensor_str.PRINT_OPTS, ("precision", "threshold", "edgeitems",
                                                   "linewidth", "sci_mode")
# torch's C getters and setters of the backends' flags (those this PyTorch has)
_FLAGS = [(getattr(torch._C, "_get_" + n), getattr(torch._C, "_set_" + n))
          for n in ("cudnn_enabled", "cudnn_benchmark", "cudnn_deterministic",
                    "cudnn_allow_tf32", "cublas_allow_tf32", "mkldnn_enabled")
          if hasattr(torch._C, "_get_" + n) and hasattr(torch._C, "_set_" + n)]


def _deterministic() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


def _numpy(name: str):
    """numpy's ``name`` where numpy is imported (nothing is imported here), else None."""
    return getattr(sys.modules.get("numpy"), name, None)


def _numpy_state():
    geterr, printing = _numpy("geterr"), _numpy("get_printoptions")
    return (geterr(), printing()) if geterr and printing else None


def _set_numpy(state) -> None:
    if state is not None:
        _numpy("seterr")(**state[0])
        _numpy("set_printoptions")(**state[1])


# (reader, setter) of each process-wide switch, compared by value
_VALUES = (
    (torch.get_default_dtype, torch.set_default_dtype),
    (torch.get_num_threads, torch.set_num_threads),
    (_deterministic, lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
    (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    (torch.is_warn_always_enabled, torch.set_warn_always),
    (lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
     lambda v: torch.set_anomaly_enabled(*v)),
    (lambda: tuple(getattr(_PRINT, n) for n in _PRINTED),
     lambda v: [setattr(_PRINT, n, x) for n, x in zip(_PRINTED, v)]),
    (lambda: tuple(get() for get, _ in _FLAGS),
     lambda v: [put(x) for (_, put), x in zip(_FLAGS, v)]),
    (_numpy_state, _set_numpy),
    (sys.getrecursionlimit, sys.setrecursionlimit),
)
_MODULE_GLOBALS = vars(torch.nn.modules.module)  # its _global_*_hooks dicts
_GLOBAL_HOOKS = tuple(n for n, v in _MODULE_GLOBALS.items()
                      if n.startswith("_global_") and is_a(v, dict))
_MODULE_HOOKS = tuple(n for n, v in vars(torch.nn.Module()).items()  # a module's hook dicts
                      if "hooks" in n and is_a(v, dict))
_TENSOR_HOOKS = ("_backward_hooks", "_post_accumulate_grad_hooks")
HOLDERS = (torch.nn.Module, RemovableHandle)  # what :func:`taken` reads besides tensors


class Switches:
    """What :func:`taken` read: the values; the hook dicts of each tensor and module (one
    list an owner: a model has some 10 a module, nearly all empty) with the items of the
    non-empty ones, and other hook dicts (owner, name, dict, items); the leaves'
    ``requires_grad``, the modules' ``training``; the warnings' state."""

    def __init__(self, tensors, modules, handles) -> None:
        self.values = [get() for get, _ in _VALUES]
        self.handles = RemovableHandle.next_id  # moves with every hook registered
        held = [instance_dict(m) for m in modules]
        self.owned = [(t, [getattr(t, n) for n in _TENSOR_HOOKS]) for t in tensors] + \
            [(h, [dict.get(h, n) for n in _MODULE_HOOKS]) for h in held]
        self.items = {id(d): list(dict.items(d)) for _, ds in self.owned for d in ds if d}
        self.hooks = [_hooked(_MODULE_GLOBALS, n, _MODULE_GLOBALS[n]) for n in _GLOBAL_HOOKS]
        self.hooks += [_hooked(None, "", d) for d in map(_handled, handles) if d is not None]
        self.leaves = [(t, t.requires_grad) for t in tensors if t.is_leaf]
        self.modules = [(m, dict.get(h, "training")) for m, h in zip(modules, held)]
        self.warned = _warnings()

    def restore_hooks(self) -> None:
        """Every hook dict as :func:`taken` read it (:func:`_restore_hooks`)."""
        for owner, dicts in self.owned:
            names = _MODULE_HOOKS if is_a(owner, dict) else _TENSOR_HOOKS
            for name, hooks in zip(names, dicts):
                _restore_hooks(owner, name, hooks, self.items.get(id(hooks), [])
                               if isinstance(hooks, dict) else None)
        for entry in self.hooks:
            _restore_hooks(*entry)
        self.handles = RemovableHandle.next_id


def _handled(handle):
    """The hook dict a ``RemovableHandle`` removes its hook from (None once it is gone)."""
    ref = getattr(handle, "hooks_dict_ref", None)
    held = ref() if callable(ref) else None
    return held if is_a(held, dict) else None


def _hooked(owner, name: str, hooks) -> tuple:
    """One hook dict's entry of :class:`Switches`: ``owner`` a tensor (its attribute
    ``name``), a dict (its key), or None (the dict a handle the backward reaches holds)."""
    return owner, name, hooks, (list(dict.items(hooks)) if hooks else []) \
        if isinstance(hooks, dict) else None


def _warnings() -> tuple:
    return warnings.defaultaction, list(warnings.filters), list(dict.items(warnings.onceregistry))


def taken(tensors, held=()) -> Switches:
    """The process's switches, and those of ``tensors`` and of the modules (and their
    submodules) and hook handles among ``held`` (a user's hook's handle: the backward may
    remove it), as they are now."""
    handles = [v for v in held if is_a(v, RemovableHandle)]
    return Switches(tensors, modules_of(held), handles)


def put_back(switches: Switches | None, final: bool = False) -> None:
    """Each switch in ``switches`` that moved since :func:`taken`, set back as it was;
    ``final`` (the analysis's end): the warnings' filters and registry too, and every hook
    dict compared (else only where a hook was registered since)."""
    if switches is None:
        return
    for (get, put), value in zip(_VALUES, switches.values):
        if get() != value:
            put(value)
    for tensor, requires in switches.leaves:
        if tensor.requires_grad != requires:
            tensor.requires_grad_(requires)
    for module, training in switches.modules:
        held = instance_dict(module)
        if training is not None and dict.get(held, "training") is not training:
            held["training"] = training
    if final or RemovableHandle.next_id != switches.handles:
        switches.restore_hooks()
    if final:
        _restore_warnings(*switches.warned)


def _restore_hooks(owner, name: str, hooks, items) -> None:
    """A hook dict as it was: the hooks added since taken out, those removed put back, in
    place (PyTorch's C side holds the dict); one made since emptied and the old one (or
    None) set back."""
    by_key = is_a(owner, dict)
    now = hooks if owner is None else dict.get(owner, name) if by_key else getattr(owner, name)
    if now is hooks and (items is None or _same(hooks, items)):
        return  # (as a rule)
    if now is not hooks and is_a(now, dict):
        _refill(now, [])
    if items is not None and not _same(hooks, items):
        _refill(hooks, items)
    if now is not hooks:
        if by_key:
            owner[name] = hooks
        else:
            setattr(owner, name, hooks)


def _refill(held: dict, items: list) -> None:
    """``held`` holding ``items`` in place, through its base type's own methods (an
    ``OrderedDict``'s keep its order list; no subclass's method runs)."""
    kind = dict_type(held)
    kind.clear(held)
    kind.update(held, items)


def _same(held: dict, items: list) -> bool:
    return len(held) == len(items) and all(
        a is c and b is d for (a, b), (c, d) in zip(dict.items(held), items))


def _restore_warnings(action, filters: list, once: list) -> None:
    changed = warnings.defaultaction != action or len(warnings.filters) != len(filters) \
        or any(a is not b for a, b in zip(warnings.filters, filters))
    warnings.defaultaction = action
    if changed:
        warnings.filters[:] = filters
        getattr(warnings, "_filters_mutated", lambda: None)()
    if not _same(warnings.onceregistry, once):
        _refill(warnings.onceregistry, once)


__all__ = ["HOLDERS", "Switches", "put_back", "taken"]
