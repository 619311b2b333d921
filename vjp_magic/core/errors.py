"""The exception types for user mistakes, and the one warning.

Anything raised as :class:`VJPUsageError` is a mistake in how the package was
used (a wrong name, an input that does not require grad, ...). The magics layer
turns it into a short IPython ``UsageError``; every other exception is a bug and
keeps its traceback.
"""
import ast


class VJPUsageError(ValueError):
    """A user mistake, with a message that says what to do: shown by IPython as that one
    line, without a traceback through vjp_magic (``_render_traceback_``), also where the
    user's own cell calls the package (``r.jacobian('z')``)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class UnknownName(VJPUsageError, KeyError):
    """A name that is none of a result's inputs: a usage error, and the ``KeyError`` that a
    dict of them raises (its message not quoted as a ``KeyError``'s key is)."""

    __str__ = BaseException.__str__


class OutOfRange(VJPUsageError, IndexError):
    """An index past what a result holds: a usage error, and the ``IndexError`` a sequence
    raises."""


# What of the user's code the analysis runs after it ran, as every refusal says it: a custom
# Function's backward is theirs and the passes call it (as any backward pass would)
AFTER_YOUR_CODE = ("after your code ran, vjp_magic calls none of it but a custom "
                   "autograd.Function's backward: no hook, no forward, no checkpointed block")


# What the analysis says of a custom Function's forward: true where no replay ran it
# (--gradcheck's replays do: :func:`ran_again` says so instead)
RUNS_ONCE = "runs only once"


UNREACHED = ("in the graph as computed, ", " does not reach ")  # (:func:`unreached`'s words)


def unreached(output: str, inputs: str) -> str:
    """What is known where an output's graph has no path to ``inputs`` (a ``.detach()``,
    ``torch.no_grad``, ``.data``, an integer op on the way): "in the graph as computed, y does
    not reach x", never that y does not depend on x (the formula may use it). The one
    sentence for it; :data:`UNREACHED` its words, for a display that sets the names itself."""
    return f"{UNREACHED[0]}{output}{UNREACHED[1]}{inputs}"


def ran_again(note: str, reran: dict) -> str:
    """``note`` with :data:`RUNS_ONCE` made true where replays ran custom Functions' forwards
    again (``reran``: name -> times; --gradcheck's)."""
    if not reran or RUNS_ONCE not in note:
        return note
    times = sum(reran.values())
    return note.replace(RUNS_ONCE, f"ran once, in the cell, and {times:,} more "
                                   f"{'time' if times == 1 else 'times'} in --gradcheck's "
                                   "replays (said below)")


def reran_sentence(reran: dict) -> str:
    """What running custom Functions' forwards again (``reran``: name -> times) means for
    the user's state, and how to avoid it; '' where none ran again."""
    if not reran:
        return ""
    said = ", ".join(f"{name}'s forward {n:,} more {'time' if n == 1 else 'times'}"
                     for name, n in reran.items())
    return (f"The check's replays ran {said}, after the cell: it is the user's own code. "
            "Its prints were silenced and what it can reach put back (a running statistic, "
            "a module's buffers, a list it appends to, a number it counts calls in), but "
            "what it does beyond that (writing a file, sending a message) was done that "
            "many more times than in a plain run. Drop --gradcheck to run it only once.")


def invalid_gradient(error: BaseException) -> str:
    """The advice where a custom backward returned a gradient PyTorch refuses (another shape:
    a mistake in the user's backward), from PyTorch's own first line."""
    return (f"A custom backward is wrong: {str(error).splitlines()[0]}. A backward returns "
            "one gradient per input of forward, shaped like that input (or None).")


def where_advice(fix: str, custom: bool, replay: str | None) -> str:
    """What to do, from where the user is, about their code that a pass on the output's own
    graph would run: ``fix`` ("remove the hook"), and before it ``replay``, how the entry
    point they called has the output's operations recorded and a replay differentiated (None:
    they are already, in a %%vjp cell or a function given).
    Where a custom Function (``custom``) is on the graph no replay is made (none runs its
    forward again): ``fix`` is the only way."""
    fix = f"{fix[:1].upper()}{fix[1:]}"
    if custom:
        return (f"{fix} to see its derivatives: a custom autograd.Function on its graph keeps "
                "the analysis on that graph (no replay runs its forward again)")
    if replay:
        return f"{replay}; or {fix[:1].lower()}{fix[1:]}"
    return f"{fix} to see its derivatives"


def operand(source: str) -> str:
    """``source`` spelled so that an attribute may follow it in advice: ``y`` → ``y``,
    ``c**2`` → ``(c**2)`` (``c**2.real`` is a SyntaxError, ``-y.real`` another number)."""
    try:
        atom = isinstance(ast.parse(source.strip(), mode="eval").body,
                          (ast.Name, ast.Attribute, ast.Subscript, ast.Call, ast.Constant))
    except SyntaxError:
        atom = False
    return source if atom else f"({source})"


def refuse_meta(name: str, value: object) -> None:
    """A usage error where ``value`` is a meta tensor: a shape and no values, so nothing to
    differentiate at (``name``: how the message names it)."""
    if getattr(value, "is_meta", False):
        raise VJPUsageError(
            f"{name} is a meta tensor (device='meta'): it has a shape but no values, so it has "
            "no derivatives to show. Create the tensors on 'cpu' or 'cuda' (a module on the "
            "meta device: .to_empty(device='cpu'), then load its weights).")


class GraphFreed(VJPUsageError):
    """The output's graph can no longer be read: freed by a ``backward`` call (without
    ``retain_graph=True``) before the analysis ran."""


class SavedValueChanged(VJPUsageError):
    """The output's graph saved a value that was then changed in place (PyTorch's "modified
    by an inplace operation"): ``output_name`` the output, ``torch_message`` PyTorch's own
    text (it names the node, "output 0 of ExpBackward0"), for advice from the cell's source."""

    def __init__(self, message: str, output_name: str, torch_message: str):
        super().__init__(message)
        self.output_name = output_name
        self.torch_message = torch_message


class ObservedPatternWarning(UserWarning):
    """:func:`vjp_magic.sparse_jacobian`'s pattern was observed at this x by grouped probes,
    not proved from the graph, and too large to compute the entries outside it exactly."""
