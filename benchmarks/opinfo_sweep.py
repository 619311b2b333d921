"""The OpInfo sweep of tests/acceptance/test_opinfo.py as a report: per-op time and every failure.

Run:  python benchmarks/opinfo_sweep.py [--samples N | --all] [--ops REGEX] [--unary]

Prints one line per op that failed (mismatch or package error, with the first sample's
detail), totals per kind, and the wall time of the sweep and of the slowest ops.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import test_opinfo as t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=t.SAMPLES_PER_OP)
    parser.add_argument("--all", action="store_true", help="every sample of every op")
    parser.add_argument("--ops", default="", help="only ops whose id matches this regex")
    parser.add_argument("--unary", action="store_true", help="also the 10^5-point unary sweep")
    parser.add_argument("--verbose", action="store_true", help="one line per op with its time")
    args = parser.parse_args()
    count = None if args.all else args.samples
    ops = [op for op in t.AUTOGRAD_OPS if re.search(args.ops, t.op_id(op))]

    kinds = collections.Counter()
    times: list[tuple[float, str]] = []
    start = time.perf_counter()
    for op in ops:
        began = time.perf_counter()
        try:
            results = t.sweep_op(op, count)
        except Exception as error:  # noqa: BLE001 - the reference itself failed: report it
            results = [(0, t.Finding("reference-error", f"{type(error).__name__}: {error}"))]
        times.append((time.perf_counter() - began, t.op_id(op)))
        if args.verbose:
            print(f"{times[-1][0]:8.2f}s {t.op_id(op)} ({len(results)} outputs)", flush=True)
        for _, finding in results:
            kinds[finding.kind] += 1
        bad = [(i, f) for i, f in results if f.kind not in ("pass", "skip")]
        if bad:
            i, f = bad[0]
            print(f"FAIL {t.op_id(op)}: {len(bad)}/{len(results)} "
                  f"[{f.kind}] sample {i}: {f.detail[:400]}", flush=True)
    total = time.perf_counter() - start
    print(f"\n{len(ops)} ops, samples per op: {'all' if count is None else count}")
    print("outcomes:", dict(kinds))
    print(f"sweep wall time: {total:.1f} s")
    print("slowest ops:", ", ".join(f"{name} {s:.1f}s" for s, name in sorted(times)[-8:][::-1]))

    if args.unary:
        import torch

        start = time.perf_counter()
        failures = 0
        for op in t.UNARY_UFUNCS:
            for dtype in (torch.float64, torch.float32):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        t.test_unary_ufunc_at_many_points_matches_one_backward(op, dtype)
                except Exception as error:  # noqa: BLE001 - report and go on
                    if type(error).__name__ == "Skipped":
                        continue
                    failures += 1
                    print(f"FAIL unary {t.op_id(op)} {dtype}: {type(error).__name__}: "
                          f"{str(error)[:300]}", flush=True)
        print(f"unary sweep: {failures} failures, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
