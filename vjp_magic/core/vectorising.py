"""Whether a vectorised backward pays on one graph, measured against a plain pass.

A vectorised backward (``vmap`` over ``autograd.grad``) saves each pass's fixed cost (Python,
the engine's walk, kernel launches); the arithmetic stays. Where one plain pass is short, that
fixed cost is most of it and vectorising is taken as paying. Where a plain pass is heavy
(at least :data:`HEAVY_PASS` seconds: convolutions on a CPU), a batching rule may cost more
than the passes it replaces (``conv`` backward under ``vmap`` on a CPU: about 1.5× per
vector), and every vectorised component also costs a check, and its recomputation by plain
passes where that check fails. There the first vectorised chunk is a trial of
:data:`TRIAL` vectors (fewer would be mostly a vectorised call's own fixed cost); if it took
longer per vector than a plain pass (:data:`SLOWER`; CPU time of this process, so that
another process's load does not decide it), the rest are plain passes, and the graph (by
its fingerprint) is remembered so that its next analysis goes plain from the start. It
chooses how passes run, never a number: plain passes are autograd's own, vectorised ones
are checked as before.
"""
from __future__ import annotations

JUDGED_FROM = 0.002  # seconds: a vectorised chunk shorter than this is not judged (noise)
HEAVY_PASS = 0.01  # seconds: a plain pass at least this long is mostly arithmetic
TRIAL = 4  # vectors in the first vectorised chunk after heavy plain passes
SLOWER = 1.0  # vectorising stops where its time per vector is over this × a plain pass

_plain_faster: set[tuple] = set()  # fingerprints of graphs where vectorising did not pay


class Payoff:
    """One computation's measurements: ``key``, the graph's fingerprint; ``seconds``, one plain
    pass's wall time where known (the probe's, or the last run's), which says only whether
    passes are heavy: the trial is judged against a plain pass timed here, in CPU time."""

    def __init__(self, key: tuple, seconds: float | None = None) -> None:
        self.key, self.given, self.plain, self.tried = key, seconds, None, False

    def worth_trying(self) -> bool:
        """False where this graph's vectorised passes were slower than plain ones last time."""
        return self.key not in _plain_faster

    def first(self, first: int) -> int:
        """The first chunk's size: one plain pass, timed, where passes are known to be heavy
        (a component computed like any other: it costs no extra pass)."""
        return 1 if self.given is not None and self.given >= HEAVY_PASS else first

    def cut(self, start: int, stop: int, vectorising: bool) -> int:
        """Where the chunk ``start:stop`` ends its first part: a vectorised chunk after heavy
        plain passes is tried on :data:`TRIAL` vectors first."""
        if vectorising and self._heavy() and not self.tried and stop - start > TRIAL:
            return start + TRIAL
        return stop

    def timed(self, count: int, seconds: float, vectorised: bool) -> bool:
        """Record a chunk of ``count`` vectors that took ``seconds`` of CPU time; False when
        vectorising should stop (a trial slower per vector than a plain pass, remembered for
        this graph)."""
        per_vector = seconds / max(count, 1)
        if not vectorised:
            self.plain = per_vector if self.plain is None else min(self.plain, per_vector)
            return True
        trial, self.tried = not self.tried and self._heavy(), True
        if not trial or per_vector <= SLOWER * self.plain:
            return True
        if len(_plain_faster) >= 64:
            _plain_faster.clear()
        _plain_faster.add(self.key)
        return False

    def pays(self, count: int, seconds: float) -> bool:
        """Whether a vectorised chunk of ``count`` vectors that took ``seconds`` of CPU time
        was at most :data:`SLOWER` × a plain pass per vector (heavy passes or not: a batched
        pass outside the components' loop, :class:`.derivatives.PaidBatches`, judges every
        chunk; a batching rule's slow fallback, ``index_put`` under ``vmap``, costs 10-100×
        a plain pass per vector on a light graph). True until a plain pass was timed, and
        for a chunk under :data:`JUDGED_FROM` seconds."""
        if self.plain is None or seconds < JUDGED_FROM:
            return True
        return seconds / max(count, 1) <= SLOWER * self.plain

    def _heavy(self) -> bool:
        """Whether a plain pass was timed here and took at least :data:`HEAVY_PASS`."""
        return self.plain is not None and self.plain >= HEAVY_PASS
