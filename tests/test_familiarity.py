"""A model's familiarity column: the distance of a row to its K-th nearest training row, placed among the training
rows' own distances (a conformal p-value); rows like the training rows are flagged at about the threshold's rate,
rows from elsewhere all of them; the model file keeps the rows, refuses a member that is not them, and a file
without them predicts as before."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import digest, synthetic_cache
from sklearn.neighbors import NearestNeighbors

import cli
from classifiers import modelfile
from classifiers.bundle import evaluate, load_bundle, pseudo_labels, train
from classifiers.familiarity import UNFAMILIAR, Familiarity, K, floor_note, reference_rows, summary
from classifiers.predictions import familiarity_text, predictions_text, write_evaluation_csv
from classifiers.report.text import evaluate_text
from embedder.kernel.errors import FeaturebankError


def unit(X):
    X = np.asarray(X, dtype=np.float64)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_p_values_are_the_count_a_brute_force_search_gives():
    rng = np.random.default_rng(0)
    fam = Familiarity(reference_rows(rng.normal(size=(200, 16))))
    new = rng.normal(size=(60, 16))
    R = fam.reference.astype(np.float64)
    d_ref = NearestNeighbors(n_neighbors=K + 1, metric="cosine").fit(R).kneighbors(R)[0][:, K]  # [:, 0] is itself
    d_new = NearestNeighbors(n_neighbors=K, metric="cosine").fit(R).kneighbors(unit(new))[0][:, K - 1]
    expected = (1 + (d_ref[None, :] >= d_new[:, None]).sum(axis=1)) / (len(R) + 1)
    clear = np.abs(d_new[:, None] - d_ref[None, :]).min(axis=1) > 1e-5  # no reference distance within float error
    assert clear.sum() >= 55
    np.testing.assert_allclose(fam.p_values(new)[clear], expected[clear], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fam.calibration, np.sort(d_ref), atol=1e-5)
    assert fam.k == K and fam.floor == 1 / 201


def test_like_rows_are_flagged_at_about_the_threshold_and_rows_from_elsewhere_all():
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 3, (4, 32))

    def like(n):
        return centers[rng.integers(0, 4, n)] + rng.normal(size=(n, 32))

    fam = Familiarity(reference_rows(like(1000)))
    p = fam.p_values(like(6000))
    assert 0.006 <= (p < UNFAMILIAR).mean() <= 0.016  # 1 %: a binomial's 6,000 draws lie within 0.4 point
    assert 0.04 <= (p < 0.05).mean() <= 0.06
    elsewhere = rng.normal(0, 3, 32) * 4 + rng.normal(size=(50, 32))
    np.testing.assert_array_equal(fam.p_values(elsewhere), fam.floor)  # farther than every training row
    np.testing.assert_array_equal(fam.p_values(np.zeros((2, 32))), fam.floor)  # a row of zeros: no direction at all


def test_reference_rows_are_at_most_the_size_drawn_with_the_seed_as_unit_float16():
    X = np.random.default_rng(2).normal(size=(1500, 8)) * 5
    kept = reference_rows(X, seed=3)
    assert kept.shape == (1000, 8) and kept.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(kept.astype(np.float32), axis=1), 1, atol=2e-3)
    np.testing.assert_array_equal(kept, reference_rows(X, seed=3))
    assert not np.array_equal(kept, reference_rows(X, seed=4))
    few = reference_rows(X[:10])
    np.testing.assert_allclose(few.astype(np.float32), unit(X[:10]), atol=1e-3)  # all of them, in order


def test_a_small_reference_can_flag_nothing_and_train_says_so_once():
    fam = Familiarity(reference_rows(np.random.default_rng(3).normal(size=(30, 4))))
    out = summary(np.full(5, fam.floor), fam, [f"x{i}" for i in range(5)])
    assert out["unfamiliar"] == 0 and out["can_flag"] is False and "note" not in out  # predict stays quiet
    assert "keeps 30 training images: no image can be shown unlike them" in floor_note(fam.reference)
    assert "needs 100 or more" in floor_note(fam.reference)
    rows = np.random.default_rng(3).normal(size=(100, 4))
    assert "keeps 99 training images" in floor_note(reference_rows(rows[:99]))  # the least: 1/100, not under 0.01
    assert floor_note(reference_rows(rows)) is None  # 1/101 is


def test_a_tie_counts_as_at_least_as_far():
    """Four orthogonal kept rows: each is at distance 1 from the other three; a fifth orthogonal row is at distance
    1 too, as far as every kept row from its neighbours: familiarity (1 + 4) / 5."""
    fam = Familiarity(np.eye(8, dtype=np.float16)[:4])
    assert fam.k == 3
    np.testing.assert_array_equal(fam.calibration, [1, 1, 1, 1])
    np.testing.assert_array_equal(fam.p_values(np.eye(8)[4:6]), [1.0, 1.0])
    assert fam.p_values(np.array([[1.0, 1, 1, 1, 0, 0, 0, 0]]))[0] == 1.0  # nearer every kept row: 0.5 apart
    assert familiarity_text(10 / 1001) == "0.00999" and familiarity_text(1.0) == "1"  # never "0.0100" when flagged


def test_copies_of_one_image_are_kept_once_so_new_images_are_not_all_flagged():
    """Six copies of each image: kept as they are, each row's 5th nearest would be a copy at distance 0, and every
    new image would fall under 0.01."""
    rng = np.random.default_rng(4)
    centers = rng.normal(0, 3, (4, 32))
    X = centers[rng.integers(0, 4, 200)] + rng.normal(size=(200, 32))
    kept = reference_rows(np.repeat(X, 6, axis=0), seed=0)
    assert len(kept) == 200 and len(np.unique(kept, axis=0)) == 200
    new = centers[rng.integers(0, 4, 2000)] + rng.normal(size=(2000, 32))
    assert (Familiarity(kept).p_values(new) < UNFAMILIAR).mean() < 0.02
    assert reference_rows(np.ones((5, 3))) is None  # one distinct row: nothing to place a new one among


def test_rows_of_nan_or_zeros_are_not_kept_and_extreme_scales_are_kept_whole():
    """A NaN row (scikit-learn's trees take them) would make a model file no command could read; a row of zeros has
    no direction; rows of 1e-24 and 1e20 are directions like any other (a float32 norm would lose them)."""
    X = np.random.default_rng(0).normal(size=(50, 8))
    X[3], X[4] = np.nan, 0
    X[5] *= 1e-24
    X[6] *= 1e20
    kept = reference_rows(X)
    assert len(kept) == 48 and np.isfinite(kept).all()
    np.testing.assert_allclose(kept[3:5].astype(np.float64), unit(X[5:7]), atol=1e-3)  # rows 5 and 6, in order
    fam = Familiarity(kept)
    p = fam.p_values(np.vstack([np.full((1, 8), np.nan), np.zeros((1, 8)), X[7:8]]))
    assert p[0] == p[1] == fam.floor and p[2] > fam.floor  # NaN and zeros are unlike anything kept


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A logreg on 3 blobs of 60 rows (12 dimensions), saved; a labelled cache of 20 rows like them and 4 from
    elsewhere (other images: their own digests), and the same rows unlabeled."""
    root = tmp_path_factory.mktemp("familiarity")
    rng = np.random.default_rng(5)
    centers = rng.normal(0, 2, (3, 12)) + 4
    X, y = synthetic_cache(root / "train.h5", counts=(60, 60, 60), dim=12, centers=centers)
    bundle = train(str(root / "train.h5"), classifier="logreg", layer="flatten", out=str(root / "m.fbmodel"))
    y_new = np.repeat(np.arange(3), (8, 8, 8))
    new = centers[y_new] + rng.normal(0, 1.5, (24, 12))
    new[-4:] = -20 + rng.normal(size=(4, 12))  # far from every training row, labelled as the last class
    held = [digest(1000 + i) for i in range(24)]
    for name, labels in (("held.h5", True), ("free.h5", False)):
        synthetic_cache(root / name, counts=(8, 8, 8), dim=12, features=new, digests=held, labels=labels)
    return root, bundle


def test_a_model_file_keeps_its_training_rows_and_every_answer_reads_them(model):
    root, bundle = model
    assert bundle.reference.shape == (180, 12) and bundle.trained_on["familiarity"] == {"reference_rows": 180, "k": K}
    again = load_bundle(str(root / "m.fbmodel"))
    np.testing.assert_array_equal(again.reference, bundle.reference)
    pseudo = pseudo_labels(str(root / "m.fbmodel"), str(root / "free.h5"), sort="path")
    floor = 1 / 181
    far = {r["path"] for r in pseudo["rows"] if r["familiarity"] == pytest.approx(floor)}
    assert far == {f"class2/img{i:03d}.jpg" for i in range(20, 24)}
    assert pseudo["familiarity"]["unfamiliar"] == 4 and "4 of 24 images are unlike" in pseudo["familiarity"]["note"]
    # all four at the least familiarity there is: named the farthest first, by their distance to the kept rows
    from embedder.cache.hdf5 import CacheReader

    free = CacheReader(str(root / "free.h5"))
    distance = dict(zip(free.paths, bundle.familiarity.distances(free.features("flatten"))))
    assert pseudo["familiarity"]["paths"] == sorted(far, key=lambda path: -distance[path])
    assert len({distance[path] for path in far}) == 4 and pseudo["familiarity"]["paths"] != sorted(far)  # not by path
    assert predictions_text(pseudo).splitlines()[0] == "path,label,confidence,fit_on,familiarity"
    evaluated = evaluate(str(root / "m.fbmodel"), str(root / "held.h5"))
    scored = evaluated["familiarity"]
    assert scored["unfamiliar"] == 4 and scored["rows"] == 24 and scored["accuracy_familiar"] > 0.8
    assert sorted(scored["paths"]) == sorted(far) and scored["right_unfamiliar"] == sum(
        r["label"] == r["predicted"] for r in evaluated["predictions"] if r["path"] in far
    )
    line = next(x for x in evaluate_text(evaluated) if "unlike the training images" in x)
    assert line.startswith(
        f"  4 of 24 images unlike the training images (familiarity under 0.01): {scored['right_unfamiliar']} of them right, against "
    )
    assert "the least familiar: class2/img0" in line and line.endswith(" …")
    write_evaluation_csv(evaluated, str(root / "evaluated.csv"))
    rows = (root / "evaluated.csv").read_text().splitlines()
    assert (
        rows[0] == "path,label,predicted,p,p_label,familiarity"
        and {r.split(",")[0] for r in rows[1:] if r.endswith(",0.005525")} == far
    )
    result = CliRunner().invoke(cli.main, ["predict", str(root / "m.fbmodel"), str(root / "free.h5")])
    assert result.exit_code == 0 and "note: 4 of 24 images are unlike the images the model was trained on" in (
        result.stderr
    )


def rewritten(source, target, reference):
    """``source``'s model file with its training rows replaced by ``reference`` (None: left out)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name != modelfile.REFERENCE:
                new.writestr(name, old.read(name))
        if reference is not None:
            buffer = io.BytesIO()
            np.save(buffer, reference, allow_pickle=False)
            new.writestr(modelfile.REFERENCE, buffer.getvalue())
    return str(target)


def test_a_member_that_is_not_its_training_rows_is_one_line_and_none_is_the_former_answer(model, tmp_path):
    root, bundle = model
    good = bundle.reference
    nan = good.copy()
    nan[3, 0] = np.nan
    narrower = good[:, :5].astype(np.float32) / np.linalg.norm(good[:, :5].astype(np.float32), axis=1)[:, None]
    many = np.tile(good, (23, 1))[:4001]  # featurebank keeps 1,000 rows: 4,001 is no file it wrote
    for bad in (
        good[:, :5],
        narrower.astype(np.float16),  # unit rows, but not as wide as the classifier's input
        np.asfortranarray(good),
        good.astype(np.float32),
        nan,
        good * 3,
        good[:1],
        good[:100],  # fewer rows than the metadata says it kept
        np.zeros_like(good),
        many,
        good.ravel(),
    ):
        path = rewritten(root / "m.fbmodel", tmp_path / "bad.fbmodel", bad)
        with pytest.raises(FeaturebankError, match="training-rows.npy is not its training rows") as caught:
            load_bundle(path)
        assert "\n" not in str(caught.value)
    bomb = tmp_path / "bomb.fbmodel"  # a header for 2 rows, then 64 MB of zeros that deflate to 64 kB
    rewritten(root / "m.fbmodel", bomb, None)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f2", "fortran_order": False, "shape": (2, 12)})
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(modelfile.REFERENCE, header.getvalue() + bytes(64 << 20))
    with pytest.raises(FeaturebankError, match=r"training-rows.npy is too large\)$"):
        load_bundle(str(bomb))
    older = load_bundle(rewritten(root / "m.fbmodel", tmp_path / "older.fbmodel", None))
    assert older.familiarity is None
    pseudo = pseudo_labels(older, str(root / "free.h5"))
    assert "familiarity" not in pseudo and predictions_text(pseudo).splitlines()[0] == "path,label,confidence,fit_on"
