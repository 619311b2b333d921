"""The probes' streams (core.probes.ProbeDraws): one numpy generator per thread is set to each
stream in turn, so a probe must not depend on what was drawn before it, in which thread it
is drawn, or how many runs interleave; and parts A and B of one run, or two runs' seeds,
must be different streams. Expected values come from drawing again, never from constants.
"""
from __future__ import annotations

import threading

import torch

from vjp_magic.core.probes import ProbeDraws, probe_plan


def every_probe(seed: int, n: int = 300, dtype=torch.float32) -> list[torch.Tensor]:
    draws = ProbeDraws(torch.zeros(n, dtype=dtype), seed)
    return [draws.vector(k) for k in range(probe_plan(dtype).probes)]


def test_a_probe_does_not_depend_on_draws_in_between():
    alone = every_probe(11)
    a, b = ProbeDraws(torch.zeros(300), 11), ProbeDraws(torch.zeros(300), 12)
    mixed = []
    for k in range(probe_plan(torch.float32).probes):  # two runs drawn turn about
        mixed.append(a.vector(k))
        b.vector(k)
    assert all(torch.equal(x, y) for x, y in zip(alone, mixed))


def test_the_same_probes_in_another_thread():
    here, there = every_probe(5), []
    worker = threading.Thread(target=lambda: there.extend(every_probe(5)))
    worker.start()
    worker.join()
    assert all(torch.equal(x, y) for x, y in zip(here, there))


def test_parts_and_seeds_are_different_streams():
    plan = probe_plan(torch.float64)
    probes = every_probe(3, 2000, torch.float64)
    first, second = probes[0], probes[plan.probes // 2]  # digit 0 of part A, of part B
    # same stream would repeat: 2000 entries over 34 values agree by chance in ~1/34 of them
    assert float((first == second).double().mean()) < 0.1
    other = every_probe(4, 2000, torch.float64)[0]
    assert float((first == other).double().mean()) < 0.1


def test_bfloat16_and_float16_small_probes_are_probe_values():
    for dtype in (torch.bfloat16, torch.float16):
        k = probe_plan(dtype).exponents
        allowed = torch.tensor([s * 2.0**e for e in range(-k, k + 1) for s in (1, -1)])
        for v in every_probe(8, 50, dtype):
            assert v.dtype == dtype and v._base is None
            assert bool((v.double()[:, None] == allowed.double()).any(1).all())
