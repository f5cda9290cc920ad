"""Is the top of the leaderboard better than the rest? The corrected resampled t-test on shared folds.

Scores of the same folds are paired, but folds overlap in their training rows, so the plain paired t-test
underestimates the variance and finds differences that are not there. Nadeau and Bengio's correction replaces
1/J by 1/J + n_test/n_train:

    t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)),   df = J - 1,

d the per-fold differences of the ranking metric (best minus row), J = folds x repeats, var the sample variance
(ddof 1). C. Nadeau and Y. Bengio, Inference for the generalization error, Machine Learning 52:239-281 (2003);
for repeated k-fold, R. Bouckaert and E. Frank, Evaluating the replicability of significance tests for comparing
learning algorithms, PAKDD 2004.

Choices: two-sided p-values (the best row was chosen on these same folds, so a one-sided test would favour it;
two-sided is twice the one-sided p here), alpha 0.05, no correction for the number of rows compared. A row is
"not significantly worse" than the best when p >= alpha; the best row itself has no p-value. With zero variance
of d, equal scores on every fold give p = 1 and a constant non-zero difference gives p = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
TEST = (
    "two-sided corrected resampled t-test against the best row on the shared folds "
    "(Nadeau & Bengio 2003, Machine Learning 52:239-281; Bouckaert & Frank 2004)"
)


@dataclass(frozen=True)
class Comparison:
    """One row against the best: the t statistic, its two-sided p-value, and whether p >= alpha."""

    t: float | None
    p_value: float | None  # None for the best row itself
    not_worse: bool


def corrected_t_test(best: np.ndarray, other: np.ndarray, n_train: float, n_test: float) -> tuple[float, float]:
    """``(t, two-sided p)`` of the paired fold scores ``best`` and ``other`` (same folds, same order), with
    Nadeau and Bengio's variance correction for ``n_test`` / ``n_train`` rows per fold."""
    from scipy import stats

    d = np.asarray(best, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    J = len(d)
    if J < 2:
        raise ValueError("the corrected t-test needs at least two folds")
    if (d == d[0]).all():  # zero variance (tested exactly: the float variance of equal values need not be 0)
        return (0.0, 1.0) if d[0] == 0 else (float(np.copysign(np.inf, d[0])), 0.0)
    mean, var = d.mean(), d.var(ddof=1)
    t = mean / np.sqrt((1 / J + n_test / n_train) * var)
    return float(t), float(2 * stats.t.sf(abs(t), J - 1))


def compare_to_best(
    fold_scores: list[np.ndarray], n_train: float, n_test: float, alpha: float = ALPHA
) -> list[Comparison]:
    """For rows in leaderboard order (the first is the best), each row's comparison with the first. A row whose fold
    scores are above the first's on average (t below 0: a tie of ``CVReport.ties`` put the first ahead of it by its
    log-loss) is not worse, whatever p says."""
    best = fold_scores[0]
    out = [Comparison(None, None, True)]
    for other in fold_scores[1:]:
        t, p = corrected_t_test(best, other, n_train, n_test)
        out.append(Comparison(t, p, p >= alpha or t <= 0))
    return out
