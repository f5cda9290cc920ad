"""Fits side by side: how many at once, and running them so.

``cv``'s folds, the learning curve's draws and the calibration's inner folds are independent fits of the same
rows. They run in threads of this process, which share the rows (no copy of the layer, no worker processes to
start); the fits release Python's lock where they work (BLAS, libsvm, liblinear, the trees), and the cores are
shared out among them as BLAS threads. One at a time, BLAS has every core; but libsvm and the trees use one core
whatever BLAS has, and two BLAS threads of one small fit wait on each other on a busy machine (RESULTS.md: the
default ``cv`` on 10,000 rows took 1.8 times longer one fold at a time on 2 cores)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import cast

from embedder.kernel.errors import InvalidValue


def cores() -> int:
    """The cores this process may use (its affinity and its cgroup's quota, as joblib counts them)."""
    from joblib import cpu_count

    return max(1, cpu_count())


def fold_jobs(n_jobs: int | None, folds: int, available: int | None = None) -> int:
    """How many of ``folds`` fits run side by side: ``n_jobs`` as joblib reads it (1 or more, -1 every core, -2
    every core but one...), or None: as many as the cores; never more than the fits. 0 is one line."""
    available = cores() if available is None else available
    if n_jobs == 0:
        raise InvalidValue("0 jobs cannot run anything: give 1 or more, or -1 for every core")
    if n_jobs is None:
        wanted = available
    elif n_jobs < 0:
        wanted = max(1, available + 1 + n_jobs)
    else:
        wanted = n_jobs
    return max(1, min(wanted, folds))


def blas_threads(jobs: int, available: int | None = None) -> int:
    """BLAS threads for each of ``jobs`` fits side by side: the cores shared out, at least one."""
    return max(1, (cores() if available is None else available) // jobs)


def within_memory(jobs: int, shared: float, each: float, limit: float | None) -> int:
    """At most ``jobs`` fits side by side that hold ``shared`` bytes together and ``each`` bytes apiece within
    ``limit`` (None: no limit); one at least."""
    if limit is None or each <= 0:
        return max(1, jobs)
    return max(1, min(jobs, int((limit - shared) // each)))


def side_by_side(tasks: Iterable, jobs: int) -> Iterator:
    """The results of joblib ``delayed`` ``tasks``, in their order, ``jobs`` at a time in threads, each thread's
    BLAS and OpenMP limited to its share of the cores (``blas_threads``); one at a time in the calling thread, as
    they are, when ``jobs`` is 1. When the reader stops early (an error, a closed generator, Ctrl-C), the tasks not
    started are cancelled and the running ones finished before this returns: nothing of them outlives it (a fit in
    libsvm or a forest does not hear a signal until it ends, one at a time as side by side; threads left running in
    C code while the interpreter shuts down can crash it). Python's warning
    filters are as they were after (``warnings.catch_warnings``, which scikit-learn's fits use, is not thread-safe
    before Python 3.14: two threads' exits can leave a filter of one behind)."""
    if jobs <= 1:
        for function, args, kwargs in tasks:
            yield function(*args, **kwargs)
        return
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    threads = blas_threads(jobs)

    def limited() -> None:  # OpenMP's limit is per thread: set in each worker; BLAS's is the process's
        threadpool_limits(threads, user_api="openmp")

    filters = list(warnings.filters)
    pool = ThreadPoolExecutor(max_workers=jobs, initializer=limited, thread_name_prefix="featurebank-fit")
    with threadpool_limits(threads, user_api="blas"):
        try:
            for future in [pool.submit(function, *args, **kwargs) for function, args, kwargs in tasks]:
                yield future.result()
        finally:  # within the limit: the fits still running finish under it
            pool.shutdown(wait=True, cancel_futures=True)
            cast(list, warnings.filters)[:] = filters  # a list at run time (typeshed says Sequence)
            getattr(warnings, "_filters_mutated", lambda: None)()  # the module's cache of them, where it keeps one


__all__ = ["blas_threads", "cores", "fold_jobs", "side_by_side", "within_memory"]
