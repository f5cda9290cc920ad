"""The report's extras (neighbour search, map) are computed once per cache and layer: a later run on the unchanged
cache reads them back, a changed cache computes them again, and a folder that cannot hold them changes nothing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import synthetic_cache

from classifiers import extras, neighbours
from classifiers.crossval import cross_validate
from classifiers.report import embedmap
from classifiers.report.writer import report_dict, write_report


def run(cache, out=None):
    report = cross_validate(str(cache), classifiers=["logreg"], layers=["flatten"], folds=3)
    d = report_dict(report, 5)
    if out:
        write_report(report, str(out), 5, d)
    return report, d


def test_a_second_run_on_the_same_cache_reuses_the_extras(tmp_path, monkeypatch):
    synthetic_cache(tmp_path / "c.h5", counts=(14, 12, 12))
    first, d1 = run(tmp_path / "c.h5", tmp_path / "one")
    kept = sorted(os.listdir(tmp_path / "c.h5.extras"))
    assert len(kept) == 2 and [name.split("-")[1] for name in kept] == ["map", "neighbours"]
    assert d1["outliers"]["search"] == "exact, among all 38 images"

    def never(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(neighbours, "nearest_neighbours", never)
    monkeypatch.setattr(embedmap, "embedding_map", never)
    second, d2 = run(tmp_path / "c.h5", tmp_path / "two")
    assert d2["outliers"] == d1["outliers"] and d2["label_issues"] == d1["label_issues"]
    assert json.loads((tmp_path / "two" / "map.json").read_text()) == json.loads(
        (tmp_path / "one" / "map.json").read_text()
    )
    layer, index, similarity = second.neighbours()
    _, index1, similarity1 = first.neighbours()
    assert layer == "flatten" and (index == index1).all() and (similarity == similarity1).all()


def test_a_changed_cache_computes_them_again(tmp_path):
    X, y = synthetic_cache(tmp_path / "c.h5", seed=1)
    first, _ = run(tmp_path / "c.h5")
    old = os.listdir(tmp_path / "c.h5.extras")
    features = X.copy()
    features[4] = features[20]  # image 4 is now a copy of image 20
    synthetic_cache(tmp_path / "c.h5", seed=1, features=features)
    second, _ = run(tmp_path / "c.h5")
    _, before, _ = first.neighbours()
    _, after, similarity = second.neighbours()
    assert before[4, 0] != 20 and after[4, 0] == 20 and after[20, 0] == 4 and similarity[4, 0] > 0.9999
    assert (after == neighbours.nearest_neighbours(features.copy())[0]).all()
    new = os.listdir(tmp_path / "c.h5.extras")
    assert len(new) == 1 and not set(new) & set(old)  # the old version's file is gone


def test_the_key_is_the_cache_layer_rows_and_parameters(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(str(tmp_path / "c.h5"), classifiers=["logreg"], layers=["flatten"], folds=3)
    data = report.source(report.best)
    base = extras.sidecar(data, "flatten", "neighbours", {"k": 10})
    assert base == extras.sidecar(data, "flatten", "neighbours", {"k": 10})
    assert base.startswith(str(tmp_path / "c.h5.extras") + os.sep)
    others = {
        extras.sidecar(data, "layer3", "neighbours", {"k": 10}),
        extras.sidecar(data, "flatten", "neighbours", {"k": 5}),
        extras.sidecar(data, "flatten", "map", {"k": 10}),
    }
    data.rows = data.rows[::-1].copy()  # other rows (or the same in another order): other neighbours' indices
    others.add(extras.sidecar(data, "flatten", "neighbours", {"k": 10}))
    assert len(others) == 4 and base not in others


def test_a_folder_that_cannot_hold_them_computes_them_each_time(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    (tmp_path / "c.h5.extras").write_text("a file where the folder would be")
    calls = []
    made, reused = extras.remembered(
        cross_validate(str(tmp_path / "c.h5"), classifiers=["logreg"], layers=["flatten"], folds=3).data,
        "flatten",
        "neighbours",
        {},
        lambda: calls.append(1) or {"a": np.arange(3)},
    )
    assert made["a"].tolist() == [0, 1, 2] and not reused and calls == [1]
    _, d = run(tmp_path / "c.h5")
    assert d["outliers"]["images"] and (tmp_path / "c.h5.extras").read_text() == "a file where the folder would be"


def test_a_damaged_sidecar_is_computed_again(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(str(tmp_path / "c.h5"), classifiers=["logreg"], layers=["flatten"], folds=3)
    path = extras.sidecar(report.data, "flatten", "x", {})
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as fh:
        fh.write(b"PK\x03\x04 half a file")
    made, reused = extras.remembered(report.data, "flatten", "x", {}, lambda: {"a": np.ones(2)})
    assert not reused and made["a"].tolist() == [1.0, 1.0]
    again, reused = extras.remembered(report.data, "flatten", "x", {}, lambda: pytest.fail("computed again"))
    assert reused and again["a"].tolist() == [1.0, 1.0]


PROBE = (
    "import sys, cli; from click.testing import CliRunner; "
    "r = CliRunner().invoke(cli.main, ['cv', *sys.argv[1:], '-c', 'logreg', '--folds', '3']); "
    "print(r.exit_code, [m for m in ('torch', 'matplotlib', 'sklearn.manifold') if m in sys.modules])"
)


def imported(*args) -> str:
    import subprocess
    import sys

    from helpers import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.integration
def test_cv_imports_no_torch_and_only_what_it_draws(tmp_path):
    """torch is never imported by cv; matplotlib only for the report's figures; t-SNE only when the map is not kept."""
    synthetic_cache(tmp_path / "c.h5")
    assert imported(str(tmp_path / "c.h5")) == "0 []"
    assert imported(str(tmp_path / "c.h5"), "--out", str(tmp_path / "one")) == "0 ['matplotlib', 'sklearn.manifold']"
    assert imported(str(tmp_path / "c.h5"), "--out", str(tmp_path / "two")) == "0 ['matplotlib']"


def test_thumbnails_are_made_once_per_cache_not_per_run_folder(tmp_path):
    from helpers import photo

    from classifiers.report.html import Thumbs

    synthetic_cache(tmp_path / "c.h5")
    (tmp_path / "images" / "cats").mkdir(parents=True)
    photo(1, (320, 240)).save(tmp_path / "images" / "cats" / "a.jpg")
    shared = extras.thumbs_folder(str(tmp_path / "c.h5"))
    assert shared.startswith(str(tmp_path / "c.h5.extras") + os.sep)
    first = Thumbs(str(tmp_path / "one"), str(tmp_path / "images"), shared)
    card = first("cats/a.jpg")
    assert first.made == 1 and card["src"].startswith("thumbs/")
    os.remove(tmp_path / "images" / "cats" / "a.jpg")  # the next run folder does not need the original
    second = Thumbs(str(tmp_path / "two"), str(tmp_path / "images"), shared)
    assert second("cats/a.jpg")["src"] == card["src"] and second.made == 0
    made = (tmp_path / "one" / card["src"]).read_bytes()
    assert (tmp_path / "two" / card["src"]).read_bytes() == made and made[:2] == b"\xff\xd8"
    synthetic_cache(tmp_path / "c.h5", seed=4)  # another version of the cache: another folder
    assert extras.thumbs_folder(str(tmp_path / "c.h5")) != shared
    assert extras.thumbs_folder(str(tmp_path / "absent.h5")) is None
