"""The symbols a replay puts in place of the inputs' entries, and their LaTeX.

For point structure an input holds one generic point's symbols at every point (``x``, or
``x_1 … x_n``); otherwise every entry gets its own symbol, named after the variable.
"""
from __future__ import annotations

import re

import numpy as np
import sympy

from ..render.notation import name_tex
from ..run.replay import aliases
from .errors import Unavailable
from .layout import point_axes


def entry_tex(name: str, index: str | None) -> str:
    """LaTeX for one entry's symbol, from the name as the header writes it (:func:`latex.name`):
    ``x_{2}``, ``x_{1,2}``, ``\\alpha_{1,2}``; a name with a subscript of its own keeps it
    before a semicolon, ``x_{1;\\,2}``, ``w_{\\mathrm{in};\\,1,2}`` (never a double subscript);
    anything else is grouped: ``\\mathtt{x\\_\\_}_{1,2}``."""
    base = name_tex(name)
    if index is None:
        return base
    own = re.fullmatch(r"([^_{}]+|\\mathrm\{[A-Za-z0-9]+\})_\{(.*)\}", base)
    if own:
        return f"{own.group(1)}_{{{own.group(2)};\\,{index}}}"
    if re.fullmatch(r"[A-Za-z]|\\[A-Za-z]+", base):
        return f"{base}_{{{index}}}"
    return f"{{{base}}}_{{{index}}}"


def entry_names(name: str, shape: tuple[int, ...], base: int = 1) -> list[tuple[str, str]]:
    """Each entry's symbol name and LaTeX: ``x`` for one entry, ``x_1 … x_n`` along one axis,
    ``x_{i,j}`` along several, counted from ``base`` (the display's ``index_base``). A name
    with an underscore numbers its entries in brackets (``x_1[2]``, ``w_in[1,2]``), so they
    cannot be read as another name's entries."""
    axes = [a for a, n in enumerate(shape) if n != 1]
    names = []
    for index in np.ndindex(*shape):
        label = ",".join(str(index[a] + base) for a in axes) if axes else None
        if label is None:
            symbol = name
        elif "_" in name:
            symbol = f"{name}[{label}]"
        elif len(axes) == 1:
            symbol = f"{name}_{label}"
        else:
            symbol = f"{name}_{{{label}}}"
        names.append((symbol, entry_tex(name, label)))
    return names


def symbol_array(name: str, shape: tuple[int, ...], tex: dict | None = None,
                 base: int = 1) -> np.ndarray:
    array = np.empty(shape, dtype=object)
    flat = array.reshape(-1)
    for i, (entry, spelled) in enumerate(entry_names(name, shape, base)):
        flat[i] = sympy.Symbol(entry, real=True)
        if tex is not None:
            tex[flat[i]] = spelled
    return array


def group_symbols(result, group: list[str], jacobian: bool,
                  tex: dict | None = None, base: int = 1) -> dict[str, np.ndarray]:
    """Each input's symbol array for one replay: the group's inputs hold the same generic
    symbols at every point (``x`` or ``x_1 … x_n``), the others a symbol per entry.
    ``tex`` collects each symbol's LaTeX."""
    arrays = {}
    owner: dict = {}
    first = aliases({name: item.tensor for name, item in result.inputs.items()})
    for name, item in result.inputs.items():
        shape = tuple(item.shape)
        if first[name] != name:  # one tensor under two names: its symbols, under both
            arrays[name] = arrays[first[name]]
            continue
        if name not in group:
            arrays[name] = symbol_array(name, shape, tex, base)
        else:
            paired = {b for _, b in point_axes(result, name, jacobian)}
            generic = symbol_array(name, tuple(n for b, n in enumerate(shape) if b not in paired),
                                   tex, base)
            array = np.empty(shape, dtype=object)
            for index in np.ndindex(*shape):
                array[index] = generic[tuple(i for b, i in enumerate(index) if b not in paired)]
            arrays[name] = array
        for symbol in set(arrays[name].reshape(-1)):
            if owner.setdefault(symbol, name) != name:  # x's entry x_1 and an input named x_1
                raise Unavailable(f"the inputs {owner[symbol]} and {name} would share the symbol "
                                  f"{symbol}; rename one of them")
    return arrays
