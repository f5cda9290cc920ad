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


@pytest.mark.parametrize(
    "text, said",
    [
        ("a/1.jpg,ant\n", "line 1: the first line must name the columns 'path' and 'label'"),
        ("path\na/1.jpg\n", "line 1: the first line must name the columns 'path' and 'label'"),
        ("path,label\na/1.jpg,ant\nc/9.jpg,bee\n", "line 3: c/9.jpg is not in the cache"),
        ("path,label\na/1.jpg,ant\nb/3.jpg,bee\na/1.jpg,ant\n", "line 4: a/1.jpg is listed twice (first on line 2)"),
        ("path,label\na/1.jpg,ant,extra\n", "line 2: 3 field(s) where the header names 2"),
        ("path,label\n,ant\n", "line 2: no path"),
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


def test_labels_of_keeps_the_cache_untouched(tmp_path):
    cache = tmp_path / "c.h5"
    synthetic_cache(cache, counts=(2, 1), labels=False)
    reader = CacheReader(str(cache))
    labels_of(reader, write(tmp_path, f"path,label\n{reader.paths[2]},x\n"))
    assert labels_of(reader).tolist() == ["", "", ""]
    assert np.all(CacheReader(str(cache)).rows["label"] == "")
