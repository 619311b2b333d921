"""Plain PyTorch source that reproduces a result's derivatives with ``backward`` (``r.code``).

The code is written in the tutorial's style — ``y.backward(gradient=v, retain_graph=True)``
with one-hot ``v`` per component, ``x.grad.zero_()`` between components — and, run in a
namespace holding the cell's variables, defines ``d_<name>`` equal to ``r.derivatives[name]``.
It saves every input's ``.grad`` first and restores it at the end, passes ``inputs=[...]``
so no other tensor's ``.grad`` changes, and keeps the graph (``retain_graph=True``). Like
the tutorial's code it also binds its loop helpers (``v``, ``k`` or ``i, j``, ``saved_grad``).
"""
from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable

_SIMPLE = re.compile(r"[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*")


def _identifiers(sources: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError:
            found.update(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", source))
            continue
        found.update(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
    return found


def _fresh(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}{n}"
    taken.add(name)
    return name


def derivative_name(input_name: str, taken: set[str] | None = None) -> str:
    """``d_<name>`` as a Python identifier: ``layer.weight`` → ``d_layer_weight``."""
    stem = re.sub(r"\W+", "_", input_name).strip("_") or "input"
    name = f"d_{stem}"
    return _fresh(name, taken) if taken is not None else name


def _expr(source: str) -> str:
    """An input or output as an expression ``.grad`` can follow."""
    return source if _SIMPLE.fullmatch(source) else f"({source})"


def _shape_args(shape) -> str:
    return ", ".join(str(n) for n in shape)


def reproducing_code(result) -> str:
    """The source; ``derivative_name(name)`` is bound for every input of ``result``."""
    names = list(result.inputs)
    taken = _identifiers([result.output_name, *names])
    lines = ["import torch"]
    body: list[str] = []
    if result.output_name.isidentifier():
        y = result.output_name
    else:
        y = _fresh("out", taken)
        body.append(f"{y} = {result.output_name}  # the output, computed again")
    v = _fresh("v", taken)
    d_names: dict[str, str] = {}
    for name in names:
        d_names[name] = derivative_name(name, taken)
    xs = {name: _expr(name) for name in names}
    for name in names:
        if not result.inputs[name].tensor.is_leaf:
            body.append(f"{xs[name]}.retain_grad()  # {name} is not a leaf: let backward fill "
                        f"{name}.grad")
    saved = _fresh("saved_grad" if len(names) == 1 else "saved_grads", taken)
    grads = ", ".join(f"{xs[n]}.grad" for n in names)
    body.append(f"{saved} = {grads}  # backward adds to .grad: keep what it holds, restored below")
    body.append(" = ".join(f"{xs[n]}.grad" for n in names) + " = None")

    groups: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        item = result.inputs[name]
        if item.unused:
            comp = result.component_shape(name)
            shape = f"{_shape_args(comp)}, *{xs[name]}.shape" if comp else f"{xs[name]}.shape"
            body.append(f"{d_names[name]} = {xs[name]}.new_zeros({shape})"
                        f"  # {result.output_name} does not depend on {name}")
            continue
        key = tuple(sorted(a for a, _ in item.pairing))
        groups.setdefault(key, []).append(name)

    needs_itertools = False
    out_dim = result.output.dim()
    for point_out, group in groups.items():
        comp = result.component_shape(group[0])
        count = math.prod(comp)
        inputs = "[" + ", ".join(xs[n] for n in group) + "]"
        if count == 1:
            if out_dim == 0:
                body.append(f"# {result.output_name} is a scalar: gradient=1, the default")
                body.append(f"{y}.backward(retain_graph=True, inputs={inputs})")
            else:
                points = math.prod(result.output.shape[a] for a in point_out)
                body.append(f"# one component at {points} point(s): J is (block-)diagonal, "
                            "so v = ones gives the derivatives at every point")
                body.append(f"{y}.backward(gradient=torch.ones_like({y}), retain_graph=True, "
                            f"inputs={inputs})")
            for name in group:
                grad = f"{xs[name]}.grad"
                if comp:
                    grad += f".reshape({_shape_args(comp)}, *{xs[name]}.shape)"
                body.append(f"{d_names[name]} = {grad}")
            continue
        letters = ["k"] if len(comp) == 1 else ["i", "j", "l", "m", "n", "p"][: len(comp)]
        if len(letters) < len(comp):
            letters = [f"k{a}" for a in range(len(comp))]
        letters = [_fresh(letter, taken) for letter in letters]
        point_axes = set(point_out)
        names_iter = iter(letters)
        index = [":" if a in point_axes else next(names_iter) for a in range(out_dim)]
        while index and index[-1] == ":":
            index.pop()
        body.append(f"# {count} components: one backward each, v one-hot on the component"
                    + (" (ones along the point axes)" if point_out else ""))
        for name in group:
            body.append(f"{d_names[name]} = {xs[name]}.new_zeros({_shape_args(comp)}, "
                        f"*{xs[name]}.shape)")
        if len(comp) == 1:
            body.append(f"for {letters[0]} in range({comp[0]}):")
        else:
            needs_itertools = True
            ranges = ", ".join(f"range({n})" for n in comp)
            body.append(f"for {', '.join(letters)} in itertools.product({ranges}):")
        body.append(f"    {v} = torch.zeros_like({y})")
        body.append(f"    {v}[{', '.join(index)}] = 1")
        for name in group:
            body.append(f"    if {xs[name]}.grad is not None: {xs[name]}.grad.zero_()")
        body.append(f"    {y}.backward(gradient={v}, retain_graph=True, inputs={inputs})")
        for name in group:
            body.append(f"    {d_names[name]}[{', '.join(letters)}] = {xs[name]}.grad")

    body.append(f"{grads} = {saved}  # restore the notebook's .grad")
    if needs_itertools:
        lines.append("import itertools")
    return "\n".join(lines + [""] + body) + "\n"
