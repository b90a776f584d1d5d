"""Benchmarks: timed runs that report figures and targets (they never fail on a missed target).

:mod:`.timing` is the shared harness (warm-up, repeats, median and min in ms); each benchmark
module (:mod:`.features`, ...) exposes ``run`` returning results and ``main(argv)`` printing them.
"""

from ploutos.bench.timing import Timing, time_call

__all__ = ["Timing", "time_call"]
