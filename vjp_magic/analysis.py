"""The analysis: tagging done, infer structure and compute derivatives for every input.

``differentiate`` is the package's plain-Python entry point; the magics call it too.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from . import checks, memory, structure
from .derivatives import component_vjps, forward_jacobian
from .errors import VJPUsageError
from .result import InputResult, VJPResult
from .tagging import depends_on

# Up to this many Jacobian entries (and output entries), one batched backward computes the
# whole Jacobian and its exact zeros decide the structure: cheaper than probing pairings.
SMALL_JACOBIAN = 2**18
SMALL_OUTPUT = 4096
EXACT_PER_SIZE = 24  # candidate pairings per number of point axes on the exact path


def _as_named_inputs(inputs, names) -> dict[str, torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        name = names if isinstance(names, str) else (names[0] if names else "x")
        return {name: inputs}
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        inputs = list(inputs)
        if names is None:
            names = ["x"] if len(inputs) == 1 else [f"x{i + 1}" for i in range(len(inputs))]
        if isinstance(names, str) or len(names) != len(inputs):
            raise VJPUsageError("Give one name per input: names=['x', 'w'] for inputs=[x, w].")
        return dict(zip(names, inputs))
    raise VJPUsageError(
        f"inputs must be a tensor, a list of tensors or a dict name → tensor, not "
        f"{type(inputs).__name__}."
    )


def check_output(output: object, name: str) -> torch.Tensor:
    """The output must be a real floating tensor that autograd can differentiate."""
    if isinstance(output, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in output):
        raise VJPUsageError(
            f"{name} is a {type(output).__name__} of tensors: name one of them as the output "
            f"(--of {name}[0]) or torch.stack them into one tensor."
        )
    if not isinstance(output, torch.Tensor):
        raise VJPUsageError(
            f"{name} is a {type(output).__name__}, not a tensor: compute it with torch operations "
            f"on a tensor that has requires_grad=True."
        )
    if output.is_complex():
        raise VJPUsageError(
            f"{name} is complex ({output.dtype}): vjp_magic differentiates real tensors. "
            f"Differentiate its real and imaginary parts separately: {name}.real, {name}.imag."
        )
    if not output.is_floating_point():
        raise VJPUsageError(
            f"{name} has dtype {output.dtype}: integer and bool tensors have no derivatives. "
            "Make the input a floating tensor, e.g. torch.arange(3, dtype=torch.float32)."
        )
    if not output.requires_grad:
        raise VJPUsageError(
            f"{name} has no autograd history: it was computed under torch.no_grad(), .detach()ed, "
            "or from tensors without requires_grad=True. Create the input with requires_grad=True "
            "and compute the output outside torch.no_grad()."
        )
    return output


def check_input(tensor: object, name: str) -> torch.Tensor:
    """An input must be a real floating tensor with requires_grad=True."""
    if not isinstance(tensor, torch.Tensor):
        raise VJPUsageError(f"Input {name} is a {type(tensor).__name__}, not a tensor.")
    if tensor.is_complex():
        raise VJPUsageError(
            f"Input {name} is complex ({tensor.dtype}): vjp_magic differentiates real tensors. "
            f"Use {name}.real and {name}.imag as separate real inputs."
        )
    if not tensor.is_floating_point():
        raise VJPUsageError(
            f"Input {name} has dtype {tensor.dtype}: only floating tensors have derivatives. "
            f"Create it as floats, e.g. torch.arange(3, dtype=torch.float32, requires_grad=True)."
        )
    if not tensor.requires_grad:
        raise VJPUsageError(
            f"Input {name} does not require grad. Create it with requires_grad=True or call "
            f"{name}.requires_grad_() before computing the output."
        )
    return tensor


def differentiate(
    output: torch.Tensor,
    inputs,
    names=None,
    *,
    output_name: str = "y",
    full: bool = False,
    memory_budget: float | None = None,
    batched: bool = True,
    max_chunk: int | None = None,
    max_pairings: int = structure.PER_SIZE,
) -> VJPResult:
    """Derivatives of ``output`` with respect to ``inputs``, with their point structure inferred.

    ``inputs`` is a tensor (named ``"x"`` unless ``names`` says otherwise), a sequence of
    tensors, or a dict name → tensor. ``full=True`` skips point inference (plain Jacobian).
    ``memory_budget`` is bytes, or a fraction of free memory (default 0.25).
    ``max_pairings`` caps the candidate pairings probed per number of point axes.
    ``x.grad`` is never changed.
    """
    output = check_output(output, output_name)
    named = _as_named_inputs(inputs, names)
    if not named:
        raise VJPUsageError("Give at least one input tensor to differentiate with respect to.")
    for name, tensor in named.items():
        check_input(tensor, name)
    checks.refuse_empty(output, named, output_name)
    budget = memory.resolve_budget(memory_budget, output.device)

    small = output.numel() * sum(t.numel() for t in named.values()) <= SMALL_JACOBIAN
    exact = small and batched and output.numel() <= SMALL_OUTPUT
    # Checking a pairing on an exact Jacobian costs no backward: try many more there.
    per_size = EXACT_PER_SIZE if exact else max_pairings
    candidates = {
        name: [()] if full else structure.candidate_pairings(output.shape, t.shape, per_size)
        for name, t in named.items()
    }
    if exact:
        accepted = _from_exact_jacobian(output, named, candidates, budget, max_chunk)
    else:
        accepted = _from_verified_pairings(
            output, named, candidates, budget, output_name, batched, max_chunk
        )
    unused = [name for name, t in named.items() if not depends_on(output, t)]

    results = {
        name: InputResult(
            name=name,
            tensor=named[name],
            pairing=accepted[name][0],
            derivatives=accepted[name][1],
            unused=name in unused,
        )
        for name in named
    }
    result = VJPResult(output=output, output_name=output_name, inputs=results, full=full,
                       memory_budget=budget)
    checks.annotate(result)  # NaN/inf notes
    return result


def _proven(output: torch.Tensor, tensor: torch.Tensor, pairing) -> bool:
    """An identity pairing needs no probe when the graph has only elementwise nodes."""
    return pairing == structure.identity_pairing(tensor.dim()) and structure.provably_elementwise(
        output, tensor)


FORWARD_RATIO = 4  # forward mode when the output has this many times more entries than x


def _prefers_forward(output: torch.Tensor, tensor: torch.Tensor) -> bool:
    return output.numel() > FORWARD_RATIO * tensor.numel()


def _jacobian_either_mode(output, tensor, budget, max_chunk) -> torch.Tensor:
    """The full Jacobian: forward mode (n passes) where possible, else reverse (m passes).

    Forward mode relies on double backward, which some graphs silently lack (custom
    functions marked once_differentiable), so its result is checked with one random probe.
    """
    try:
        jac = forward_jacobian(output, tensor)
        probe = structure.probe_vector(output)
        (probe_vjp,) = component_vjps(output, [tensor], tuple(range(output.dim())), budget,
                                      probe=probe, max_chunk=1)[1]
        if structure.probe_agrees(jac.reshape((output.numel(),) + tuple(tensor.shape)),
                                  probe.reshape(-1), probe_vjp, ()):
            return jac
    except RuntimeError as error:
        if "second time" in str(error):
            raise
    flat = component_vjps(output, [tensor], (), budget, max_chunk=max_chunk)[0][0]
    return flat.reshape(tuple(output.shape) + tuple(tensor.shape))


def _from_exact_jacobian(output, named, candidates, budget, max_chunk):
    """Small problems: one batched backward gives the whole Jacobian; its zeros decide.

    The first candidate pairing whose off-support entries are all zero is exact, with no
    probe needed; its derivatives are gathered from the Jacobian.
    """
    names = list(named)
    reverse = [n for n in names if not _prefers_forward(output, named[n])]
    jacobians = dict(zip(reverse, component_vjps(output, [named[n] for n in reverse], (), budget,
                                                 max_chunk=max_chunk)[0])) if reverse else {}
    accepted = {}
    for name in names:
        if name in jacobians:
            jac = jacobians[name].reshape(tuple(output.shape) + tuple(named[name].shape))
        else:
            jac = _jacobian_either_mode(output, named[name], budget, max_chunk)
        for pairing in candidates[name]:
            if structure.supported_on(jac, output.dim(), pairing):
                accepted[name] = (pairing, structure.gather_derivatives(jac, output.dim(), pairing))
                break
    return accepted


def _from_verified_pairings(output, named, candidates, budget, output_name, batched, max_chunk):
    """Large problems: per candidate pairing, one VJP per component plus one random probe.

    The probe rides in the first batched backward; a pairing is accepted when vᵀJ from
    autograd equals vᵀD assembled from its derivatives (the last candidate, with no point
    axes of size > 1, needs no check).
    """
    position = dict.fromkeys(named, 0)
    probe = None
    probe_vjps: dict[str, torch.Tensor] = {}
    accepted: dict[str, tuple[structure.Pairing, torch.Tensor]] = {}
    while len(accepted) < len(named):
        pending = [n for n in named if n not in accepted]
        # Inputs whose current pairing uses the same output point axes share one backward.
        key = lambda n: tuple(sorted(a for a, _ in candidates[n][position[n]]))  # noqa: E731
        point_out = key(pending[0])
        group = [n for n in pending if key(n) == point_out]
        needs_check = [
            n for n in group
            if position[n] < len(candidates[n]) - 1 and not _proven(output, named[n],
                                                                      candidates[n][position[n]])
        ]
        count = math.prod(output.shape[a] for a in range(output.dim()) if a not in point_out)
        result_bytes = count * sum(named[n].numel() for n in group) * output.element_size()
        memory.refuse_if_over(
            result_bytes, budget, f"The derivatives of {output_name} ({count:,} backward passes)"
        )
        last = [n for n in group if position[n] == len(candidates[n]) - 1]
        forward = [n for n in last if _prefers_forward(output, named[n])]
        for name in forward:
            pairing = candidates[name][position[name]]
            jac = _jacobian_either_mode(output, named[name], budget, max_chunk)
            accepted[name] = (pairing, structure.gather_derivatives(jac, output.dim(), pairing))
        group = [n for n in group if n not in forward]
        if not group:
            continue
        with_probe = None
        if any(n not in probe_vjps for n in needs_check):
            if probe is None:
                probe = structure.probe_vector(output)
            with_probe = probe
        stacked, group_probe_vjps = component_vjps(
            output, [named[n] for n in group], point_out, budget,
            probe=with_probe, batched=batched, max_chunk=max_chunk,
        )
        for i, name in enumerate(group):
            if group_probe_vjps is not None:
                probe_vjps.setdefault(name, group_probe_vjps[i])
            pairing = candidates[name][position[name]]
            derivs = stacked[i].reshape(
                structure.component_shape(output.shape, pairing) + tuple(named[name].shape)
            )
            if name not in needs_check or structure.probe_agrees(
                derivs, probe, probe_vjps[name], pairing
            ):
                accepted[name] = (pairing, derivs)
            else:
                position[name] += 1
    return accepted
