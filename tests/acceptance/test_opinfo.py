"""PyTorch's own OpInfo database against ``differentiate``.

1. Every op with ``supports_autograd``, every float64 sample: each floating output with
   autograd history (after the sample's ``output_process_fn_grad``, as PyTorch's gradcheck
   uses it) is differentiated with respect to the floating tensors that require grad among the
   sample's input, args and kwargs. ``r.jacobian(name)`` must equal
   ``torch.autograd.functional.jacobian`` of the same function (its plain loop of one-hot
   backwards, not the vmap'd one) entry by entry; see :func:`jacobian_mismatches` for the rule.
   Any exception from inside the package other than ``VJPUsageError`` is a package error.
   Only what has no derivatives by definition is skipped (complex or integer outputs, empty
   tensors), and there ``VJPUsageError`` is required.
2. Every unary ufunc at 10^5 points drawn uniformly from its domain, in float64 and float32:
   the derivatives must equal one plain ``torch.autograd.grad(y, x, torch.ones_like(y))``,
   and the 10^5 points must be recognised as points.

Default run: the first ``SAMPLES_PER_OP`` samples of every op.
``pytest -m fuzz tests/acceptance/test_opinfo.py`` runs every sample of every op. ``python
benchmarks/opinfo_sweep.py``
prints a per-op summary of the same sweep.
"""
from __future__ import annotations

import itertools
import math
import os
import re
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.utils._pytree as pytree
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.opinfo.core import UnaryUfuncInfo

# Ops with a float64 backward (the rest take complex or integer inputs, or need CUDA).
AUTOGRAD_OPS = [op for op in op_db
                if op.supports_autograd and torch.float64 in op.supported_backward_dtypes("cpu")]
UNARY_UFUNCS = [op for op in AUTOGRAD_OPS if isinstance(op, UnaryUfuncInfo)]
SAMPLES_PER_OP = int(os.environ.get("VJP_OPINFO_SAMPLES", "3"))
# Relative tolerance for float64 Jacobian entries, judged per entry (see jacobian_mismatches).
RTOL = {torch.float64: 1e-7, torch.float32: 2e-4}
# The reference Jacobian (one backward per output entry) is formed up to this size; a few
# samples (grid_sampler_3d, slice, conv_transpose3d) are bigger: there only package errors and
# derivative shapes are checked.
REFERENCE_ENTRIES = 2**22
REFERENCE_OUTPUTS = 2**13
DEFAULT_REFERENCE_OUTPUTS = 2**11  # the default run leaves bigger outputs to the full sweep
UNARY_POINTS = 10**5
UNARY_RANGE = 4.0  # points are drawn from the op's domain intersected with [-4, 4]


def op_id(op) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def long_run(config) -> bool:
    """True when ``-m`` selects the fuzz marker (the full sweep)."""
    return "fuzz" in (config.getoption("markexpr") or "")


def pytest_generate_tests(metafunc):
    """``budget``: 'ci' by default; with ``-m fuzz`` also 'fuzz' (every sample), marked fuzz."""
    if "budget" in metafunc.fixturenames:
        budgets = ["ci"]
        if long_run(metafunc.config):
            budgets.append(pytest.param("fuzz", marks=pytest.mark.fuzz))
        metafunc.parametrize("budget", budgets)


# -- comparing Jacobians -------------------------------------------------------------------------

def row_sums(refs, out_ndim: int) -> torch.Tensor:
    """Σ_k |J_ik| over every input's Jacobian (a JVP sums the whole row), finite entries only."""
    return sum(_magnitude(ref, out_ndim).sum(1, keepdim=True) for ref in refs)


def _magnitude(ref: torch.Tensor, out_ndim: int) -> torch.Tensor:
    rows = math.prod(ref.shape[:out_ndim])
    return ref.reshape(rows, -1).to(torch.float64).abs().nan_to_num(nan=0.0, posinf=0.0)


def entry_scale(ref: torch.Tensor, out_ndim: int, rows: torch.Tensor | None = None):
    """Per entry (i, j): |J_ij| + max(Σ_k |J_ik|, Σ_k |J_kj|).

    The magnitudes that sum into entry (i, j): a VJP sums its column, a JVP its row (``rows``:
    :func:`row_sums` over all inputs; default this Jacobian's own rows). An entry that is
    mathematically zero comes out of either as rounding noise of those terms (grid_sample,
    householder_product), so the larger sum bounds what two correct computations may differ
    by. Only finite entries count (a NaN elsewhere does not make every entry acceptable).
    """
    magnitude = _magnitude(ref, out_ndim)
    rows = magnitude.sum(1, keepdim=True) if rows is None else rows
    cols = magnitude.sum(0, keepdim=True)
    return (magnitude + torch.maximum(rows, cols)).reshape(ref.shape)


def jacobian_mismatches(ours: torch.Tensor, ref: torch.Tensor, out_ndim: int, rtol: float,
                        rows: torch.Tensor | None = None,
                        forward: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the entries where ``ours`` is not the reference Jacobian ``ref``.

    An entry agrees when it is within ``rtol`` of its own scale (:func:`entry_scale`), when
    both are the same infinity or both NaN, or where autograd's own entry is NaN (0·∞ or 0·NaN
    in its one-hot products) when ours is 0 or equals forward mode's entry (``forward``).
    """
    if ours.shape != ref.shape:
        raise AssertionError(f"jacobian shape {tuple(ours.shape)}, expected {tuple(ref.shape)}")
    ours, ref = ours.to(torch.float64), ref.to(torch.float64)
    close = (ours - ref).abs() <= rtol * entry_scale(ref, out_ndim, rows)
    same = (ours == ref) | (ours.isnan() & ref.isnan())
    undefined = ref.isnan() & (ours == 0)
    if forward is not None:
        forward = forward.to(torch.float64)
        undefined |= ref.isnan() & ((ours - forward).abs() <= rtol * forward.abs())
    return ~(close | same | undefined)


def describe_mismatch(ours, ref, bad, name) -> str:
    count = int(bad.sum())
    index = tuple(int(i) for i in bad.nonzero()[0])
    return (f"{count} of {bad.numel()} Jacobian entries wrong for {name} "
            f"(shape {tuple(ref.shape)}); first at {index}: ours {float(ours[index])!r}, "
            f"autograd {float(ref[index])!r}")


# -- one OpInfo sample -------------------------------------------------------------------------

@dataclass
class Finding:
    """What one (sample, output) gave: 'pass', 'skip', 'mismatch' or 'package-error'."""

    kind: str
    detail: str = ""


def _is_input(leaf) -> bool:
    """Floating strided tensors that require grad (sparse ones stay fixed: the reference
    cannot form their Jacobian)."""
    return (isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.requires_grad
            and leaf.layout == torch.strided)


def _leaf_name(path) -> str:
    """``input``, ``input_0``, ``arg1``, ``weight``: a readable identifier for a pytree path."""
    name = re.sub(r"\W+", "_", pytree.keystr(path)).strip("_")
    name = re.sub(r"^0", "input", name)
    name = re.sub(r"^1_(\d+)", r"arg\1", name)
    name = re.sub(r"^2_", "", name)
    return name if name.isidentifier() else f"t_{name}"


def sample_function(op, sample):
    """``(f, inputs)``: f(*tensors) runs the op on the sample with its differentiable tensors
    replaced, returning the tuple of output tensors; ``inputs`` names the sample's own tensors.

    A tensor that appears twice in the sample is one input.
    """
    tree = (sample.input, sample.args, sample.kwargs)
    paths_and_leaves, spec = pytree.tree_flatten_with_path(tree)
    leaves = [leaf for _, leaf in paths_and_leaves]
    inputs: dict[str, torch.Tensor] = {}
    slot_of_leaf: list[int | None] = []
    seen: dict[int, int] = {}
    for path, leaf in paths_and_leaves:
        if not _is_input(leaf):
            slot_of_leaf.append(None)
            continue
        if id(leaf) not in seen:
            seen[id(leaf)] = len(inputs)
            inputs[_leaf_name(path)] = leaf
        slot_of_leaf.append(seen[id(leaf)])

    def f(*tensors):
        new = [leaf if slot is None else tensors[slot] for leaf, slot in zip(leaves, slot_of_leaf)]
        x, args, kwargs = pytree.tree_unflatten(new, spec)
        out = sample.output_process_fn_grad(op(x, *args, **kwargs))
        return tuple(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))

    return f, inputs


def _expect_usage_error(output, inputs, why) -> Finding:
    try:
        vjp_magic.differentiate(output, inputs)
    except vjp_magic.VJPUsageError:
        return Finding("skip", why)
    except Exception as error:  # noqa: BLE001 - any other exception is the package's bug
        return Finding("package-error", f"{why}: {type(error).__name__}: {error}")
    return Finding("mismatch", f"{why}, yet differentiate raised no VJPUsageError")


def reference_fits(output, inputs, max_outputs: int = REFERENCE_OUTPUTS) -> bool:
    entries = output.numel() * sum(t.numel() for t in inputs.values())
    return entries <= REFERENCE_ENTRIES and output.numel() <= max_outputs


def _without_reference(output, inputs, k) -> Finding:
    """Too large for the reference: differentiate must still answer or refuse cleanly."""
    why = f"output {k}: reference Jacobian too large ({output.numel()} outputs)"
    try:
        r = vjp_magic.differentiate(output, inputs)
        for name, tensor in inputs.items():
            comp = tuple(n for a, n in enumerate(output.shape)
                         if a not in r.point_axes[name].out_axes)
            if tuple(r.derivatives[name].shape) != comp + tuple(tensor.shape):
                return Finding("mismatch", f"{why}; derivatives of {name} shaped "
                                           f"{tuple(r.derivatives[name].shape)}")
    except vjp_magic.VJPUsageError:
        pass
    except Exception as error:  # noqa: BLE001 - any other exception is the package's bug
        return Finding("package-error", f"{why}: {type(error).__name__}: {str(error)[:300]}")
    return Finding("skip", why)


def check_sample(op, sample, full: bool = True) -> list[Finding]:
    """One Finding per output tensor of the sample (``full``: also outputs too large for the
    reference, where only package errors can be found)."""
    f, inputs = sample_function(op, sample)
    if not inputs:
        return [Finding("skip", "no floating input that requires grad")]
    outputs = f(*inputs.values())
    empty_input = any(t.numel() == 0 for t in inputs.values())
    findings, differentiable = [], []
    for k, y in enumerate(outputs):
        if y.layout != torch.strided:
            findings.append(Finding("skip", f"output {k} is {y.layout}: no dense reference"))
        elif y.is_complex():
            findings.append(_expect_usage_error(y, inputs, f"output {k} is complex"))
        elif not y.is_floating_point():
            findings.append(_expect_usage_error(y, inputs, f"output {k} is {y.dtype}"))
        elif not y.requires_grad:
            findings.append(_expect_usage_error(y, inputs, f"output {k} has no autograd history"))
        elif y.numel() == 0 or empty_input:
            findings.append(_expect_usage_error(y, inputs, f"output {k} or an input is empty"))
        elif not full and not reference_fits(y, inputs, DEFAULT_REFERENCE_OUTPUTS):
            findings.append(Finding("skip", f"output {k}: too large for the default run"))
        elif not reference_fits(y, inputs):
            findings.append(_without_reference(y, inputs, k))
        else:
            differentiable.append(k)
    if differentiable:
        def selected(*tensors):
            return tuple(f(*tensors)[k] for k in differentiable)

        primals = tuple(t.detach() for t in inputs.values())
        refs = reference_jacobian(selected, primals)
        for k, ref_k in zip(differentiable, refs):
            findings.append(_compare(outputs[k], k, inputs, ref_k,
                                     lambda k=k: _forward_jacobian(selected, primals, k)))
    return findings or [Finding("skip", "no output tensor")]


def _compare(y, k, inputs, refs, forward_refs) -> Finding:
    """``r.jacobian`` of output ``k`` against the reference Jacobians ``refs`` (one per input)."""
    try:
        r = vjp_magic.differentiate(y, inputs)
        ours = {name: r.jacobian(name) for name in inputs}
    except vjp_magic.VJPUsageError as error:
        return Finding("mismatch", f"output {k}: VJPUsageError on a differentiable output: "
                                   f"{error}")
    except Exception as error:  # noqa: BLE001 - any other exception is the package's bug
        return Finding("package-error", f"output {k} {tuple(y.shape)}: "
                                        f"{type(error).__name__}: {str(error)[:300]}")
    rows = row_sums(refs, y.dim())
    forward = None
    problems = []
    for i, ((name, tensor), ref) in enumerate(zip(inputs.items(), refs)):
        bad = jacobian_mismatches(ours[name], ref, y.dim(), RTOL[torch.float64], rows)
        if bad.any() and bool(ref.isnan().any()):  # are ours forward mode's values there?
            forward = forward_refs() if forward is None else forward
            bad = jacobian_mismatches(ours[name], ref, y.dim(), RTOL[torch.float64], rows,
                                      forward[i] if forward else None)
        if bad.any():
            problems.append(describe_mismatch(ours[name], ref, bad, name)
                            + f", point axes {r.point_axes[name]}")
        if tensor.grad is not None:
            problems.append(f"differentiate changed {name}.grad")
    if not problems:
        return Finding("pass")
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    return Finding("mismatch", f"output {k} {tuple(y.shape)} wrt {shapes}: "
                               + "; ".join(problems))


def _forward_jacobian(selected, primals, k):
    """Forward mode's Jacobians of output ``k`` (None where the op has no forward AD)."""
    try:
        return reference_jacobian(lambda *ts: selected(*ts)[k], primals,
                                  strategy="forward-mode", vectorize=True)
    except (RuntimeError, NotImplementedError):
        return ()


def samples_of(op, count: int | None):
    """The op's float64 samples (the first ``count``; all for None), drawn deterministically."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = op.sample_inputs("cpu", torch.float64, requires_grad=True)
        return list(itertools.islice(samples, count))


def sweep_op(op, count: int | None) -> list[tuple[int, Finding]]:
    """(sample index, finding) for the op's first ``count`` samples (None: all, including
    outputs too large for the reference)."""
    results = []
    for index, sample in enumerate(samples_of(op, count)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            findings = check_sample(op, sample, full=count is None)
        results.extend((index, finding) for finding in findings)
    return results


def sample_repr(op, index: int) -> str:
    sample = samples_of(op, index + 1)[index]

    def shape(t):
        return f"T{tuple(t.shape)}" if isinstance(t, torch.Tensor) else repr(t)

    args = ", ".join(shape(a) for a in pytree.tree_leaves(sample.args))
    kwargs = {k: shape(v) for k, v in sample.kwargs.items()}
    return f"{op_id(op)}(input={pytree.tree_map(shape, sample.input)}, args=[{args}], {kwargs})"


@pytest.mark.parametrize("op", AUTOGRAD_OPS, ids=op_id)
def test_opinfo_jacobians_match_autograd(op, budget):
    results = sweep_op(op, SAMPLES_PER_OP if budget == "ci" else None)
    failures = [(i, f) for i, f in results if f.kind in ("mismatch", "package-error")]
    if failures:
        lines = [f"sample {i} [{f.kind}] {sample_repr(op, i)}: {f.detail}" for i, f in failures]
        raise AssertionError(f"{len(failures)} of {len(results)} outputs wrong:\n"
                             + "\n".join(lines[:10]))
    if all(f.kind == "skip" for _, f in results):
        pytest.skip("; ".join(sorted({f.detail for _, f in results})) or "no samples")


# -- unary ufuncs at 10^5 points -----------------------------------------------------------------

def domain_points(op, dtype: torch.dtype, count: int = UNARY_POINTS) -> torch.Tensor:
    """``count`` points uniform in the op's domain ∩ [-UNARY_RANGE, UNARY_RANGE], ends excluded."""
    low, high = op.domain
    low = -UNARY_RANGE if low is None else max(float(low), -UNARY_RANGE)
    high = UNARY_RANGE if high is None else min(float(high), UNARY_RANGE)
    generator = torch.Generator().manual_seed(count)
    u = torch.rand(count, generator=generator, dtype=torch.float64)
    x = (low + (high - low) * u).to(dtype)
    inside = (x > low) & (x < high)
    return torch.where(inside, x, torch.tensor((low + high) / 2, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("op", UNARY_UFUNCS, ids=op_id)
def test_unary_ufunc_at_many_points_matches_one_backward(op, dtype):
    if dtype not in op.supported_dtypes("cpu"):
        pytest.skip(f"{op_id(op)} does not support {dtype}")
    x = domain_points(op, dtype).requires_grad_(True)
    kwargs = op.sample_kwargs("cpu", dtype, x)[0]
    outputs = [t for t in pytree.tree_leaves(op(x, **kwargs)) if isinstance(t, torch.Tensor)]
    for y in outputs:  # frexp: (mantissa, integer exponent)
        if y.is_complex() or not y.is_floating_point():
            with pytest.raises(vjp_magic.VJPUsageError):
                vjp_magic.differentiate(y, x)
        else:
            check_one_backward(x, y)
    assert x.grad is None


def check_one_backward(x: torch.Tensor, y: torch.Tensor) -> None:
    """Elementwise y(x) at many points: derivatives equal to one plain ones-backward."""
    (expected,) = torch.autograd.grad(y, x, torch.ones_like(y), retain_graph=True)
    r = vjp_magic.differentiate(y, x)
    d = r.derivatives["x"]
    assert r.point_axes["x"] == ((0, 0),), (
        f"{x.numel()} points not recognised as points: point axes {r.point_axes['x']}")
    assert d.shape == x.shape, d.shape
    eps = torch.finfo(x.dtype).eps
    close = (d - expected).abs() <= 4 * eps * expected.abs()
    ok = close | (d == expected) | (d.isnan() & expected.isnan())
    assert bool(ok.all()), (
        f"{int((~ok).sum())} of {x.numel()} derivatives differ from one backward; first at "
        f"x={float(x[~ok][0])!r}: ours {float(d[~ok][0])!r}, backward {float(expected[~ok][0])!r}")
