"""A small timing harness shared by the benchmarks: warm-up runs, then N timed repeats."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated calls, in milliseconds."""

    times_ms: tuple[float, ...]
    """Each timed repeat, in order (warm-up runs excluded)."""
    result: Any = None
    """What the last call returned (to count outputs or check them)."""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def repeats(self) -> int:
        return len(self.times_ms)

    def __str__(self) -> str:
        return f"median {format_ms(self.median_ms)}, min {format_ms(self.min_ms)} ({self.repeats} runs)"


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed with ``perf_counter``.

    Garbage collection runs before each timed call and is disabled during it, so a collection
    triggered by an earlier call's garbage is not charged to this one.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            gc.collect()
            gc.disable()
            start = time.perf_counter()
            result = fn()
            times.append((time.perf_counter() - start) * 1000.0)
            if enabled:
                gc.enable()
    finally:
        if enabled:
            gc.enable()
    return Timing(tuple(times), result)


def time_learning(
    models: Mapping[str, Any], *, warmup_steps: int, timesteps: int, repeats: int
) -> tuple[dict[str, tuple[float, ...]], dict[str, int]]:
    """Warm every SB3 model up with ``learn(warmup_steps)``, then time ``learn(timesteps)`` of each in
    turn, ``repeats`` rounds interleaved (so drift in the machine's load hits every setup alike).

    Returns the seconds of each timed learn and the env steps it counted, by label. ``learn``
    resets the envs and the step count, as a fresh training run does.
    """
    for model in models.values():
        model.learn(warmup_steps)
    seconds: dict[str, list[float]] = {label: [] for label in models}
    steps: dict[str, int] = {}
    for _ in range(repeats):
        for label, model in models.items():
            timing = time_call(lambda model=model: model.learn(timesteps).num_timesteps, repeats=1, warmup=0)
            seconds[label].append(timing.min_ms / 1000.0)
            steps[label] = int(timing.result)
    return {label: tuple(values) for label, values in seconds.items()}, steps


def format_ms(ms: float) -> str:
    """``31.2 ms``, ``412 ms``, ``9.6 s``: three significant figures or so."""
    if ms >= 1000.0:
        return f"{ms / 1000.0:.1f} s"
    if ms >= 100.0:
        return f"{ms:.0f} ms"
    if ms >= 10.0:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"
