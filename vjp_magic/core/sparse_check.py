"""The check of a compressed Jacobian (:mod:`.compressed`): independent random probes,
judged entry by entry as every structure is (:mod:`.probes`).

- Columns: vᵀJ from a plain backward against vᵀ·J_sparse, each entry j within the probe
  tolerance of |v|ᵀ|J_sparse| (the magnitudes that sum into it). A proved pattern (the
  graph's rules, every x) takes one probe; an observed one the full probe plan.
- Rows, for an observed pattern: J·w (a forward-mode product, by double backward) against
  J_sparse·w, each entry i within the tolerance of |J_sparse|·|w|. Grouped probes can miss a
  small derivative that shares a column with a huge one (1 + 10¹² rounds to 10¹²): the
  column check judges it against the huge one, the row check against its own row. A graph
  without double backward cannot be checked so: the observed pattern is then refused.

A disagreement refuses the sparse result; the caller falls back to the exact path.

|v|ᵀ|J_sparse| underestimates the rounding where an entry of J is a sum with cancellation
(an MLP's Σ over hidden units of W2·tanh'·W1): autograd's vᵀJ sums Σ_o v_o·W2[o, h] before
W1ᵀ, the colour passes one output at a time, and both round at eps times the larger
intermediates. So a PROVED pattern's probe that fails is judged again, entry by entry,
against its measured noise: vᵀJ again as (c·v)ᵀJ / c for two non-dyadic c (the products
round elsewhere), and entry j passes if its excess over the probe tolerance is within
NOISE_MULTIPLE (:mod:`.tolerances`) times max_c |that - vᵀJ|_j. Sound for what the check
is for: the map is linear in v, so a coupling J_sparse lacks appears alike in every
(c·v)ᵀJ / c and never inflates the noise, and each entry is judged by its own noise (a
cancelling column does not loosen the others). An observed pattern is judged so only
where its rows are checked next (a coupling below a column's noise, hidden by a huge
cancelling entry of that column, shows in its own row), and the rows are judged the same
way, each against its own measured noise (:func:`_within_row_noise`): an entry of J that
is a sum of cancelling terms rounds at eps times the terms, not the net value (linear
upsampling of x·roll(x) near x = 0; a conv decoder with nn.Upsample).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .derivatives import plain_vjp
from .probes import probe_generator, probe_plan, probe_values
from .pattern import expanded
from .rounding import measured_noise, rounding_noise
from .sparse_layout import csr_rows, fresh
from .tolerances import tolerances
from .torch_api import DOUBLE_BACKWARD_ERRORS, guarded_grad, no_double_backward


def checked(output, x, jacobian: torch.Tensor, seed: int, known=None,
            passes=None, draws: int | None = None, proved: bool = False,
            rows_follow: bool = False) -> bool:
    """Full random probes, one at a time (each one's arrays stay in cache): vᵀJ from a plain
    backward against vᵀ·J_sparse, entry by entry, each within the probe tolerance of
    |v|ᵀ|J_sparse|; the first disagreement refuses. ``known``: (v, vᵀJ) of a probe drawn
    the same way and already computed (the analysis's probe 0): it stands for the first
    probe and saves its backward. ``passes``: the colour passes ``jacobian`` was read off,
    which give the products without a scatter (:class:`_ColourProducts`, worth building for
    several probes). ``draws``: how many probes (default: the probe plan's count for the
    dtype). ``proved``: the pattern is the graph's own (every x): a probe that fails is
    judged again against the measured rounding noise of its vᵀJ (:func:`within_noise`), as
    it is where ``rows_follow`` (an observed pattern whose rows :func:`rows_checked` judges
    next, each against its own row: what a column's noise could hide shows there)."""
    flat = output.reshape(-1)
    draws = probe_plan(flat.dtype).probes if draws is None else draws
    products = _products(passes, jacobian, draws)
    tolerance = tolerances(output.dtype).probe
    for draw in range(draws):
        if draw == 0 and known is not None:
            v, observed = known[0].reshape(-1), known[1].detach().reshape(-1)
        else:
            v = _check_probe(flat, seed, draw)
            observed = plain_vjp(flat, [x], v)[0].detach().reshape(-1)
        difference, scale = products(v.to(jacobian.device, jacobian.dtype),
                                     observed.to(jacobian.device))
        if not _within(difference, scale, tolerance) and not (
                (proved or rows_follow) and
                within_noise(flat, x, v, observed, difference, scale, tolerance)):
            return False
    return True


def within_noise(flat, x, v: torch.Tensor, observed: torch.Tensor, excess: torch.Tensor,
                 scale: torch.Tensor, tolerance: float) -> bool:
    """The second judgement of a proved pattern's failed probe: each entry's ``excess``
    (|vᵀJ_sparse - observed| - tolerance·scale, as :func:`_within` left it) within
    :data:`.tolerances.NOISE_MULTIPLE` times that entry's rounding noise, measured
    (:func:`.rounding.rounding_noise`). An infinite scale is refused as in :func:`_within`."""
    if not bool(scale.max() * tolerance < math.inf):
        return False
    noise = rounding_noise(flat, [x], v, [observed])[0]
    noise = noise.to(excess.device, excess.dtype)
    return bool(excess.sub_(noise).amax() <= torch.finfo(scale.dtype).tiny)




def _products(passes, jacobian: torch.Tensor, draws: int):
    """What gives (vᵀJ_sparse - vᵀJ, |v|ᵀ|J_sparse|) from (v, vᵀJ): the diagonals where the
    matrix is the one read off them (its index arrays those very ones; its values too, else
    put back in their diagonals), the colour passes for several probes where they are not
    much larger than the nonzeros, else the CSR matrix."""
    diagonal = None if passes is None else passes.diagonals
    if diagonal is not None and _same(jacobian.crow_indices(), diagonal.crow) and \
            _same(jacobian.col_indices(), diagonal.col):
        table = diagonal.table  # the matrix's values, in their diagonals
        if not _same(jacobian.values(), diagonal.held):
            table = expanded(jacobian.values(), diagonal.diagonals.missing,
                             table.numel()).reshape(table.shape)
        return _DiagonalProducts(table, diagonal.diagonals, jacobian.shape[1])
    count = 0 if passes is None else passes.values.shape[0]
    if passes is not None and draws > 1 and \
            count * jacobian.shape[1] <= 4 * max(passes.at.numel(), 1):
        return _ColourProducts(passes, jacobian.shape[0])
    return _CsrProducts(jacobian)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are one view of the same memory (the same entries, not equal
    ones)."""
    return a.device == b.device and a.data_ptr() == b.data_ptr() and a.shape == b.shape and \
        a.stride() == b.stride() and a.dtype == b.dtype


def _within(difference: torch.Tensor, scale: torch.Tensor, tolerance: float) -> bool:
    """Each |difference| (vᵀJ_sparse - vᵀJ) within ``tolerance``·scale + the dtype's tiny,
    judged by the largest excess |difference| - tolerance·scale (one amax: three times
    cheaper than a boolean comparison and all): NaN anywhere propagates to it and fails; an
    infinite bound (tolerance < 1: an infinite scale) would pass anything: refused.
    ``difference`` is overwritten by the excess (the products' own tensor: a known probe's
    vᵀJ is the analysis's own, used again after the check, and never written)."""
    if not scale.numel():
        return True
    excess = difference.abs_().sub_(scale, alpha=tolerance)
    return bool(excess.amax() <= torch.finfo(scale.dtype).tiny) and \
        bool(scale.amax() * tolerance < math.inf)


def _check_probe(flat: torch.Tensor, seed: int, draw: int) -> torch.Tensor:
    """Check probe ``draw``: random signed powers of two as :func:`.probes.probe_vector`
    draws them (its values for the dtype), from the run's seed on a stream of its own. Each
    code is the integer part of u·values/2¹⁶ for a uniform 16-bit u (four from one raw
    64-bit draw of numpy's PCG64, seeded from that stream): no code is likelier than
    1/values by more than values/2¹⁶ of itself (≤ 0.1%), and drawing costs about a tenth
    of torch's randint (which cost more than the backward pass itself at 10⁶ entries)."""
    values = probe_plan(flat.dtype).values
    m = flat.numel()
    stream = probe_generator(seed, "sparse-check", draw).initial_seed()
    raw = np.random.Generator(np.random.PCG64(stream)).bit_generator.random_raw(-(-m // 4))
    codes = torch.from_numpy(raw.view(np.uint16)[:m].astype(np.int32))
    codes.mul_(values).bitwise_right_shift_(16)
    table = probe_values(flat.dtype)
    return torch.index_select(table, 0, codes, out=fresh(m, table.dtype)).to(flat.device)


class _ColourProducts:
    """(vᵀJ, |v|ᵀ|J|) off the colour passes: rows of one colour read disjoint columns, so
    column j of colour c's pass holds J[i, j] of at most one row i = i_c(j), and
    vᵀJ = Σ_c v[i_c(j)]·J[i_c(j), j]: per colour a gather and a multiply-add, no scatter.
    A pass's entries off the pattern (no i_c(j)) count as 0, as they do in J_sparse."""

    def __init__(self, passes, m: int):  # a compressed.Passes
        count, n = passes.values.shape
        device = passes.values.device
        self.row = torch.full((count * n,), m, dtype=torch.int64, device=device)
        self.row.index_copy_(0, passes.at.long(), csr_rows(passes.crow).to(device))
        self.row = self.row.reshape(count, n)  # i_c(j), or m where there is none
        self.held = torch.where(self.row < m, passes.values, 0)
        self.size = self.held.abs()

    def __call__(self, v: torch.Tensor, observed: torch.Tensor):
        padded = torch.cat([v, v.new_zeros(1)])  # entry m: 0, for columns a colour skips
        predicted = v.new_zeros(self.held.shape[1])
        scale = v.new_zeros(self.held.shape[1])
        for row, held, size in zip(self.row, self.held, self.size):
            picked = torch.index_select(padded, 0, row)
            predicted.addcmul_(picked, held)
            scale.addcmul_(picked.abs_(), size)
        return predicted.sub_(observed), scale


class _DiagonalProducts:
    """(vᵀJ_sparse - vᵀJ, |v|ᵀ|J_sparse|) of a pattern held as diagonals
    (:class:`.pattern.Diagonals`): row r's entry on diagonal k is in column r + keys[k], so
    vᵀJ_sparse is Σ_k (v ⊙ diagonal k) shifted by keys[k]: K multiply-adds, no scatter; the
    first diagonal's products written straight into both sums (0 outside it), not added to
    zeroed ones. ``table``: (m × K), 0 off the pattern."""

    def __init__(self, table: torch.Tensor, diagonals, n: int):
        self.table, self.diagonals, self.n = table, diagonals, n

    def __call__(self, v: torch.Tensor, observed: torch.Tensor):
        m, written = v.numel(), False
        predicted, scale = fresh(self.n, v.dtype, v.device), fresh(self.n, v.dtype, v.device)
        terms = fresh(m, v.dtype, v.device)
        for k, key in enumerate(self.diagonals.keys.tolist()):  # 3x two addcmul_ at 10⁵
            lo, hi = self.diagonals.rows(k, m, self.n)
            if not written:  # the first diagonal: written (0 outside it)
                term = torch.mul(v[lo:hi], self.table[lo:hi, k],
                                 out=predicted[lo + key:hi + key])
                torch.abs(term, out=scale[lo + key:hi + key])
                for part in (predicted, scale):
                    part[:lo + key].zero_()
                    part[hi + key:].zero_()
                written = True
                continue
            term = torch.mul(v[lo:hi], self.table[lo:hi, k], out=terms[lo:hi])
            predicted[lo + key:hi + key] += term
            scale[lo + key:hi + key] += term.abs_()
        if not written:
            predicted.zero_()
            scale.zero_()
        return predicted.sub_(observed), scale


class _CsrProducts:
    """(vᵀJ, |v|ᵀ|J|) for any CSR ``jacobian``: the terms v_i·J[i, j] (v repeated along each
    row's nonzeros) summed into their columns (scatter_add: faster than index_add here)."""

    def __init__(self, jacobian: torch.Tensor):
        self.crow = jacobian.crow_indices()
        self.col, self.values = jacobian.col_indices().long(), jacobian.values()
        self.n = jacobian.shape[1]

    def __call__(self, v: torch.Tensor, observed: torch.Tensor):
        terms = along_rows(v, self.crow).mul_(self.values)
        predicted = terms.new_zeros(self.n).scatter_add_(0, self.col, terms)
        return predicted.sub_(observed), \
            terms.new_zeros(self.n).scatter_add_(0, self.col, terms.abs_())


def along_rows(v: torch.Tensor, crow: torch.Tensor) -> torch.Tensor:
    """v[i] for each nonzero of a CSR matrix (row i), in CSR order: a new tensor (numpy's
    repeat on the CPU for the dtypes numpy has, not bfloat16; else torch's)."""
    if v.device.type == "cpu" and crow.device.type == "cpu" and v.numel() and \
            v.dtype in _NUMPY_FLOATS:
        counts = np.diff(crow.numpy()).astype(np.int64, copy=False)
        return torch.from_numpy(np.repeat(v.detach().numpy(), counts))
    return torch.repeat_interleave(v, crow.diff().to(v.device), output_size=int(crow[-1]))


_NUMPY_FLOATS = (torch.float64, torch.float32, torch.float16)


def rows_checked(output, x, jacobian: torch.Tensor, seed: int) -> bool:
    """J·w for random probes w (forward mode by double backward: the VJP's graph is linear
    in v, and its VJP against w is J·w) against J_sparse·w, entry i within the probe
    tolerance of |J_sparse|·|w|; False where they disagree, or where the graph has no
    double backward (nothing can check the rows then)."""
    flat = output.reshape(-1)
    tolerance = tolerances(output.dtype).probe
    v = torch.zeros_like(flat, requires_grad=True)
    try:
        (g,) = guarded_grad(flat, x, v, retain_graph=True, create_graph=True)
    except DOUBLE_BACKWARD_ERRORS as error:
        if not no_double_backward(error):
            raise
        return False
    if g.grad_fn is None:  # J·w = 0 for every w: the rows hold no nonzero
        return jacobian.values().numel() == 0 or not bool(jacobian.values().ne(0).any())
    rows = csr_rows(jacobian.crow_indices())
    col, values = jacobian.col_indices(), jacobian.values()
    for draw in range(probe_plan(flat.dtype).probes):
        w = _check_probe(g.reshape(-1), seed ^ 0x5EED, draw).reshape(x.shape)
        try:
            (observed,) = guarded_grad(g, v, w, retain_graph=True)
        except DOUBLE_BACKWARD_ERRORS as error:
            if not no_double_backward(error):
                raise
            return False
        w = w.reshape(-1).to(values.device, values.dtype)
        terms = torch.index_select(w, 0, col).mul_(values)
        difference = terms.new_zeros(flat.numel()).scatter_add_(0, rows, terms).sub_(
            observed.detach().reshape(-1).to(values.device))
        scale = terms.new_zeros(flat.numel()).scatter_add_(0, rows, terms.abs_())
        if not _within(difference, scale, tolerance) and not _within_row_noise(
                g, v, w.reshape(x.shape), observed, difference, scale, tolerance):
            return False
    return True


def _within_row_noise(g, v, w: torch.Tensor, observed: torch.Tensor, excess: torch.Tensor,
                      scale: torch.Tensor, tolerance: float) -> bool:
    """The second judgement of a row probe that failed: each row's ``excess`` (as
    :func:`_within` left it) within :data:`.tolerances.NOISE_MULTIPLE` times that row's
    measured rounding noise, |J·(c·w)/c - J·w| at its largest over the non-dyadic c
    (:func:`.rounding.measured_noise`). |J_sparse|·|w| misses the rounding of a J entry that
    is a sum of cancelling terms (linear upsampling of x·roll(x) near x = 0: terms ~10³
    times the net value); the noise is of those terms. Sound as :func:`within_noise` is:
    J·w is linear in w, so a coupling the pattern lacks appears alike in every J·(c·w)/c
    and never inflates the noise, and each row is judged by its own."""
    if not bool(scale.max() * tolerance < math.inf):
        return False
    on = (excess.device, excess.dtype)
    (noise,) = measured_noise(
        lambda c: [guarded_grad(g, v, w * c, retain_graph=True)[0].detach().reshape(-1).to(*on)],
        [observed.detach().reshape(-1).to(*on)], w.dtype)
    return bool(excess.sub_(noise).amax() <= torch.finfo(scale.dtype).tiny)
