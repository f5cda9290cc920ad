"""The labels overlay: a path,label CSV over a cache's rows."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import synthetic_cache

from classifiers.labels import labels_of, read_labels
from embedder.cache.hdf5 import CacheReader
from embedder.kernel.errors import FeaturebankError

PATHS = ["a/1.jpg", "a/2.jpg", "b/3.jpg", "b/4.jpg"]


def write(tmp_path, text: str, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_read_labels_puts_each_label_on_its_row_and_leaves_the_rest_unlabeled(tmp_path):
    csv_path = write(tmp_path, "path,label\nb/3.jpg,bee\na/1.jpg,ant\na/2.jpg,\n")
    assert read_labels(csv_path, PATHS).tolist() == ["ant", "", "bee", ""]


def test_read_labels_takes_columns_in_any_order_with_others_ignored_and_normalized_paths(tmp_path):
    csv_path = write(tmp_path, '\ufeffreason,Label,PATH\n"x, y",bee,./b//4.jpg\n\n,ant,a\\1.jpg\n')
    assert read_labels(csv_path, PATHS).tolist() == ["ant", "", "", "bee"]


def test_read_labels_takes_the_files_own_paths_absolute_or_relative_to_the_csv(tmp_path):
    """A manifest of the same images (paths relative to its folder, as `featurebank manifest` writes them) or
    absolute paths name the cache's rows too; a file outside the cache's folder is still refused."""
    root = tmp_path / "photos"
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    csv_path = write(
        elsewhere, f"path,label\n../photos/b/3.jpg,bee\n{root / 'a' / '1.jpg'},ant\na/2.jpg,ant\n", "m.csv"
    )
    assert read_labels(csv_path, PATHS, str(root)).tolist() == ["ant", "ant", "bee", ""]
    with pytest.raises(FeaturebankError, match="'../photos/b/3.jpg' is not in the cache"):
        read_labels(csv_path, PATHS)  # no root: only the cache's own names
    # a CSV inside the images' folder naming a/1.jpg: the cache's a/1.jpg, or photos/sub/a/1.jpg as a file? refused
    sub = root / "sub"
    sub.mkdir(parents=True)
    both = write(sub, "path,label\na/1.jpg,ant\n", "s.csv")
    with pytest.raises(
        FeaturebankError, match="line 2: 'a/1.jpg' names two images of the cache, a/1.jpg .* and sub/a/1.jpg"
    ):
        read_labels(both, [*PATHS, "sub/a/1.jpg"], str(root))
    assert read_labels(both, PATHS, str(root)).tolist() == ["ant", "", "", ""]  # one reading only: that one
    outside = write(elsewhere, f"path,label\n{tmp_path / 'b' / '3.jpg'},bee\n", "o.csv")
    with pytest.raises(FeaturebankError, match="is not in the cache .*or by their files' paths"):
        read_labels(outside, PATHS, str(root))


@pytest.mark.parametrize(
    "text, said",
    [
        ("a/1.jpg,ant\n", "line 1: the first line must name the columns 'path' and 'label'"),
        ("path\na/1.jpg\n", "line 1: the first line must name the columns 'path' and 'label'"),
        ("path,label\na/1.jpg,ant\nc/9.jpg,bee\n", "line 3: 'c/9.jpg' is not in the cache"),
        ("path,label\na/1.jpg,ant\nb/3.jpg,bee\na/1.jpg,ant\n", "line 4: a/1.jpg is listed twice (first on line 2)"),
        ("path,label\na/1.jpg,ant,extra\n", "line 2: 3 field(s) where the header names 2"),
        ("path,label\n,ant\n", "line 2: no path"),
        # the rest of the file read as one field would leave b/3.jpg and b/4.jpg unlabeled, silently
        (
            'path,label\na/1.jpg,"ant\nb/3.jpg,bee\nb/4.jpg,bee\n',
            "line 2: not valid CSV (a quote opened there is never",
        ),
        (
            'path,label\na/1.jpg,"ant\nbee"\n',
            "line 2: its label holds a line break (a quote opened there and closed on line 3?)",
        ),
    ],
)
def test_read_labels_refuses_a_bad_file_in_one_line_naming_file_and_line(tmp_path, text, said):
    csv_path = write(tmp_path, text)
    with pytest.raises(FeaturebankError) as err:
        read_labels(csv_path, PATHS)
    message = str(err.value)
    assert said in message and csv_path in message and "\n" not in message


def test_labels_of_an_unlabeled_cache_is_the_csv(tmp_path):
    cache = tmp_path / "flat.h5"
    synthetic_cache(cache, counts=(3, 2), labels=False)
    reader = CacheReader(str(cache))
    assert labels_of(reader).tolist() == [""] * 5
    csv_path = write(tmp_path, f"path,label\n{reader.paths[4]},dog\n{reader.paths[0]},cat\n")
    assert labels_of(str(cache), csv_path).tolist() == ["cat", "", "", "", "dog"]


def test_labels_of_lays_the_csv_over_the_cache_labels_and_refuses_a_contradiction(tmp_path):
    cache = tmp_path / "half.h5"
    synthetic_cache(cache, counts=(2, 2))
    reader = CacheReader(str(cache))
    own = reader.labels.tolist()
    assert labels_of(reader).tolist() == own
    agreeing = write(tmp_path, f"path,label\n{reader.paths[0]},{own[0]}\n{reader.paths[3]},\n")
    assert labels_of(reader, agreeing).tolist() == own  # an empty CSV label never removes the cache's
    contradicting = write(tmp_path, f"path,label\n{reader.paths[1]},{own[3]}\n", name="bad.csv")
    with pytest.raises(FeaturebankError, match=r"bad\.csv labels 1 image\(s\) otherwise .*class1 in the CSV"):
        labels_of(reader, contradicting)


def test_one_class_written_two_ways_is_refused_and_a_near_miss_of_a_big_class_is_a_note(tmp_path):
    """A labels CSV that names a class two ways ('Ants' and 'ants') is one line; a class of one or two images one
    letter from a class three times its size ('bess' beside 'bees') is a note, which the command line prints as one
    line and runs on; short names ('cat' and 'car') and classes of comparable size are left alone."""
    from click.testing import CliRunner

    import cli
    from classifiers.labels import near_misses
    from embedder.kernel.errors import Note

    cache = tmp_path / "flat.h5"
    synthetic_cache(cache, counts=(10, 10), labels=False)
    paths = CacheReader(str(cache)).paths

    def csv(labels):
        return write(tmp_path, "path,label\n" + "".join(f"{p},{c}\n" for p, c in zip(paths, labels)))

    with pytest.raises(
        FeaturebankError, match=r"gives one class two names, 'Ants' \(1 image\(s\)\) and 'ants' \(6, the CSV's\)"
    ):
        labels_of(str(cache), csv(["ants"] * 6 + ["Ants"] + ["bees"] * 6))
    nfd = "cafe\u0301"  # café as macOS writes a folder name: e + combining accent, beside the composed é
    with pytest.raises(FeaturebankError, match="gives one class two names"):
        labels_of(str(cache), csv(["caf\u00e9"] * 6 + [nfd] + ["bees"] * 6))
    typo = csv(["ants"] * 6 + ["bees"] * 6 + ["bess"])
    with pytest.warns(Note, match=r"class 'bess' \(1 image\(s\)\) is one letter from 'bees' \(6\): a misspelling\?"):
        assert labels_of(str(cache), typo).tolist()[12] == "bess"  # noted, not changed
    assert near_misses({"bees": 6, "beez": 2, "cat": 9, "car": 1, "dogs": 3, "dog": 3, "tulips": 5, "tulip": 2}) == [
        ("beez", "bees")
    ]  # 'tulip' has 2 against 5: under three times as many
    assert near_misses({"roses": 9, "rsoes": 1, "daisy": 9, "daisyy": 2, "sunflowers": 9, "sunflower": 1}) == [
        ("rsoes", "roses"),
        ("daisyy", "daisy"),
        ("sunflower", "sunflowers"),
    ]
    result = CliRunner().invoke(
        cli.main, ["select", str(cache), "--budget", "2", "--labels", typo, "-o", str(tmp_path / "r.csv")]
    )
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert notes == [
        f"note: {typo}: class 'bess' (1 image(s)) is one letter from 'bees' (6): a misspelling? (class names are "
        "compared exactly; if they are two classes, ignore this)"
    ]
    assert near_misses({"tulips": 50, "Tulip": 2}) == [("Tulip", "tulips")]  # case is no disguise either

    # the cache's own class folders are not the CSV's doing: a CSV that adds to them is never blamed for them
    own = tmp_path / "own.h5"
    synthetic_cache(own, counts=(4, 4, 8), classes=("Ants", "ants", "bees"))
    paths = CacheReader(str(own)).paths
    agreeing = write(tmp_path, f"path,label\n{paths[-1]},bees\n", name="agree.csv")
    assert labels_of(str(own), agreeing).tolist().count("Ants") == 4


def test_labels_of_keeps_the_cache_untouched(tmp_path):
    cache = tmp_path / "c.h5"
    synthetic_cache(cache, counts=(2, 1), labels=False)
    reader = CacheReader(str(cache))
    labels_of(reader, write(tmp_path, f"path,label\n{reader.paths[2]},x\n"))
    assert labels_of(reader).tolist() == ["", "", ""]
    assert np.all(CacheReader(str(cache)).rows["label"] == "")


def test_a_cv_run_on_a_labels_csv_names_it_with_its_sha256_everywhere_it_reports(tmp_path):
    from classifiers.crossval import cross_validate
    from classifiers.report.html import Thumbs, cv_context
    from classifiers.report.text import cv_text
    from classifiers.report.writer import markdown, report_dict
    from embedder.kernel.store import sha256_of

    X, y = synthetic_cache(tmp_path / "c.h5", counts=(8, 8), labels=False, dim=8)
    paths = CacheReader(str(tmp_path / "c.h5")).paths
    labels = write(tmp_path, "path,label\n" + "".join(f"{paths[i]},c{y[i]}\n" for i in range(12)))
    d = report_dict(cross_validate(str(tmp_path / "c.h5"), classifiers=["knn"], folds=2, labels=str(labels)))
    assert d["labels"] == {"csv": str(labels), "sha256": sha256_of(str(labels)), "picked_by_select": False}
    assert cv_text(d)[0].startswith(f"12 images (labels from {labels}), 4 unlabeled left out, 2 classes")
    assert f"- labels: `{labels}` (sha256 {sha256_of(str(labels))}) over the cache's own" in markdown(d)
    facts = dict(cv_context(d, str(tmp_path / "run"), Thumbs(str(tmp_path / "run"), None, None))["facts"])
    assert facts["labels"] == f"{labels} (sha256 {sha256_of(str(labels))[:12]}…) over the cache's own"
    assert facts["embedding"].startswith("mobilenet") or "weights" in facts["embedding"]  # in its own place


def test_a_cache_without_labels_points_to_labels_and_an_empty_csv_is_named(tmp_path):
    from classifiers.crossval import cross_validate

    synthetic_cache(tmp_path / "c.h5", counts=(3, 3), labels=False, dim=4)
    paths = CacheReader(str(tmp_path / "c.h5")).paths
    with pytest.raises(FeaturebankError, match=r"has no labels: give --labels LABELLED.csv \(path,label; featurebank "):
        cross_validate(str(tmp_path / "c.h5"), classifiers=["knn"], folds=2)
    empty = write(tmp_path, "path,label\n" + "".join(f"{p},\n" for p in paths[:3]))
    with pytest.raises(FeaturebankError, match=f"has no labelled rows: every label of {empty} is empty; fill in"):
        cross_validate(str(tmp_path / "c.h5"), classifiers=["knn"], folds=2, labels=empty)


def test_a_sample_of_the_unlabeled_rows_reads_only_those_rows(tmp_path, monkeypatch):
    from classifiers.data import labeled

    X, y = synthetic_cache(tmp_path / "c.h5", counts=(10, 10), labels=False, dim=6)
    reader = CacheReader(str(tmp_path / "c.h5"))
    labels = labels_of(reader, write(tmp_path, "path,label\n" + "".join(f"{reader.paths[i]},c\n" for i in range(3))))
    data = labeled(reader, labels)
    free = np.flatnonzero(labels == "")
    whole = data.free_features("flatten")
    np.testing.assert_array_equal(whole, X[free].astype(np.float32))
    read = []
    features = CacheReader.features
    monkeypatch.setattr(
        CacheReader, "features", lambda self, layer=None, rows=None: read.append(rows) or features(self, layer, rows)
    )
    sample = data.free_features("flatten", limit=5)
    picked = free[np.linspace(0, len(free) - 1, 5).astype(np.int64)]
    np.testing.assert_array_equal(sample, X[picked].astype(np.float32))
    assert [list(r) for r in read] == [list(picked)]  # those rows, not the whole layer
