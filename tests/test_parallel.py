"""Fits side by side (``classifiers.parallel``): how many at once, in order, nothing left running when the reader
stops early, the warning filters as they were, and cv's results the same one fold at a time or side by side for
every entry of the zoo."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from helpers import synthetic_cache
from joblib import delayed

from classifiers.crossval import cross_validate
from classifiers.parallel import fold_jobs, side_by_side
from classifiers.zoo import list_classifiers
from embedder.kernel.errors import InvalidValue


def test_results_come_in_the_tasks_order_one_at_a_time_in_the_calling_thread():
    def task(i):
        time.sleep(0.05 * (3 - i))  # the first ends last
        return i, threading.get_ident()

    together = list(side_by_side((delayed(task)(i) for i in range(4)), 2))
    assert [i for i, _ in together] == [0, 1, 2, 3] and threading.get_ident() not in {t for _, t in together}
    alone = list(side_by_side((delayed(task)(i) for i in range(3)), 1))
    assert alone == [(i, threading.get_ident()) for i in range(3)]


def test_a_reader_that_stops_early_leaves_nothing_running_and_the_warning_filters_as_they_were():
    started, finished = [], []

    def task(i):
        started.append(i)
        with warnings.catch_warnings():  # what scikit-learn's fits do, in two threads at once
            warnings.simplefilter("ignore")
            time.sleep(0.2)
        finished.append(i)
        if i == 0:
            raise ValueError("fold 0 failed")
        return i

    before = list(warnings.filters)
    results = side_by_side((delayed(task)(i) for i in range(8)), 2)
    with pytest.raises(ValueError, match="fold 0"):
        next(results)
    assert sorted(finished) == sorted(started) and len(started) <= 4  # the rest cancelled before they started
    assert warnings.filters == before
    results = side_by_side((delayed(task)(i) for i in range(1, 8)), 2)
    assert next(results) == 1
    results.close()
    assert sorted(finished) == sorted(started) and len(started) < 12
    assert warnings.filters == before


def test_ctrl_c_finishes_the_fits_running_and_starts_no_other():
    """As one fold at a time waits for its fold (libsvm hears no signal), side by side waits for the running ones:
    threads left in C code while the interpreter shuts down can crash it."""
    started, finished = [], []

    def task(i):
        started.append(i)
        if i == 0:
            raise KeyboardInterrupt
        time.sleep(0.5)
        finished.append(i)
        return i

    with pytest.raises(KeyboardInterrupt):
        next(side_by_side((delayed(task)(i) for i in range(8)), 2))
    assert sorted(finished) == sorted(i for i in started if i) and len(started) <= 4


def test_zero_jobs_is_one_line():
    with pytest.raises(InvalidValue, match="0 jobs cannot run anything"):
        fold_jobs(0, 5)


QUICK = {  # smaller forests and a two-member ensemble: the same code, in a fraction of the time
    "random-forest": "random-forest:n_estimators=20",
    "extra-trees": "extra-trees:n_estimators=20",
    "ensemble": "ensemble:members=logreg+rbf-svm",
}


@pytest.mark.parametrize("spec", [QUICK.get(name, name) for name in list_classifiers()])
def test_every_entry_scores_and_predicts_the_same_side_by_side(tmp_path, spec):
    """The same folds, predictions and probabilities; decision scores within float32 rounding (BLAS's sums of
    another thread count, which the report's calibration reads)."""
    synthetic_cache(tmp_path / "c.h5", counts=(14, 12, 10), seed=3)
    runs = [
        cross_validate(tmp_path / "c.h5", classifiers=[spec], layers=["flatten"], folds=3, n_jobs=j, extras=None)
        for j in (1, 3)
    ]
    assert runs[0].plan.jobs == {} and runs[1].plan.jobs == {spec: 3}
    one, three = (r.results[0] for r in runs)
    assert [f.scores for f in one.folds] == [f.scores for f in three.folds]
    assert (one.predictions == three.predictions).all()
    for a, b in ((one.proba, three.proba), (one.decisions, three.decisions)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_learning_curve_with_folds_side_by_side_leaves_the_warning_filters_as_they_were(tmp_path):
    synthetic_cache(tmp_path / "c.h5", counts=(12, 10, 8), seed=8)
    before = list(warnings.filters)
    cross_validate(
        tmp_path / "c.h5", classifiers=["logreg", "knn"], layers=["flatten"], folds=3, shots="1,2,all", draws=3,
        n_jobs=2, extras=None,
    )  # fmt: skip
    assert warnings.filters == before
