"""The sparsity pattern of d output / d x proved from the autograd graph: every backward node
type with a rule says which input entries each of its output entries reads (an *index map*:
shifts, pads, slices, roll, flip, cat, gathers and scatters with the index tensors the graph
keeps, as_strided of a contiguous leaf, reductions, matmul blocks, convolution windows), and
composing them from the output down to x gives the pattern for every value of x, with no
backward pass. A node without a rule (a custom ``autograd.Function``, an op not covered)
proves nothing: :func:`proved_pattern` is None and the pattern is observed instead
(:func:`..pattern.find_pattern`).

:mod:`.maps` is the rules' vocabulary, :mod:`.relation` the composition, :mod:`.walk` the walk
over the graph; the rules live by op family (:mod:`.moves`, :mod:`.scatters`,
:mod:`.reductions`, :mod:`.linalg`, :mod:`.pooling`, :mod:`.resample` for upsampling and
adaptive pooling, :mod:`.sampling` for grid_sample), listed in :mod:`.rules`.
:mod:`.summed` proves a Hessian's pattern where the scalar sums terms. A rule may claim an
entry the op reads whose derivative happens to vanish (relu, dropout's mask), never miss one.
"""
from .walk import proved_pattern

__all__ = ["proved_pattern"]
