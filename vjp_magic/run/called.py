"""A function the user hands over to be called: ``vjp_magic.differentiate(fn, inputs)``.

:class:`Called` is the :class:`~.choose.Subject` of a zero-argument callable (``lambda:
F.cross_entropy(model(data), targets, reduction="none")``): it is called exactly once, its
torch calls recorded as a ``%%vjp`` cell's are (:func:`~.record.recording`; the calls run as
they would without it; not where it can call ``torch.compile``'d code: :mod:`.compiled`),
and its return value is the output. So the analysis has what it has
for a cell: a hook-free copy of the graph, and per-sample gradients vectorised over the
replay. Everything else the call does (random draws, hooks, module buffers, ``.grad`` of its
own ``backward``) is left exactly as a plain ``fn()`` leaves it; the analysis runs none of it.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch

from ..core.errors import VJPUsageError
from ..core.modes import users_modes
from .choose import dense
from .execute import user_frames_only
from .compiled import recorded
from .record import OpRecord


@dataclass(eq=False)
class Called:
    """The output of a zero-argument callable, called once (:meth:`call`), and the inputs
    given with it; ``record``: its torch calls."""

    value: object  # what the callable returned
    record: OpRecord | None
    given_inputs: dict  # name -> tensor (:func:`~vjp_magic.core.validation.named_inputs`)
    output_name: str = "y"
    entry: str = "differentiate"  # the function called (e.g. "hessian"): the advice names it
    log = output_source = namespace = scope = None
    replay = None  # advice to have a replay made: the function's operations are recorded

    @classmethod
    def call(cls, fn, inputs: dict, output_name: str = "y",
             entry: str = "differentiate") -> Called:
        """``fn()`` run once, recorded; its own exception goes on as it was raised (with a
        note saying that vjp_magic called it, where Python keeps notes). ``inputs``: name ->
        tensor, named before the call (a mistake there is refused before ``fn`` runs);
        ``entry``: the vjp_magic function called, as the advice names it."""
        __tracebackhide__ = True
        takes_no_arguments(fn)
        with recorded({}, True, values=(fn,), who="function") as record, \
                users_modes():  # fn() as in a plain call
            try:
                value = fn()
            except BaseException as error:  # noqa: BLE001 - the user's own, re-raised
                if sys.version_info >= (3, 11) and isinstance(error, Exception):
                    error.add_note(f"(raised by the function given to vjp_magic, called once "
                                   f"to compute {output_name}; nothing was differentiated)")
                raise user_frames_only(error)  # noqa: B904 - the user's error, as raised
        return cls(value, record, inputs, output_name, entry)

    def output(self, of: str | None) -> tuple[str, object]:
        if not isinstance(self.value, torch.Tensor):
            raise VJPUsageError(
                f"The function returned {_what(self.value)}, not a tensor: return the tensor "
                f"to differentiate ({self.output_name}), e.g. lambda: F.cross_entropy("
                "model(data), targets, reduction='none') for per-sample losses.")
        return self.output_name, dense(self.output_name, self.value,
                                       f"vjp_magic.{self.entry}(lambda: {{}}, x)")

    def inputs(self, wrt, output, output_name: str) -> dict:
        """The inputs given with the callable (``wrt``, their names, changes nothing)."""
        return dict(self.given_inputs)

    def release(self) -> None:
        """Drop the tensors the record holds."""
        if self.record is not None:
            self.record.release()


def is_function(value) -> bool:
    """Whether ``differentiate``'s first argument is a callable to call, not an output."""
    return callable(value) and not isinstance(value, torch.Tensor)


def takes_no_arguments(fn) -> None:
    """A callable that needs arguments is refused before it runs (it is called as ``fn()``)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: call it and see
        return
    needed = [p.name for p in signature.parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                     p.KEYWORD_ONLY)]
    if needed:
        raise VJPUsageError(
            f"vjp_magic calls the function with no arguments, and it needs {', '.join(needed)}: "
            f"wrap the call, e.g. differentiate(lambda: f({', '.join(needed)}), inputs).")


def _what(value) -> str:
    """A returned value, in a few words: ``a float (0.5)``, ``a tuple of 2``."""
    kind = type(value).__name__
    if isinstance(value, (tuple, list, dict)):
        return f"a {kind} of {len(value)} (return one tensor, e.g. its first item)"
    if value is None:
        return "None (a missing return?)"
    shown = repr(value)
    return f"a {kind} ({shown})" if len(shown) <= 40 else f"a {kind}"


__all__ = ["Called", "is_function", "takes_no_arguments"]
