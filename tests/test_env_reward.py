"""Rewards: the differential Sharpe ratio against a straightforward reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ploutos.env.reward import DSR_MIN_VARIANCE, DifferentialSharpe, log_return, penalties


def reference_dsr(returns, eta):
    """Moody & Saffell (2001), eq. 4-5, written out with lists."""
    a, b, out = 0.0, 0.0, []
    for r in returns:
        var = b - a**2
        if var > DSR_MIN_VARIANCE:
            out.append((b * (r - a) - 0.5 * a * (r**2 - b)) / var**1.5)
        else:
            out.append(0.0)
        a = a + eta * (r - a)
        b = b + eta * (r**2 - b)
    return out


def test_dsr_matches_reference():
    returns = np.random.default_rng(3).normal(0.0005, 0.01, 500).tolist()
    dsr = DifferentialSharpe(0.05)
    got = [dsr.update(r) for r in returns]
    assert got == pytest.approx(reference_dsr(returns, 0.05), rel=1e-10, abs=1e-12)
    assert got[0] == 0.0  # zero variance at the start
    assert all(math.isfinite(x) for x in got)


def test_dsr_is_zero_while_flat_and_reset_clears_moments():
    dsr = DifferentialSharpe(0.01)
    assert [dsr.update(0.0) for _ in range(10)] == [0.0] * 10
    dsr.update(0.01)
    dsr.update(-0.02)
    assert dsr.a != 0.0
    dsr.reset()
    assert (dsr.a, dsr.b) == (0.0, 0.0)


def test_log_return_and_penalties():
    assert log_return(100.0, 110.0) == pytest.approx(math.log(1.1))
    assert penalties(0.1, 0.5, 2.0, 0.01) == pytest.approx(0.2 + 0.005)
