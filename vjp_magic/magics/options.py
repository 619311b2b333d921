"""The magics' options: one grammar, IPython's ``magic_arguments``, for all three magics.

Each magic declares its options with ``@argument`` lines and reads its line with its own
parser (``self.vjp.parser``, ``self.jacobian.parser``, ``self.hessian.parser``); the same
declarations make ``%%vjp?``, ``%jacobian?`` and ``%hessian?``. Range checks are ``type=``
validators, so a bad number is refused while the line is read. The line is split into words
outside brackets and strings (:func:`vjp_magic.run.jacobian_line.words`), so
``torch.clamp(x, -1, 1)`` is one word.

``%jacobian`` and ``%hessian`` take their expression as ``argparse.REMAINDER``: options go
before it, and it begins at the first word that is not one of the magic's options, so
``-t.flip(0)`` or ``x * -y`` are read as Python. What follows is split at ``wrt``
(:func:`vjp_magic.run.jacobian_line.split_at_wrt`).
"""
from __future__ import annotations

import argparse
import ast
import difflib
import re
import weakref

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ..core.errors import VJPUsageError
from ..render.codegen import fresh, identifiers
from ..run.jacobian_line import split_at_wrt, word_spans, words

EXPRESSION = argument(
    "expression", nargs=argparse.REMAINDER, metavar="OUTPUT [INPUT ...]",
    help="Names (the output, then its inputs), or EXPRESSION wrt INPUT [INPUT ...]: any "
         "Python expression as the output. Without inputs they are found through the "
         "autograd graph.")


def whole_number(flag: str, low: int, high: int | None, meaning: str):
    """A ``type=`` validator: a whole number from ``low`` to ``high`` (None: no upper bound),
    refused with a message that names ``flag`` and says what the number means."""
    def read(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes a whole number, not {text!r}.") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{flag} is {meaning}, not {value}.")
        return value

    read.__name__ = flag.lstrip("-")
    return read


def _digits(flag: str):
    return whole_number(flag, 1, 17, "the number of significant digits shown (the precision), "
                                     "from 1 to 17")


def common_arguments(func):
    """The options every magic takes: ``-p N``/``--precision N``, ``--threshold N``,
    ``--width N``, ``--full-matrix``, ``-h``."""
    for decorator in reversed([
        argument("-p", dest="precision", type=_digits("-p"), default=None, metavar="N",
                 help="Significant digits shown, 1 to 17 (default: VJPMagics.precision)."),
        argument("--precision", dest="precision", type=_digits("--precision"), default=None,
                 metavar="N", help="The same as -p N."),
        argument("--threshold", type=whole_number(
                     "--threshold", 2, None, "how many rows/columns to show in full (at least 2)"),
                 default=None, metavar="N",
                 help="Rows/columns shown in full before summarising with dots (default: "
                      "VJPMagics.threshold)."),
        argument("--width", type=whole_number(
                     "--width", 20, None, "the characters one line of maths may take (at "
                     "least 20)"), default=None, metavar="N",
                 help="Characters one line of maths may take, 10 px each (default: "
                      "VJPMagics.width, 50: a 1024-px screen with the file browser open)."),
        argument("--full-matrix", dest="full_matrix", action="store_true",
                 help="Every entry of each matrix up to 400 entries, in column blocks "
                      "stacked vertically where wider than the line (the output may then "
                      "be taller than one screen)."),
        argument("-h", "--help", action="store_true", help="Show this help."),
    ]):
        func = decorator(func)
    return func


def read_cell_line(parser, line: str) -> argparse.Namespace:
    """``%%vjp``'s options (words split outside brackets and strings: ``--wrt x[0, 1]``); a
    line read before is not read again (a fresh copy of its options)."""
    read = _READ_LINES.setdefault(parser, {})
    if line in read:
        return _fresh(read[line])
    argv = words(line)
    _given_once(parser, argv)
    args, extras = _parsed(parser, argv, known=True)
    if extras:
        raise _unread(parser, line, extras, argv)
    if getattr(args, "wrt", None):  # one expression named twice is one input
        args.wrt = list(dict.fromkeys(n for word in args.wrt for n in unquoted_names(word)))
    if getattr(args, "check", None):
        args.check = unquoted(args.check)
    if len(read) >= _READ_MAX:
        read.pop(next(iter(read)))
    read[line] = _fresh(args)
    return args


OPTION = re.compile(r"--[A-Za-z][\w-]*(=.*)?")


def _unread(parser, line: str, extras: list[str], argv: list[str]) -> UsageError:
    """What to say of the words of ``%%vjp``'s line no option took: an unknown option
    (named, with the closest one and the list), a '-' expression after an option that takes
    expressions, or a stray name."""
    first = extras[0]
    before = argv[:argv.index(first)]
    expression = any(w.startswith(("--of", "--wrt", "--against")) for w in before)
    if OPTION.fullmatch(first) or (first.startswith("-") and not expression):
        return unknown_option(parser, first, "%%vjp", "; ".join([
            f"unrecognized arguments: {' '.join(extras)}",
            "its options: " + ", ".join(_option_names(parser))]))
    if first.startswith("-"):
        return UsageError(f"Could not read the options {line!r}: unrecognized arguments: "
                          f"{' '.join(extras)}. An expression that starts with '-' goes in "
                          "parentheses: (-x); or quote the whole expression: --of \"y * -x\".")
    return UsageError(f"Could not read the options {line!r}: {first!r} follows no option "
                      f"that takes it. Name inputs with --wrt {first}, the output with "
                      f"--of {first}.")


def unknown_option(parser, word: str, magic: str, options: str) -> UsageError:
    """``word`` (``--name`` or ``--name=value``) is none of ``magic``'s options: said so, with
    the closest option (difflib) and ``options`` (the ones it has)."""
    flag = word.partition("=")[0]
    close = difflib.get_close_matches(flag, _option_names(parser, every=True), n=1, cutoff=0.75)
    hint = f" Did you mean {close[0]}?" if close else ""
    if flag in CELL_OPTIONS and magic != "%%vjp":
        hint = f" {flag} is an option of %%vjp (a cell magic)."
    if flag in ("--wrt", "--of") and magic != "%%vjp":  # spelled in the line here
        hint = f" Name the output, then its inputs after wrt: {magic} y wrt x."
    return UsageError(f"Unknown option {flag} for {magic}.{hint} ({options}; {magic}? says "
                      "what each does.)")


def hessian_as_jacobian(flag: str, args, namespace) -> str:
    """``%hessian --picture`` / ``--explain`` refused with what works, in the user's names (the
    line's output and inputs, ``args``): the Hessian is the Jacobian of the gradient made with
    ``create_graph=True``, which ``%%vjp`` draws or explains; the gradient takes a name free
    in ``namespace``, so the cell overwrites none of the user's."""
    output, inputs = args.output_source, args.input_names
    x = inputs[0] if inputs else "x"
    g = fresh("g", set(namespace) | identifiers([output, *inputs]))
    cell = f"%%vjp {flag} --wrt {x}\n{g}, = torch.autograd.grad({output}, {x}, " \
        "create_graph=True)"
    said = {"--picture": "draw its pattern", "--explain": "explain it"}[flag]
    which = " (x: the tensor to differentiate with respect to; one cell per input)" \
        if not inputs else f" (one cell per input: likewise for {', '.join(inputs[1:])})" \
        if len(inputs) > 1 else ""
    return (f"%hessian takes no {flag}. The Hessian of {output} is the Jacobian of its "
            f"gradient (kept differentiable by create_graph=True): to {said}, run{which}\n\n"
            f"{cell}")


def _option_names(parser, every: bool = False) -> list[str]:
    """``parser``'s options, one spelling each (all spellings where ``every``); hidden ones
    (help=SUPPRESS) left out of the list."""
    names = []
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its options there only
        if not action.option_strings or (action.help == argparse.SUPPRESS and not every):
            continue
        names += action.option_strings if every else ["/".join(action.option_strings)]
    return names


def _given_once(parser, argv: list[str]) -> None:
    """A usage error where an option that takes values (other than one that gathers them,
    as ``--wrt``) is given twice: argparse would keep the last, dropping the first silently."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its options there only
        if action.nargs == 0 or not action.option_strings or isinstance(
                action, argparse._ExtendAction):  # noqa: SLF001
            continue
        given = [w for w in argv if w in action.option_strings
                 or w.startswith(tuple(o + "=" for o in action.option_strings))]
        if len(given) > 1:
            name = action.option_strings[-1]
            raise UsageError(f"{name} is given {len(given)} times; give it once (the last "
                             f"would replace the others).")


# Lines each parser read (parser -> line -> its options), bounded: the line of a cell run
# again is not parsed again (argparse costs about as much as a small cell's forward).
_READ_LINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_READ_MAX = 64


def _fresh(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` whose lists are copies too (nothing read is shared)."""
    return argparse.Namespace(**{k: list(v) if isinstance(v, list) else v
                                 for k, v in vars(args).items()})


def read_expression_line(parser, line: str, magic: str) -> argparse.Namespace:
    """``%jacobian``'s (or ``%hessian``'s) line: the options, and ``output_source`` and
    ``input_names`` split from the expression after them (not split when ``help``)."""
    spans = word_spans(line)
    argv = [line[a:b] for a, b in spans]
    args, extras = _parsed(parser, argv, known=True)
    start = len(argv) - len(args.expression)
    if extras:  # argparse took the expression's first word for an option: '-t.flip(0)'
        if OPTION.fullmatch(extras[0]):
            raise unknown_option(parser, extras[0], f"%{magic}", "its options go before the "
                                 f"expression: {_usage(parser)} EXPRESSION")
        start = argv.index(extras[0])
        args = _parsed(parser, argv[:start])  # what follows is the expression's, options or not
    _no_option_after(parser, argv[start:], magic)
    args.output_source, args.input_names = "", []
    if not args.help:
        source = line[spans[start][0]:] if start < len(spans) else ""
        try:
            args.output_source, args.input_names = split_at_wrt(source, magic)
        except VJPUsageError as error:
            raise UsageError(str(error)) from None
        quoted = words(args.output_source)  # "y" "x": Python would join the two strings
        if not args.input_names and len(quoted) > 1 and all(unquoted(w) != w for w in quoted):
            args.output_source, args.input_names = quoted[0], quoted[1:]
        args.output_source = unquoted(args.output_source)
        args.input_names = list(dict.fromkeys(  # x[0] x[0]: one input
            n for word in args.input_names for n in unquoted_names(word)))
    return args


# %%vjp's own options: spelled in a %jacobian or %hessian line, they are options, not Python
CELL_OPTIONS = ("--wrt", "--of", "--full", "--explain", "--code", "--check", "--against",
                "--reveal", "--gradcheck")


def _usage(parser) -> str:
    """``parser``'s usage line, without argparse's 'usage:' and the expression's metavar."""
    return " ".join(parser.format_usage().replace("::", "").split()[:-1])


def _no_option_after(parser, expression: list[str], magic: str) -> None:
    """A usage error where one of the magic's options follows the expression's first word
    (``%jacobian y x --picture``, ``... -p 3``), which Python would read as ``-(-picture)``."""
    actions = {o: a for a in parser._actions for o in a.option_strings}  # noqa: SLF001
    for i, word in enumerate(expression[1:], 1):
        flag = word.partition("=")[0]
        after = expression[i + 1:i + 2]
        takes = flag in actions and actions[flag].nargs != 0 and "=" not in word
        if flag not in actions and OPTION.fullmatch(word) and (
                flag in CELL_OPTIONS or not flag[2:].isidentifier()
                or difflib.get_close_matches(flag, list(actions), n=1, cutoff=0.75)):
            raise unknown_option(parser, word, f"%{magic}", "its options go before the "
                                 f"expression: {_usage(parser)} EXPRESSION")
        if flag not in actions or not (flag.startswith("--") or after[:1] != [] and
                                       after[0].isdigit()):
            continue
        if actions[flag].help == argparse.SUPPRESS:  # named only to say where it belongs
            raise UsageError(f"{flag} is not an option of %{magic} ({flag} goes with %%vjp "
                             f"or %jacobian, before the expression; %{magic}? lists its own).")
        option = [word] + (after if takes else [])
        rest = expression[:i] + expression[i + len(option):]
        raise UsageError(f"{flag} comes after the expression: options go before it, "
                         f"%{magic} {' '.join(option + rest)}.")


def _parsed(parser, argv: list[str], known: bool = False):
    """``parser``'s reading of ``argv``; a validator's message without argparse's prefix, and
    a value given to a switch (``--explain=yes``) said so."""
    try:
        return parser.parse_known_args(argv) if known else parser.parse_args(argv)
    except UsageError as error:
        raise UsageError(_argparse_words(parser, str(error))) from None


def _argparse_words(parser, message: str) -> str:
    """argparse's own message as what to do: a value given to a switch, an option without
    its value, an abbreviation of several options; a validator's message without argparse's
    prefix."""
    switch = re.match(r"argument (\S+): ignored explicit argument (.*)", message)
    if switch:
        flag = switch.group(1).split("/")[-1]
        return (f"{flag} is a switch and takes no value ({flag}="
                f"{switch.group(2).strip(chr(39))} given): write {flag} alone, or leave it out.")
    missing = re.match(r"argument (\S+): expected (one|at least one) argument", message)
    if missing:
        flag = missing.group(1).split("/")[-1]
        action = next(a for a in parser._actions if flag in a.option_strings)  # noqa: SLF001
        value = action.metavar or "VALUE"
        more = f" [{value} ...]" if missing.group(2) != "one" else ""
        return f"{flag} needs a value after it: {flag} {value}{more}."
    ambiguous = re.match(r"ambiguous option: (\S+) could match (.*)", message)
    if ambiguous:
        return (f"{ambiguous.group(1)} is the start of several options "
                f"({ambiguous.group(2)}): write the one you mean in full.")
    return re.sub(r"^argument (\S+): (?=\1 )", "", message)


def one_output(of: list[str] | None) -> str | None:
    """``--of``'s one output (checked after the cell ran, which keeps what it assigned). An
    expression may have spaces (``--of y.sum() + 1``: the line's words after ``--of``, joined)
    or be quoted (``--of "y.sum() + 1"``)."""
    if not of:
        return None
    source = " ".join(of)
    node = _expression(source)
    if len(of) == 1 and unquoted(source) != source:
        return unquoted(source)
    if len(of) > 1 and (node is None or isinstance(node, ast.Tuple)):
        first = ast.unparse(node.elts[0]) if isinstance(node, ast.Tuple) and node.elts else \
            of[0].rstrip(",") if _expression(of[0].rstrip(",")) is not None else "y"
        raise VJPUsageError(f"Give one output to --of (--of {first}), or torch.stack several "
                            "into one tensor (an expression may have spaces: --of y.sum() + 1).")
    return source


def unquoted(word: str) -> str:
    """A name or expression written in quotes on the line (``"x"``, ``'y.sum() + 1'``, as
    ``%%vjp?`` shows for ``--of``) without its quotes; any other word as it is."""
    node = _expression(word)
    if isinstance(node, ast.Constant) and isinstance(node.value, str) \
            and _expression(node.value) is not None:
        return node.value.strip()
    return word


def unquoted_names(word: str) -> list[str]:
    """The names in one word of ``--wrt`` (or ``wrt``): ``x``, ``"x"``, ``"x, w"``, ``"x w"``."""
    inner = unquoted(word)
    if inner == word:
        node = _expression(word)
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            return [word]
        inner = node.value
    names = words(inner, commas=True)
    return names if names and all(_expression(n) is not None for n in names) else [word]


def _expression(source: str) -> ast.expr | None:
    """``source`` parsed as one Python expression, or None where it is not one."""
    try:
        return ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None


__all__ = ["EXPRESSION", "common_arguments", "one_output", "read_cell_line",
           "read_expression_line", "unquoted", "unquoted_names", "whole_number"]
