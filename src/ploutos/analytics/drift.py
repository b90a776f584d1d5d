"""Feature drift: recent observation features against a quantile sketch of the training window.

At the end of training every task file stores, per asset and feature, the quantiles of the
normalized features the agent saw on its fold's training window (:func:`reference_sketch`, at
:data:`PROBABILITIES`: every 5 %, 21 points from the minimum to the maximum). :func:`compare` then
scores recent values of the same features against that sketch:

* PSI (population stability index) over the sketch's bins: ``(-inf, q_0], (q_0, q_1], ..., (q_20, inf)``
  over the distinct sketch values. Beside each quantile the sketch stores the exact share of training
  values at or below it (the reference CDF there), so each bin holds a known share of the training rows:
  5 % for a continuous feature, more where a point mass sits (a feature clipped at its bound, a discrete
  feature such as the hour of day), which quantiles alone would misplace. Empty bins count as
  :data:`EPSILON`. PSI >= :data:`PSI_THRESHOLD` (0.25) is
  the usual "significant shift".
* KS: ``max |F_ref(q_i) - F_recent(q_i)|`` over the sketch points. The reference CDF is known only
  there, so this is a lower bound of the two-sample Kolmogorov-Smirnov statistic (it misses a gap
  inside one 5 % bin). Its threshold is the two-sample critical value at 5 %,
  ``1.36 * sqrt((n + m) / (n m))`` for ``n`` recent and ``m`` training rows (about ``1.36 / sqrt(n)``
  as ``m`` is large).

A (asset, feature) pair drifts when both are past their thresholds: PSI measures how large the
shift is, KS whether the recent sample is large enough to tell it from noise (features are rolling
windows, so recent rows are autocorrelated and a KS test alone fires too often). PSI has sampling
noise of about ``(bins - 1) / n`` on ``n`` recent rows from an unchanged distribution (0.08 for 250
rows over 20 bins), so score a few hundred rows. Pairs with fewer than
:data:`MIN_ROWS` valid recent rows are not scored (NaN) and never drift. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROBABILITIES = np.linspace(0.0, 1.0, 21)
"""Probabilities of the sketch: 0, 5, ..., 100 %."""
PSI_THRESHOLD = 0.25
"""PSI at or past which a distribution has shifted significantly (the common rule of thumb: < 0.1 stable,
0.1-0.25 moderate, > 0.25 significant)."""
KS_COEFFICIENT = 1.36
"""c(alpha) of the two-sample KS critical value at alpha = 5 %."""
EPSILON = 1e-4
"""Share given to an empty bin in the PSI (its log would be infinite)."""
MIN_ROWS = 20
"""Fewest valid recent rows of an asset for its features to be scored."""
METHOD = "quantiles at 0,5,...,100% of the fold's normalized training rows (valid entries), per asset and feature"
"""What the task file's ``/drift`` attribute ``method`` says."""


def reference_sketch(
    values: np.ndarray, valid: np.ndarray, probabilities: np.ndarray = PROBABILITIES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantiles ``(A, F, Q)`` of ``values (T, A, F)`` over the rows where ``valid (T, A)``, the exact share of
    those values at or below each quantile ``(A, F, Q)`` (the CDF there: ``probabilities`` for a continuous
    feature, more at a point mass such as a clip bound or a discrete feature), and the valid row count of
    each asset ``(A,)``; NaN for an asset with no valid row."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    n_assets, n_features = values.shape[1], values.shape[2]
    sketch = np.full((n_assets, n_features, len(probabilities)), np.nan)
    cdf = np.full_like(sketch, np.nan)
    rows = valid.sum(axis=0).astype(np.int64)
    for a in range(n_assets):
        if rows[a]:
            kept = np.sort(values[valid[:, a], a, :], axis=0)
            sketch[a] = np.quantile(kept, probabilities, axis=0).T
            for f in range(n_features):
                cdf[a, f] = np.searchsorted(kept[:, f], sketch[a, f], side="right") / rows[a]
    return sketch, cdf, rows


@dataclass(frozen=True)
class DriftReport:
    """Scores of recent rows against a sketch, per asset and feature."""

    psi: np.ndarray
    """(A, F); NaN where not scored."""
    ks: np.ndarray
    """(A, F) lower bound of the KS statistic; NaN where not scored."""
    rows: np.ndarray
    """(A,) valid recent rows of each asset."""
    critical: np.ndarray
    """(A,) KS critical value of each asset (NaN where not scored)."""

    @property
    def drifting(self) -> np.ndarray:
        """(A, F) bool: PSI and KS both past their thresholds."""
        with np.errstate(invalid="ignore"):
            return (self.psi >= PSI_THRESHOLD) & (self.ks >= self.critical[:, None])

    @property
    def scored(self) -> int:
        """(asset, feature) pairs with a score."""
        return int(np.isfinite(self.psi).sum())

    @property
    def share(self) -> float:
        """Share of the scored pairs that drift (0 when none is scored)."""
        return float(self.drifting.sum()) / self.scored if self.scored else 0.0


def psi_ks(quantiles: np.ndarray, cdf: np.ndarray, recent: np.ndarray) -> tuple[float, float]:
    """PSI and the KS lower bound of one feature's ``recent`` values against its sketch: ``quantiles`` and the
    reference CDF ``cdf`` at each."""
    points, last = np.unique(np.asarray(quantiles, dtype=np.float64)[::-1], return_index=True)
    ref_cdf = np.asarray(cdf, dtype=np.float64)[::-1][last]  # a repeated value: one cut point, one CDF
    recent = np.sort(np.asarray(recent, dtype=np.float64))
    new_cdf = np.searchsorted(recent, points, side="right") / len(recent)
    ks = float(np.max(np.abs(ref_cdf - new_cdf)))
    expected = np.maximum(np.diff(np.concatenate([[0.0], ref_cdf, [1.0]])), EPSILON)
    actual = np.maximum(np.diff(np.concatenate([[0.0], new_cdf, [1.0]])), EPSILON)
    psi = float(np.sum((actual - expected) * np.log(actual / expected)))
    return psi, ks


def compare(
    sketch: np.ndarray, cdf: np.ndarray, reference_rows: np.ndarray, values: np.ndarray, valid: np.ndarray
) -> DriftReport:
    """Score recent ``values (T, A, F)`` (rows where ``valid (T, A)``) against ``sketch (A, F, Q)`` with its
    reference CDF ``cdf (A, F, Q)``, built on ``reference_rows (A,)`` training rows."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    n_assets, n_features = sketch.shape[:2]
    if values.shape[1:] != (n_assets, n_features):
        raise ValueError(f"recent values of shape {values.shape[1:]}, the sketch holds {(n_assets, n_features)}")
    psi = np.full((n_assets, n_features), np.nan)
    ks = np.full((n_assets, n_features), np.nan)
    rows = valid.sum(axis=0).astype(np.int64)
    critical = np.full(n_assets, np.nan)
    for a in range(n_assets):
        m = int(reference_rows[a])
        if rows[a] < MIN_ROWS or m < 1:
            continue
        n = int(rows[a])
        critical[a] = KS_COEFFICIENT * np.sqrt((n + m) / (n * m))
        recent = values[valid[:, a], a, :]
        for f in range(n_features):
            if np.isfinite(sketch[a, f]).all():
                psi[a, f], ks[a, f] = psi_ks(sketch[a, f], cdf[a, f], recent[:, f])
    return DriftReport(psi, ks, rows, critical)


def drift_table(report: DriftReport, tickers: tuple[str, ...], names: tuple[str, ...]) -> str:
    """The drifting pairs (feature, asset, PSI, KS against its critical value), worst PSI first, then a summary."""
    lines = []
    pairs = [(report.psi[a, f], a, f) for a, f in zip(*np.nonzero(report.drifting), strict=True)]
    if pairs:
        width = max(len("feature"), *(len(names[f]) for _, _, f in pairs))
        lines.append(f"{'feature':<{width}}  {'asset':<8}  {'PSI':>7}  {'KS':>6}  {'KS crit':>7}")
        for _, a, f in sorted(pairs, reverse=True):
            lines.append(
                f"{names[f]:<{width}}  {tickers[a]:<8}  {report.psi[a, f]:7.3f}  {report.ks[a, f]:6.3f}  "
                f"{report.critical[a]:7.3f}"
            )
    drifting = int(report.drifting.sum())
    lines.append(
        f"{drifting} of {report.scored} (feature, asset) pairs drift ({report.share:.1%}): PSI >= {PSI_THRESHOLD} "
        f"and KS >= its 5% critical value; recent valid rows per asset: {', '.join(map(str, report.rows))}"
    )
    return "\n".join(lines)
