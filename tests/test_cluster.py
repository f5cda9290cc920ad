"""Cross-validation on a Dask cluster (joblib's Dask backend): the same report as a local run, the features sent to
the workers once per layer, no Dask import without a scheduler, and an unreachable scheduler in one line."""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, synthetic_cache

from classifiers import crossval
from classifiers.crossval import cross_validate
from embedder.kernel.errors import FeaturebankError

distributed = pytest.importorskip("distributed", reason='Dask is an optional extra: pip install -e ".[dask]"')

SPECS = ["logreg", "knn:n_neighbors=3", "rbf-svm:pca=8"]
EXACT = ("accuracy", "balanced_accuracy", "f1_macro")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        yield lc


@pytest.mark.integration  # a Dask cluster of worker processes
def test_cv_on_a_cluster_equals_the_local_run(tmp_path, cluster):
    synthetic_cache(tmp_path / "c.h5", groups=[f"g{i // 3}" if i % 4 else "" for i in range(30)])
    remote = cross_validate(
        tmp_path / "c.h5", classifiers=SPECS, folds=3, repeats=2, seed=5, scheduler=cluster.scheduler_address
    )
    local = cross_validate(tmp_path / "c.h5", classifiers=SPECS, folds=3, repeats=2, seed=5)
    assert remote.grouped and [r.name for r in remote.results] == [r.name for r in local.results]
    assert len(remote.results) == len(SPECS) * 2  # two layers
    for a, b in zip(remote.results, local.results):
        assert np.array_equal(a.predictions, b.predictions)
        for fa, fb in zip(a.folds, b.folds):
            assert {m: fa.scores[m] for m in EXACT} == {m: fb.scores[m] for m in EXACT}
        # kNN's distances are summed in another order by the workers' one-thread BLAS: float32 rounding only
        assert (a.proba is None) == (b.proba is None)
        if a.proba is not None:
            np.testing.assert_allclose(a.proba, b.proba, rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            [f.scores["log_loss"] or 0 for f in a.folds], [f.scores["log_loss"] or 0 for f in b.folds], rtol=1e-6
        )
    assert [r.name for r in remote.leaderboard()] == [r.name for r in local.leaderboard()]


@pytest.mark.integration  # a Dask cluster of worker processes
def test_each_layer_is_sent_to_the_workers_once_and_kept_until_it_is_done(tmp_path, cluster, monkeypatch):
    synthetic_cache(tmp_path / "c.h5", seed=7, dim=64)  # both layers big enough for joblib to scatter them itself
    real = crossval.layer_tasks

    @contextlib.contextmanager
    def collected_first(*args):  # joblib's spent Parallel calls are in reference cycles: freed whenever gc runs
        gc.collect()
        with real(*args) as given:
            yield given

    monkeypatch.setattr(crossval, "layer_tasks", collected_first)
    start = len(cluster.scheduler.transition_log)
    cross_validate(tmp_path / "c.h5", classifiers=SPECS, folds=3, seed=0, scheduler=cluster.scheduler_address)
    left = [str(t.key) for t in list(cluster.scheduler.transition_log)[start:] if str(t.key).startswith("ndarray-")]
    # scattered data is put in memory and forgotten once; each layer's X once (two layers) and the labels once:
    # joblib alone would scatter X again for every classifier, and the labels, released between the layers and
    # scattered again, could be forgotten under the second layer's tasks ("lost dependencies")
    assert len(left) == len(set(left)) == 3


@pytest.mark.integration  # a Dask cluster of worker processes
def test_cli_with_a_scheduler_prints_the_local_report(tmp_path, cluster):
    synthetic_cache(tmp_path / "c.h5")
    base = [sys.executable, "-m", "cli", "cv", str(tmp_path / "c.h5"), "-c", "logreg,knn", "--folds", "3", "--json"]
    runs = [
        subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        for extra in ([], ["--scheduler", cluster.scheduler_address])
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr
    local, remote = (json.loads(r.stdout) for r in runs)
    for d in (local, remote):
        d.pop("seconds")
        for row in d["leaderboard"]:
            row.pop("fit_seconds", None), row.pop("predict_seconds", None)
    assert remote["leaderboard"] == local["leaderboard"]


def test_without_a_scheduler_nothing_of_dask_is_imported(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    code = (
        "import sys, cli\n"
        f"cli.main(['cv', {str(tmp_path / 'c.h5')!r}, '-c', 'logreg', '--folds', '3', '-q'], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_an_unreachable_scheduler_is_one_line(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    with pytest.raises(FeaturebankError, match=r"cannot connect to the Dask scheduler at tcp://127\.0\.0\.1:9"):
        from classifiers.cluster import on_cluster

        with on_cluster("tcp://127.0.0.1:9", timeout=1):
            pass


def test_n_jobs_with_a_scheduler_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    import cli

    synthetic_cache(tmp_path / "c.h5")
    r = CliRunner().invoke(cli.main, ["cv", str(tmp_path / "c.h5"), "-j", "2", "--scheduler", "tcp://127.0.0.1:9"])
    assert r.exit_code == 2 and "--n-jobs does not apply with --scheduler" in r.output
