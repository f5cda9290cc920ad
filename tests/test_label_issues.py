"""Label issues (classifiers/label_issues.py): flipped labels rank first, the estimate is near the number flipped
and near zero without flips, the class-pair counts add up to it, the confident joint is cleanlab's, and the
report carries the list in report.json, label_issues.csv, report.md and report.html."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from classifiers.label_issues import (
    calibrate,
    combine,
    confident_joint,
    confident_thresholds,
    find_label_issues,
    label_quality,
    neighbour_probs,
    prune_by_noise_rate,
    summary_lines,
)
from classifiers.neighbours import nearest_neighbours


def blobs(n_per_class=200, k=3, dim=8, spread=1.0, seed=0):
    """k Gaussian blobs 6 apart (separable up to rare tails)."""
    rng = np.random.default_rng(seed)
    centers = np.eye(k, dim) * 6
    y = np.repeat(np.arange(k), n_per_class)
    return centers[y] + rng.normal(0, spread, (len(y), dim)), y


def flip(y, rate, k, seed=0, only=None):
    """round(rate * n) labels changed to another class (``only``: (from, to) for every flip)."""
    rng = np.random.default_rng(seed)
    pool = np.arange(len(y)) if only is None else np.flatnonzero(y == only[0])
    rows = np.sort(rng.choice(pool, int(round(rate * len(y))), replace=False))
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, k, len(rows))) % k if only is None else only[1]
    return noisy, rows


def oof(X, y, seed=0):
    return cross_val_predict(
        LogisticRegression(C=1.0, max_iter=1000),
        X,
        y,
        method="predict_proba",
        cv=StratifiedKFold(5, shuffle=True, random_state=seed),
    )


@pytest.mark.parametrize("rank_by", ["self_confidence", "normalized_margin"])
def test_flipped_rows_rank_first_and_the_estimate_is_near_the_number_flipped(rank_by):
    X, y = blobs()
    noisy, flipped = flip(y, 0.05, 3)  # 30 of 600
    found = find_label_issues(noisy, oof(X, noisy), rank_by)
    k = len(flipped)
    top = set(found.order[:k].tolist())
    assert len(top & set(flipped.tolist())) / k >= 0.9  # top-K precision, K = the number flipped
    assert abs(found.estimated - k) <= 0.2 * k  # stated tolerance: within 20 % of the true count
    assert abs(found.counted - k) <= 0.2 * k  # the confident joint's own count too
    assert sum(n for _, _, n in found.pairs()) == found.estimated
    assert (found.suggested[flipped] == y[flipped]).mean() >= 0.9  # the suggestion is the true class
    flagged = set(np.flatnonzero(found.flagged).tolist())
    # the default rule ("one_model", no other model given): the first n of the ranking, n the pair rule's size
    assert flagged == set(found.order[: found.estimated].tolist())
    assert found.estimated == find_label_issues(noisy, oof(X, noisy), rank_by, flag="pair").estimated
    assert len(flagged & set(flipped.tolist())) >= 0.9 * k  # recall of the estimated set
    by_rank = find_label_issues(noisy, oof(X, noisy), rank_by, flag="rank")  # the first `counted` of the ranking
    assert set(np.flatnonzero(by_rank.flagged).tolist()) == set(by_rank.order[: by_rank.counted].tolist())


def test_the_estimated_set_takes_its_size_from_the_other_model_and_its_members_from_the_ranking():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    sharp = np.array(  # rows 2 and 6 confidently wrong; rows 1, 3, 0 barely (their suggestion is still the other)
        [[0.48, 0.52], [0.4, 0.6], [0.1, 0.9], [0.45, 0.55], [0.05, 0.95], [0.1, 0.9], [0.8, 0.2], [0.1, 0.9]]
    )
    wide = np.array(  # an under-confident model: thresholds 0.4625 for both classes
        [[0.6, 0.4], [0.55, 0.45], [0.3, 0.7], [0.4, 0.6], [0.4, 0.6], [0.45, 0.55], [0.7, 0.3], [0.6, 0.4]]
    )
    # sharp: thresholds 0.3575 and 0.7375; confident joint [[3, 1], [1, 3]]: prune row 2 from class 0, row 6 from 1
    own = find_label_issues(labels, sharp, flag="pair")
    np.testing.assert_allclose(own.thresholds, [0.3575, 0.7375])
    assert own.joint.tolist() == [[3, 1], [1, 3]] and np.flatnonzero(own.flagged).tolist() == [2, 6]
    # wide: joint [[2, 2], [2, 2]]: the two largest p(1) - p(0) of class 0 (rows 2, 3), of class 1 rows 6, 7
    wide_set = prune_by_noise_rate(labels, wide, calibrate(confident_joint(labels, wide)[0], np.array([4, 4])))
    assert np.flatnonzero(wide_set).tolist() == [2, 3, 6, 7]
    found = find_label_issues(labels, sharp, size_from=wide)  # the default rule: one_model
    assert found.order.tolist() == [2, 6, 1, 3, 0]  # lowest p(label) first: 0.1, 0.2, 0.4, 0.45, 0.48
    # wide's size (4), sharp's ranking: rows 2, 6, 1, 3 (not wide's row 7, which sharp calls right)
    assert found.estimated == 4 and np.flatnonzero(found.flagged).tolist() == [1, 2, 3, 6]
    assert found.pairs() == [(0, 1, 3), (1, 0, 1)] and found.counted == 2
    assert find_label_issues(labels, sharp).estimated == 2  # no other model: sized by its own pair rule
    assert find_label_issues(labels, sharp, count=9).estimated == 5  # never more than the ranked list
    with pytest.raises(ValueError, match="size_from of shape"):
        find_label_issues(labels, sharp, size_from=wide[:4])
    with pytest.raises(ValueError, match="unknown flag"):
        find_label_issues(labels, sharp, flag="both")


def test_class_pair_estimate_points_at_the_pair_that_was_flipped():
    X, y = blobs(seed=1)
    noisy, flipped = flip(y, 0.04, 3, seed=1, only=(0, 2))  # 24 images of class 0 labelled 2
    found = find_label_issues(noisy, oof(X, noisy))
    pairs = found.pairs()
    given, true, count = pairs[0]
    # one-directional noise is the hard case: the flipped images look exactly like class 0's own, so about half of
    # them fall under class 0's threshold (its mean); confident learning under-counts here, by design, never over
    assert (given, true) == (2, 0) and len(flipped) / 2 <= count <= len(flipped)
    assert len(flipped) / 2 <= found.joint[2, 0] <= len(flipped)
    assert sum(n for *_, n in pairs) == found.estimated == int(found.flagged.sum())
    assert found.counted == int(found.joint.sum() - np.trace(found.joint)) >= found.estimated
    assert (found.joint.sum(axis=1) == np.bincount(noisy)).all()  # calibrated to the given label counts


def test_an_unflipped_separable_dataset_has_an_estimate_near_zero():
    X, y = blobs(spread=0.5, seed=2)
    found = find_label_issues(y, oof(X, y))
    assert found.estimated <= 2 and found.counted <= 2 and len(found.order) <= 2


def test_confident_joint_and_calibration_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array(
        [
            [0.9, 0.1],
            [0.8, 0.2],
            [0.2, 0.8],  # the third: labelled 0, confidently 1
            [0.1, 0.9],
            [0.3, 0.7],
            [0.4, 0.6],
        ]
    )
    t = confident_thresholds(labels, probs)
    np.testing.assert_allclose(t, [(0.9 + 0.8 + 0.2) / 3, (0.9 + 0.7 + 0.6) / 3])
    joint, guess = confident_joint(labels, probs)
    # rows 4 and 5 (p1 0.7, 0.6; p0 0.3, 0.4) are under both thresholds (0.633, 0.733): not counted
    assert guess.tolist() == [0, 0, 1, 1, -1, -1]
    assert joint.tolist() == [[2, 1], [0, 1]]  # [given, true]
    cal = calibrate(np.array([[5, 1, 1], [0, 3, 0], [1, 0, 0]]), np.array([10, 4, 3]))
    assert cal.sum(axis=1).tolist() == [10, 4, 3]  # each row adds up to its label count, in whole images
    assert cal[0].tolist() == [7, 2, 1]  # 7.14, 1.43, 1.43: the tie of remainders goes to the first
    assert cal[1].tolist() == [0, 4, 0] and cal[2].tolist() == [3, 0, 0]
    quality = label_quality(labels, probs, "normalized_margin")
    np.testing.assert_allclose(quality[2], (0.2 - 0.8 + 1) / 2)


def test_neighbour_vote_and_combination():
    X = np.array([[1, 0], [0.9, 0.1], [0.95, 0.05], [0, 1], [0.1, 0.9]], dtype=np.float32)
    index, sim = nearest_neighbours(X.copy(), k=2)
    assert index[0].tolist() == [2, 1] and index[3].tolist()[0] == 4 and (index != np.arange(5)[:, None]).all()
    assert (np.diff(sim, axis=1) <= 0).all()  # most similar first
    labels = np.array([0, 0, 1, 1, 1])  # row 2 sits among class 0 but is labelled 1
    vote = neighbour_probs(index, labels, 2, k=2)
    assert vote[2].tolist() == [1.0, 0.0] and vote[0].tolist() == [0.5, 0.5]
    mixed = combine([np.full((5, 2), 0.5), np.tile([0.9, 0.1], (5, 1))], vote, 0.5)
    np.testing.assert_allclose(mixed[2], [0.5 * 0.7 + 0.5 * 1.0, 0.5 * 0.3])


def test_agrees_with_cleanlab_on_the_same_probabilities():
    cleanlab = pytest.importorskip("cleanlab", reason="cleanlab is not installed (an optional comparison only)")
    from cleanlab.count import compute_confident_joint, num_label_issues
    from cleanlab.filter import find_label_issues as theirs

    X, y = blobs(spread=1.6, seed=3)  # overlapping: many rows above two thresholds
    noisy, _ = flip(y, 0.1, 3, seed=3)
    probs = oof(X, noisy)
    ours = find_label_issues(noisy, probs, flag="pair")
    joint = compute_confident_joint(noisy, probs, calibrate=True)
    # cleanlab sends a row above several thresholds to its overall argmax, the paper (and we) to the most
    # probable class above its threshold: the same class unless the overall argmax is under its own threshold
    assert np.abs(ours.joint - joint).max() <= 2, (ours.joint, joint, cleanlab.__version__)
    estimate = num_label_issues(noisy, probs, estimation_method="off_diagonal_calibrated")
    assert abs(ours.counted - estimate) <= 2
    mask = theirs(noisy, probs)
    assert (ours.flagged != mask).sum() <= 0.05 * max(1, mask.sum())
    # the default set is as large as cleanlab's on the model that sizes it
    assert abs(find_label_issues(noisy, probs, size_from=probs).estimated - mask.sum()) <= 0.05 * mask.sum()


def test_report_json_csv_markdown_and_html_carry_the_list(tmp_path):
    from test_report_html import image_run, load

    run, _, report = image_run(tmp_path)
    d, text, page = load(run)
    issues = d["label_issues"]
    assert issues[0]["path"] == "class0/img003.jpg"  # planted among class1's features
    assert issues[0]["label"] == "class0" and issues[0]["suggested"] == "class1" and issues[0]["score"] > 0.5
    assert [i["score"] for i in issues] == sorted((i["score"] for i in issues), reverse=True)
    assert d["label_issues_estimated"] >= 1
    assert {
        "label": "class0",
        "suggested": "class1",
        "count": next(
            p["count"] for p in d["label_issues_pairs"] if (p["label"], p["suggested"]) == ("class0", "class1")
        ),
    } in d["label_issues_pairs"]
    assert sum(p["count"] for p in d["label_issues_pairs"]) == d["label_issues_estimated"]
    judge = [r for r in report.leaderboard("log_loss") if r.proba is not None][0]  # the best member alone
    size = find_label_issues(report.data.y, judge.proba.mean(axis=0), flag="pair").estimated
    assert d["label_issues_estimated"] == min(size, len(issues)) >= 1  # sized by it, the first n of the list
    assert [i["within_estimate"] for i in issues] == [n < d["label_issues_estimated"] for n in range(len(issues))]
    assert d["label_issues_counted"] >= 1 and "prune by noise rate" in d["label_issues_method"]["estimate"]
    assert d["label_issues_method"]["members"] and d["label_issues_method"]["rank_by"] in (
        "self_confidence",
        "normalized_margin",
    )
    with open(run / "label_issues.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["path"], r["label"], r["suggested"], float(r["score"])) for r in rows] == [
        (i["path"], i["label"], i["suggested"], i["score"]) for i in issues
    ]
    assert [r["within_estimate"] for r in rows] == [str(int(i["within_estimate"])) for i in issues]
    assert rows[0]["rank"] == "1"
    cards = page.section("label-issues")
    assert [c["path"] for c in cards] == [i["path"] for i in issues][: len(cards)] and cards
    assert cards[0]["src"] and "suggested class1" in cards[0]["text"]
    assert page.text["label-issues-estimated"] == str(d["label_issues_estimated"])
    # a set to review, with what such a set was worth: not "are labelled wrong"
    html = (run / "report.html").read_text()
    assert "not a count of them" in html and "42 to 82 % of such a set were flips" in html
    assert "are labelled wrong" not in html
    assert "label-issue-pairs" in page.text and "class0" in page.text["label-issue-pairs"]
    assert "## Label issues" in (run / "report.md").read_text()
    # a few labelled images per class: the estimate says what it is worth there, in every place it is given
    per_class = len(report.data.paths) / len(report.classes)
    assert per_class < 20 and d["label_issues_caveat"] == (
        f"on {len(report.data.paths)} labelled images (about {per_class:.0f} per class) a classifier's own mistakes "
        "look like label errors: read the list as images to look at, not the estimate as a count (it was measured "
        "on 245 and 2,569 images (hymenoptera and flowers, about 120 and 510 per class): benchmarks/label_noise.py)"
    )
    assert summary_lines(d)[-1] == f"  note: {d['label_issues_caveat']}"
    assert f"note: {d['label_issues_caveat']}" in (run / "report.md").read_text()
    assert d["label_issues_caveat"] in (run / "report.html").read_text().replace("&#39;", "'")
    assert summary_lines({**d, "label_issues_caveat": None})[-1] != summary_lines(d)[-1]
    assert summary_lines({**d, "label_issues_estimated": 0})[0] == (
        "no image to review first: confident learning estimates no wrong label (out of fold); "
        f"{len(d['label_issues'])} image(s) whose suggested class is not their label"
    )  # not "0 image(s) to review first (the first 0 of the list)"


@pytest.mark.integration  # two extractions (a few seconds idle, minutes on a loaded machine)
def test_relabel_applies_accepted_corrections_to_a_manifest_and_extract_keeps_the_vectors(tmp_path):
    import json

    from click.testing import CliRunner
    from helpers import write_tree

    import cli
    from embedder.cache.hdf5 import CacheReader

    root = tmp_path / "photos"
    paths = write_tree(root, classes=("cats", "dogs"), per_class=2)
    manifest = root / "photos.csv"
    manifest.write_text("path,label,group\n" + "".join(f"./{p},{p.split('/')[0]},g{i}\n" for i, p in enumerate(paths)))
    fast = ["-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64", "--batch-size", "4", "--workers", "0"]
    runner = CliRunner()
    cache = tmp_path / "c.h5"
    assert runner.invoke(cli.main, ["extract", str(manifest), "--cache", str(cache), "-q", *fast]).exit_code == 0
    before = CacheReader(str(cache)).features(CacheReader(str(cache)).layers[0]).copy()
    # label_issues.csv as cv writes it, less a row not accepted; one row stale (its label changed since)
    corrections = tmp_path / "label_issues.csv"
    corrections.write_text(
        f"rank,path,label,suggested,score,within_estimate\n1,{paths[0]},cats,dogs,0.9,1\n3,{paths[3]},cats,owls,0.5,0\n"
    )
    out = tmp_path / "fixed.csv"
    result = runner.invoke(cli.main, ["relabel", str(manifest), str(corrections), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "manifest": str(out),
        "rows": 4,
        "changed": 1,
        "stale": 1,
        "unchanged": 0,
        "left_empty": 0,
    }
    lines = out.read_text().splitlines()
    assert lines[0] == "path,label,group" and lines[1] == f"./{paths[0]},dogs,g0"  # the rest as they were
    assert lines[2:] == manifest.read_text().splitlines()[2:]
    # the corrected manifest in place of the old one: extract changes the labels and embeds nothing again
    manifest.write_text(out.read_text())
    again = runner.invoke(cli.main, ["extract", str(manifest), "--cache", str(cache), "--json", *fast])
    assert again.exit_code == 0 and json.loads(again.stdout)["embedded"] == 0
    reader = CacheReader(str(cache))
    assert reader.labels[list(reader.paths).index(paths[0])] == "dogs"
    np.testing.assert_array_equal(reader.features(reader.layers[0]), before)
    bad = runner.invoke(cli.main, ["relabel", str(manifest), str(corrections), "-o", str(manifest)])
    assert bad.exit_code != 0 and "the manifest itself" in bad.output and "Traceback" not in bad.output
    corrections.write_text("path,new_label\nelsewhere/x.jpg,dogs\n")
    bad = runner.invoke(cli.main, ["relabel", str(manifest), str(corrections), "-o", str(out)])
    assert bad.exit_code != 0 and "1 path(s)" in bad.output and "elsewhere/x.jpg" in bad.output
