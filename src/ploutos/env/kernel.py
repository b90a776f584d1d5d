"""The compiled inner loops of :class:`~ploutos.env.core.MarketCore`: one step of ``n`` envs, and their
portfolio states.

Why compiled: an env step is a few dozen arithmetic operations on ``A`` numbers per env. As numpy
array operations over ``(n, A)`` each costs 1.5-4 microseconds of call overhead whatever the size,
about 200 microseconds a step at 64 envs; the same loop compiled by numba costs a few. The loops
read like the rules they implement (:class:`~ploutos.env.trading.TradingEnv` documents them) and
sum over assets in order, as the one-env implementation they replaced did.

``cache=True``: the machine code is kept next to this file (or in numba's user cache), so only
the first process on a machine pays the compile.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ploutos.env.reward import DSR_MIN_VARIANCE

OPEN, INV_OPEN, SLIP, IMPACT, CLOSE, TRADES = range(6)
"""Rows of the per-bar table ``bar[w, field, asset]`` the core prepares for its window."""
COMMISSION, SPREAD, SLIPPAGE, MARKET_IMPACT, FINANCING, FEES = range(6)
"""Columns of ``cost_parts`` (:data:`ploutos.env.costs.COMPONENTS`)."""


@njit(cache=True)
def step_envs(  # noqa: PLR0913 - one flat signature is what a compiled kernel takes
    envs, actions, bar, row_start, discrete, levels, w_low, max_weight, budget,  # inputs
    rows, ends, units, cash, equity, peak, drawdown, weights, dsr_a, dsr_b, since, active,  # state, updated
    commission_rate, spread_rate, fee_half, borrow_rate, band, max_change, decide_every,  # costs, action rules
    floor, initial, dsr, eta, dsr_clip, dd_pen, to_pen,  # settings
    rewards, terminated, truncated, turnover, costs, cost_parts, notional_out, limited, traded, fill_prices,  # out
):  # fmt: skip
    """Step the envs ``envs``: fill ``actions[k]`` for env ``envs[k]`` at the next open, mark the next
    close, charge costs and compute rewards; outputs are indexed by ``k``. ``max_weight`` < 0,
    ``max_change`` <= 0 and an empty ``budget`` mean no such limit."""
    n_assets = units.shape[1]
    w = np.empty(n_assets)
    for k in range(envs.shape[0]):
        e = envs[k]
        fill = rows[e] + 1
        b = fill - row_start
        held_at_open = 0.0
        for a in range(n_assets):
            held_at_open += units[e, a] * bar[b, OPEN, a]
        eq_open = cash[e] + held_at_open
        deciding = since[e] % decide_every == 0
        # target weights
        is_limited = False
        if discrete:
            for a in range(n_assets):
                choice = min(max(int(actions[k, a]), 0), 2)
                w[a] = levels[choice]
                if max_weight >= 0.0 and abs(w[a]) > max_weight and choice != 1:
                    is_limited = True
                if max_weight >= 0.0:
                    w[a] = min(max(w[a], -max_weight), max_weight)
            scale = eq_open
        else:
            gross = 0.0
            for a in range(n_assets):
                x = actions[k, a]
                if x != x:  # NaN: no position
                    x = 0.0
                w[a] = min(max(x, w_low), 1.0)
                gross += abs(w[a])
            scale = eq_open / gross if gross > 1.0 else eq_open  # no leverage
            if max_weight >= 0.0:
                for a in range(n_assets):
                    x = w[a] / gross if gross > 1.0 else w[a]
                    if abs(x) > max_weight:
                        is_limited = True
                    w[a] = min(max(x, -max_weight), max_weight)
                scale = eq_open
        # trades: towards the target, outside the band, at most max_change of weight, on decision bars
        planned = 0.0
        for a in range(n_assets):
            ok = bar[b, TRADES, a]
            if (discrete and int(actions[k, a]) == 1) or not deciding:
                ok = 0.0  # hold
            target = w[a] * bar[b, INV_OPEN, a] * scale
            if eq_open > 0.0 and (band > 0.0 or max_change > 0.0):
                step = (target - units[e, a]) * bar[b, OPEN, a] / eq_open  # the weight change it asks for
                if abs(step) <= band:
                    ok = 0.0
                elif max_change > 0.0 and abs(step) > max_change:
                    target = units[e, a] + math.copysign(max_change, step) * eq_open * bar[b, INV_OPEN, a]
            traded[k, a] = (target - units[e, a]) * ok
            planned += abs(traded[k, a] * bar[b, OPEN, a])
        if budget.shape[0] > 0 and planned > budget[k]:
            factor = max(budget[k], 0.0) / planned if planned > 0.0 else 1.0
            for a in range(n_assets):
                traded[k, a] *= factor
            is_limited = True
        # fill and costs
        notional_sum = 0.0
        value_sum = 0.0
        slippage = 0.0
        impact = 0.0
        for a in range(n_assets):
            price = bar[b, OPEN, a]
            fill_prices[k, a] = price
            value = traded[k, a] * price
            notional = abs(value)
            notional_sum += notional
            value_sum += value
            slippage += notional * bar[b, SLIP, a]
            impact += notional * math.sqrt(notional) * bar[b, IMPACT, a]
        fees = fee_half * (notional_sum - value_sum)  # the fee on sell notional
        held = 0.0
        short = 0.0
        for a in range(n_assets):
            units[e, a] += traded[k, a]
            value = units[e, a] * bar[b, CLOSE, a]
            held += value
            if value < 0.0:
                short -= value
        financing = borrow_rate * short
        cost_parts[k, COMMISSION] = notional_sum * commission_rate
        cost_parts[k, SPREAD] = notional_sum * spread_rate
        cost_parts[k, SLIPPAGE] = slippage
        cost_parts[k, MARKET_IMPACT] = impact
        cost_parts[k, FINANCING] = financing
        cost_parts[k, FEES] = fees
        cost = notional_sum * (commission_rate + spread_rate) + slippage + impact + fees + financing
        new_cash = cash[e] - (value_sum + cost)
        new_equity = new_cash + held
        # marks and rewards
        previous = equity[e]
        cash[e] = new_cash
        equity[e] = new_equity
        if new_equity > peak[e]:
            peak[e] = new_equity
        drawdown[e] = 1.0 - new_equity / peak[e]
        turnover[k] = notional_sum / eq_open if eq_open > 0.0 else 0.0
        if new_equity > 0.0:
            inv_equity = 1.0 / new_equity
            ratio = new_equity / previous
            terminated[k] = new_equity < floor
        else:
            inv_equity = 1.0 / initial
            ratio = 1e-12
            terminated[k] = True
        for a in range(n_assets):
            weights[e, a] = units[e, a] * bar[b, CLOSE, a] * inv_equity
        if dsr:
            r = ratio - 1.0
            mean, second = dsr_a[e], dsr_b[e]
            d_mean, d_second = r - mean, r * r - second
            var = second - mean * mean
            reward = 0.0
            if var > DSR_MIN_VARIANCE:
                reward = (second * d_mean - 0.5 * mean * d_second) / (var * math.sqrt(var))
                reward = min(max(reward, -dsr_clip), dsr_clip)
            dsr_a[e] = mean + eta * d_mean
            dsr_b[e] = second + eta * d_second
        else:
            reward = math.log(ratio)
        if dd_pen != 0.0:
            reward -= dd_pen * drawdown[e]
        if to_pen != 0.0:
            reward -= to_pen * turnover[k]
        rewards[k] = reward
        costs[k] = cost
        notional_out[k] = notional_sum
        limited[k] = is_limited
        rows[e] = fill
        since[e] += 1
        truncated[k] = fill >= ends[e] and not terminated[k]
        active[e] = not (terminated[k] or truncated[k])


@njit(cache=True)
def portfolio_of(envs, weights, cash, equity, drawdown, initial, bankrupt_log_return, out):
    """Write ``(len(envs), A + 3)`` portfolio states: weights, cash / equity, log(equity / initial), drawdown."""
    n_assets = weights.shape[1]
    for k in range(envs.shape[0]):
        e = envs[k]
        for a in range(n_assets):
            out[k, a] = weights[e, a]
        if equity[e] > 0.0:
            out[k, n_assets] = cash[e] / equity[e]
            out[k, n_assets + 1] = math.log(equity[e] / initial)
        else:
            out[k, n_assets] = 0.0
            out[k, n_assets + 1] = bankrupt_log_return
        out[k, n_assets + 2] = drawdown[e]
