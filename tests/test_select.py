"""featurebank select: which unlabeled images to label next (seeded blobs in generated caches)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import SYNTHETIC_SETTINGS

import cli
from classifiers.select_rules import (
    COLD,
    DEFAULT_WARM,
    MARGIN_FROM,
    choose,
    coverage_space,
    normalized,
    prepared,
    probe_proba,
)
from classifiers.selection import select
from embedder.cache.hdf5 import CacheWriter
from embedder.kernel.errors import FileProblem, InvalidValue

EMPTY = {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")}


def write_cache(path, X, labels=None, groups=None, root="/nowhere/images"):
    """A cache of the rows ``X`` named ``img000.jpg``... with ``labels`` ("" for unlabeled) and ``groups``."""
    n = len(X)
    paths = [f"img{i:03d}.jpg" for i in range(n)]
    rows = {
        "path": paths,
        "label": list(labels) if labels is not None else [""] * n,
        "group": list(groups) if groups is not None else [""] * n,
        "size": [100] * n,
        "mtime_ns": [1] * n,
        "digest": [f"{i:032x}" for i in range(n)],
    }
    feats = {"flatten": X.astype(np.float32), "layer3": X[:, :4].astype(np.float32)}
    with CacheWriter(str(path), SYNTHETIC_SETTINGS, f"flat:{root}", root, {"weights_file": None}) as w:
        w.write_batch(rows, feats, EMPTY)
        w.commit(list(zip(paths, rows["label"], rows["group"])), {})
    return str(path), paths


def blobs(k=4, per=15, dim=16, spread=8.0, noise=1.0, seed=0):
    """``k`` well separated Gaussian blobs: (X, blob of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, (k, dim))
    y = np.repeat(np.arange(k), per)
    return centres[y] + rng.normal(0, noise, (len(y), dim)), y


def two_overlapping(per=40, seed=1):
    """Two classes that overlap along the first axis: a boundary with rows on both sides."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], per)
    X = rng.normal(0, 1, (2 * per, 8))
    X[:, 0] += np.where(y == 0, -1.2, 1.2)
    X[:, 1] += 6  # away from the origin, so that centring matters less than the classes
    return X, y


def run(*args):
    return CliRunner().invoke(cli.main, ["select", *map(str, args)])


@pytest.mark.parametrize("rule", ["auto", *COLD])
def test_cold_start_picks_one_image_of_every_blob(tmp_path, rule):
    X, blob = blobs()
    cache, paths = write_cache(tmp_path / "flat.h5", X)
    picked = select(cache, budget=4, strategy=rule)
    assert picked.stage == "cold start" and picked.rule == ("kmeans" if rule == "auto" else rule)
    assert sorted(blob[paths.index(p.path)] for p in picked.picks) == [0, 1, 2, 3]


def test_random_is_the_baseline_and_differs_by_seed(tmp_path):
    X, _ = blobs()
    cache, _ = write_cache(tmp_path / "flat.h5", X)
    a, b = (select(cache, budget=5, strategy="random", seed=s) for s in (0, 1))
    assert [p.path for p in a.picks] != [p.path for p in b.picks]
    assert [p.path for p in select(cache, budget=5, strategy="random", seed=0).picks] == [p.path for p in a.picks]


def test_second_round_picks_near_the_decision_boundary(tmp_path):
    X, y = two_overlapping()
    rng = np.random.default_rng(0)
    known = np.full(len(y), "", dtype=object)
    for c in (0, 1):
        known[rng.choice(np.flatnonzero(y == c), MARGIN_FROM, replace=False)] = f"c{c}"
    cache, paths = write_cache(tmp_path / "half.h5", X, known)
    picked = select(cache, budget=6)
    assert picked.stage == "labelled" and picked.rule == DEFAULT_WARM
    assert not any("margins are not used yet" in note for note in picked.notes)
    S = prepared(X.copy())
    pool = np.flatnonzero(known == "")
    proba, _ = probe_proba(S, known, np.flatnonzero(known != ""), pool, ["c0", "c1"], 0)
    margin = np.abs(proba[:, 0] - proba[:, 1])
    mine = np.array([margin[list(pool).index(paths.index(p.path))] for p in picked.picks])
    assert np.median(mine) < np.median(margin), (mine, np.median(margin))
    # the score is what ranked each cluster: in the file's order, those without a label first
    fresh = [p.score for p in picked.picks if "a cluster of" in p.reason]
    assert fresh == sorted(fresh, reverse=True) and len(fresh) >= 2


def test_under_margin_from_labels_per_class_the_default_covers_what_the_labels_do_not(tmp_path):
    """With 1 labelled image of blobs 0 and 1 (of 4), the default's margins are not used: label spreading reaches
    neither blob 2 nor 3 (no neighbour edge joins the blobs), so those rows are a group of their own, first in line
    for the share that does not divide (4 picks over 3 groups: 2 for it, one a blob); each labelled class's share
    goes to its own blob, off its labelled image (the near-duplicate check off: every row of these tight blobs is
    within 0.95 cosine of its blob's others)."""
    X, blob = blobs()
    known = np.full(len(blob), "", dtype=object)
    known[np.flatnonzero(blob == 0)[0]], known[np.flatnonzero(blob == 1)[0]] = "a", "b"
    cache, paths = write_cache(tmp_path / "two.h5", X, known)
    picked = select(cache, budget=4, duplicate_cosine=1.0)
    assert picked.rule == DEFAULT_WARM and picked.stage == "labelled"
    assert any(
        "1.0 labelled images per class, under 5: the probe's margins are not used yet" in n for n in picked.notes
    )
    where = [int(blob[paths.index(p.path)]) for p in picked.picks]
    assert sorted(where) == [0, 1, 2, 3]
    assert all(p.path not in (paths[0], paths[15]) for p in picked.picks)  # the labelled images are not picked
    unreached = [w for w, p in zip(where, picked.picks) if p.reason.endswith("that no label reaches")]
    assert sorted(unreached) == [2, 3]
    assert [w for w, p in zip(where, picked.picks) if p.reason.endswith("that label spreading calls a")] == [0]


def test_under_margin_from_labels_per_class_a_small_class_gets_its_share(tmp_path):
    """Two classes along two segments, 60 images of one (5 times as long) and 12 of the other, 1 labelled at one end
    of each: coverage of the whole pool puts every pick on the long one; the default splits the budget equally over
    the classes label spreading finds, 2 and 2 (the near-duplicate check off: the short segment's images are all
    within 0.95 cosine of each other once centred)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], [60, 12])
    X = rng.normal(0, 0.3, (72, 16))
    X[:60, 0] += np.linspace(0, 30, 60)
    X[60:, 1] += np.linspace(0, 6, 12)
    X[60:, 2] += 20
    X[:, 3] += 10
    known = np.full(len(y), "", dtype=object)
    known[0], known[60] = "long", "short"
    cache, paths = write_cache(tmp_path / "unequal.h5", X, known)
    picked = select(cache, budget=4, duplicate_cosine=1.0)
    assert sorted(int(y[paths.index(p.path)]) for p in picked.picks) == [0, 0, 1, 1]
    plain = select(cache, budget=4, strategy="kmeans", duplicate_cosine=1.0)
    assert [int(y[paths.index(p.path)]) for p in plain.picks] == [0, 0, 0, 0]


def test_the_coverage_space_keeps_the_geometry_of_the_main_directions():
    """Rows of rank 3 in 200 dimensions: the projection on 64 principal directions holds all their variance, so its
    cosines are those of the centred rows; with 60 strong directions and 40 faint ones, the faint ones are (nearly) dropped."""
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.normal(size=(200, 3)))[0]
    X = (rng.normal(size=(80, 3)) * [5, 3, 1]) @ Q.T + 2.0
    S = coverage_space(X.astype(np.float32))
    centred = normalized((X - X.mean(axis=0)).astype(np.float32))
    assert S.shape == (80, 64)
    np.testing.assert_allclose(np.linalg.norm(S, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(S @ S.T, centred @ centred.T, atol=1e-3)
    W = rng.normal(size=(300, 100)) * np.r_[np.full(60, 10.0), np.full(40, 0.01)]
    low = coverage_space(W.astype(np.float32))
    strong = normalized((W[:, :60] - W[:, :60].mean(axis=0)).astype(np.float32))
    assert np.abs(low @ low.T - strong @ strong.T).max() < 1e-3
    small = np.ones((5, 16), dtype=np.float32)
    assert coverage_space(small) is small


def test_one_labelled_image_per_class_uses_a_fixed_c_and_says_so(tmp_path):
    X, y = two_overlapping()
    known = np.full(len(y), "", dtype=object)
    known[0], known[-1] = "c0", "c1"
    cache, _ = write_cache(tmp_path / "one.h5", X, known)
    picked = select(cache, budget=3, strategy="margin")
    assert picked.stage == "labelled" and len(picked.picks) == 3
    assert any("C fixed at 0.1 (a class has a single labelled image" in note for note in picked.notes)


def test_labels_csv_and_cache_labels_give_the_same_picks(tmp_path):
    X, y = two_overlapping()
    known = np.full(len(y), "", dtype=object)
    known[[0, 1, 2, 40, 41, 42]] = ["c0"] * 3 + ["c1"] * 3
    in_cache, paths = write_cache(tmp_path / "labelled.h5", X, known)
    flat, _ = write_cache(tmp_path / "flat.h5", X)
    labels = tmp_path / "labelled.csv"
    labels.write_text("path,label\n" + "".join(f"{paths[i]},{known[i]}\n" for i in np.flatnonzero(known != "")))
    a = select(in_cache, budget=5, seed=3)
    b = select(flat, budget=5, seed=3, labels=str(labels))
    assert [p.path for p in a.picks] == [p.path for p in b.picks]
    assert a.labelled == b.labelled == 6 and a.classes == b.classes == {"c0": 3, "c1": 3}


def test_exclude_is_honoured_from_a_manifest_and_a_list(tmp_path):
    X, _ = blobs()
    cache, paths = write_cache(tmp_path / "flat.h5", X)
    first = [p.path for p in select(cache, budget=4).picks]
    sent = tmp_path / "sent.csv"
    sent.write_text("path,label,reason,score\n" + "".join(f"{p},,x,1\n" for p in first[:2]))
    listed = tmp_path / "sent.txt"
    listed.write_text(f"# sent out\n{first[2]}\n")
    again = select(cache, budget=4, exclude=[str(sent), str(listed)])
    assert not set(first[:3]) & {p.path for p in again.picks}
    assert again.excluded == 3 and again.pool == len(paths) - 3
    into = tmp_path / "round 2" / "sent.csv"  # a folder not there yet is made for the manifest and its sheet
    select(cache, budget=2, out=str(into))
    assert into.read_text().startswith("path,label,reason,score\n") and into.with_suffix(".html").exists()
    torn = tmp_path / "torn.csv"  # a quote never closed: the paths after it would be one field, not excluded
    torn.write_text(f'path,label\n{first[0]},"x\n{first[1]},\n{first[2]},\n')
    with pytest.raises(FileProblem, match=r"torn\.csv line 2: not valid CSV \(a quote opened there is never closed\)"):
        select(cache, budget=4, exclude=[str(torn)])
    late = tmp_path / "late.csv"  # closed two lines later: the path between would be part of a label
    late.write_text(f'path,label\n{first[0]},"x\n{first[1]},\n{first[2]},"\n{first[3]},\n')
    with pytest.raises(
        FileProblem,
        match=r"late\.csv line 2: its label holds a line break \(a quote opened there and closed on line 4\?\)",
    ):
        select(cache, budget=4, exclude=[str(late)])


def test_a_later_round_says_to_keep_every_label_in_the_labels_csv_and_counts_the_labelled_exclusions(tmp_path):
    from classifiers.selection import select_text

    X, _ = blobs()
    cache, paths = write_cache(tmp_path / "flat.h5", X)
    first = select(cache, budget=4, out=str(tmp_path / "round1.csv"))
    said = select_text(first.to_dict())
    assert said[-1] == (
        f"next: fill in its label column, start the CSV of every label with it (cp {tmp_path / 'round1.csv'} "
        f"{tmp_path / 'labelled.csv'}), then featurebank select {cache} --budget N --labels {tmp_path / 'labelled.csv'} "
        "-o NEXT.csv (its rows left empty are not picked again)"
    )
    labels = tmp_path / "labelled.csv"
    labels.write_text("path,label\n" + "".join(f"{p.path},c{i % 2}\n" for i, p in enumerate(first.picks[:3])))
    again = select_text(select(cache, budget=4, out=str(tmp_path / "other round.csv")).to_dict())
    assert again[-1].startswith(  # a labelled.csv there already: joined, never replaced; paths quoted for the shell
        f"next: fill in its label column, add its rows to {labels} (tail -n +2 '{tmp_path / 'other round.csv'}' >> "
    )
    second = select(cache, budget=4, labels=str(labels), exclude=[str(tmp_path / "round1.csv")],
                    out=str(tmp_path / "round2.csv"))  # fmt: skip
    assert (second.excluded, second.excluded_labelled) == (1, 3)  # the one left empty; three labelled since
    said = select_text(second.to_dict())
    assert said[1].endswith(f"with {labels}), 1 excluded (3 more named by --exclude are labelled already)")
    assert said[-1] == (
        f"next: fill in its label column, add its rows to {labels} (path,label), then featurebank select {cache} "
        f"--budget N --labels {labels} -o NEXT.csv (its rows left empty are not picked again)"
    )
    (tmp_path / "all.csv").write_text((tmp_path / "round1.csv").read_text())  # a manifest's own columns
    said = select_text({**second.to_dict(), "labels": str(tmp_path / "all.csv")})
    assert f"(tail -n +2 {tmp_path / 'round2.csv'} >> {tmp_path / 'all.csv'})" in said[-1]


def test_groups_are_never_picked_twice_in_a_batch(tmp_path):
    X, blob = blobs(k=3, per=10)
    groups = [f"scene{i // 2}" for i in range(len(X))]  # pairs of neighbouring rows share a scene
    cache, paths = write_cache(tmp_path / "grouped.h5", X, groups=groups)
    for rule in ("kmeans", "random", "probcover"):
        picked = select(cache, budget=12, strategy=rule, duplicate_cosine=1.0)  # blobs this tight are near-duplicates
        scenes = [groups[paths.index(p.path)] for p in picked.picks]
        assert len(scenes) == 12 and len(set(scenes)) == 12, (rule, scenes)


def test_near_duplicates_are_not_picked_together(tmp_path):
    X = np.random.default_rng(0).normal(0, 1, (12, 16))
    X = np.concatenate([X, X + 1e-3])  # every image twice
    cache, _ = write_cache(tmp_path / "dups.h5", X)
    picked = select(cache, budget=12, strategy="random")
    S = prepared(X.copy())
    rows = [int(p.path[3:6]) for p in picked.picks]
    cos = S[rows] @ S[rows].T
    np.fill_diagonal(cos, 0)
    assert cos.max() <= 0.95 and picked.refused["duplicate"] > 0
    assert len({r % 12 for r in rows}) == 12  # one of each pair
    assert picked.refused["duplicate"] <= len(X) - 12  # rows passed over, each counted once, not each meeting


def test_csv_columns_order_and_line_ends_and_the_sheet_names_every_pick(tmp_path):
    X, _ = blobs()
    cache, paths = write_cache(tmp_path / "flat.h5", X)
    out = tmp_path / "TO_LABEL.csv"
    result = run(cache, "--budget", 5, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    raw = out.read_bytes()
    assert b"\r" not in raw and raw.startswith(b"path,label,reason,score\n")
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["path"] for r in rows] == [p["path"] for p in d["picks"]]
    assert all(r["path"] in paths and r["label"] == "" and r["reason"] for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert scores == [pytest.approx(p["score"], rel=1e-5) for p in d["picks"]]
    sheet = (tmp_path / "TO_LABEL.html").read_text()
    assert all(f'data-path="{r["path"]}"' in sheet for r in rows)
    assert "not reachable" in sheet  # the cache's images are under /nowhere: said, not failed
    assert "Fill in the label column of TO_LABEL.csv beside this page" in sheet  # the file it is the sheet of
    assert d["files"] == {"manifest": str(out), "sheet": str(tmp_path / "TO_LABEL.html")} and d["thumbnails"] == 0
    from classifiers.selection import select_text

    assert f"wrote {out} and {tmp_path / 'TO_LABEL.html'} (the picks; no thumbnails: the sheet says why)" in (
        "\n".join(select_text(d))
    )


def test_the_sheet_shows_thumbnails_when_the_images_are_there(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    X, _ = blobs(k=2, per=3)
    for i in range(len(X)):
        Image.new("RGB", (40, 30), (i * 30, 0, 0)).save(root / f"img{i:03d}.jpg")
    cache, _ = write_cache(tmp_path / "flat.h5", X, root=str(root))
    result = run(cache, "--budget", 2, "-o", tmp_path / "out" / "pick.csv")
    assert result.exit_code == 0, result.output
    sheet = (tmp_path / "out" / "pick.html").read_text()
    assert sheet.count('<img class="thumb" src="thumbs/') == 2 and "not reachable" not in sheet
    assert len(list((tmp_path / "out" / "thumbs").iterdir())) == 2
    assert "pick.html (the picks with thumbnails)" in result.output


def test_a_fully_labelled_cache_is_a_one_line_error(tmp_path):
    X, y = two_overlapping(per=5)
    cache, _ = write_cache(tmp_path / "all.h5", X, [f"c{c}" for c in y])
    result = run(cache, "--budget", 2, "-o", tmp_path / "x.csv")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: ") and "has no unlabeled images" in result.output
    assert "into a cache of their own (a flat folder, or --layout flat for class folders)" in result.output
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(
    "args, said",
    [
        (["--budget", 61], "--budget 61 is more than the 60 unlabeled images left to pick"),
        (["--budget", 2, "--strategy", "badge"], "--strategy badge needs labelled images of two classes or more"),
    ],
)
def test_bad_budgets_and_stages_are_one_line_errors(tmp_path, args, said):
    X, _ = blobs()
    cache, _ = write_cache(tmp_path / "flat.h5", X)
    result = run(cache, *args, "-o", tmp_path / "x.csv")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert said in result.output


def test_a_budget_below_one_is_a_usage_error_and_a_library_error(tmp_path):
    """The command line refuses it in the option's type (its range shown in --help); the Python function says it."""
    X, _ = blobs()
    cache, _ = write_cache(tmp_path / "flat.h5", X)
    result = run(cache, "--budget", 0, "-o", tmp_path / "x.csv")
    assert result.exit_code == 2 and "Invalid value for '--budget': 0 is not in the range x>=1" in result.output
    with pytest.raises(InvalidValue, match="--budget 0: give how many images to pick, 1 or more"):
        select(cache, budget=0)
    assert "[x>=1;" in CliRunner().invoke(cli.main, ["select", "--help"]).output


def test_a_budget_beyond_the_pool_after_exclude_is_an_error(tmp_path):
    X, _ = blobs(k=2, per=3)
    cache, paths = write_cache(tmp_path / "flat.h5", X)
    sent = tmp_path / "sent.txt"
    sent.write_text("\n".join(paths[:4]) + "\n")
    result = run(cache, "--budget", 3, "--exclude", sent, "-o", tmp_path / "x.csv")
    assert result.exit_code == 1 and "more than the 2 unlabeled images left to pick (4 excluded)" in result.output
    unknown = tmp_path / "other.txt"
    unknown.write_text("elsewhere/img.jpg\n")
    result = run(cache, "--budget", 1, "--exclude", unknown, "-o", tmp_path / "x.csv")
    assert result.exit_code == 1 and "other.txt line 1: 'elsewhere/img.jpg' is not in the cache" in result.output


def test_choose_on_arrays_never_picks_outside_the_pool():
    X, _ = blobs()
    S = prepared(X.copy())
    labels = np.full(len(X), "", dtype=object)
    pool = np.ones(len(X), dtype=bool)
    pool[::2] = False
    for rule in ("kmeans", "typiclust", "probcover", "random"):
        picked = choose(S, labels, pool, 6, rule, 0, duplicate_cosine=1.0)
        assert len(set(picked.rows)) == 6 and pool[picked.rows].all(), rule


def test_select_has_help_with_an_example():
    result = CliRunner().invoke(cli.main, ["select", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "featurebank select" in result.output
    assert "--budget N" in result.output and "--labels LABELLED.csv" in result.output


def test_an_interrupt_while_the_sheet_is_written_says_the_manifest_was(tmp_path, monkeypatch):
    import classifiers.selectsheet

    X, _ = blobs()
    cache, _ = write_cache(tmp_path / "flat.h5", X)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifiers.selectsheet, "write_sheet", stop)
    result = run(cache, "--budget", "3", "-o", tmp_path / "r.csv")
    assert result.exit_code == 130
    assert f"Interrupted: the manifest {tmp_path / 'r.csv'} was written, its contact sheet not" in result.output
    assert (tmp_path / "r.csv").exists() and not (tmp_path / "r.html").exists()
    monkeypatch.undo()
    (tmp_path / "r.csv").unlink()
    monkeypatch.setattr("classifiers.select_rules.choose", stop)
    result = run(cache, "--budget", "3", "-o", tmp_path / "r.csv")
    assert result.exit_code == 130 and "Interrupted: no manifest was written" in result.output


def test_images_the_labels_csv_names_with_an_empty_label_are_not_picked_again(tmp_path):
    from classifiers.selection import select_text

    X, _ = blobs()
    cache, paths = write_cache(tmp_path / "flat.h5", X)
    first = select(cache, budget=4, out=str(tmp_path / "round1.csv"))
    labels = tmp_path / "labelled.csv"
    labels.write_text(
        "path,label\n" + "".join(f"{p.path},{'c0' if i < 2 else ''}\n" for i, p in enumerate(first.picks))
    )
    again = select(cache, budget=4, labels=str(labels), out=str(tmp_path / "round2.csv"))
    assert not {p.path for p in again.picks} & {p.path for p in first.picks}
    assert again.excluded == 2 and again.pool == len(paths) - 4
    assert f"2 image(s) of {labels} have an empty label: left out as sent for labelling already" in again.notes[-1]
    said = select_text(again.to_dict())
    assert said[-1].startswith(f"next: fill in its label column, add its rows to {labels} (path,label), then ")


def test_a_row_passed_over_is_counted_once_however_often_a_rule_meets_it():
    from classifiers.select_rules import Batch, Picked

    X = prepared(np.random.default_rng(0).normal(0, 1, (6, 4)))
    picked = Picked()
    batch = Batch(X, 3, np.array(["a", "a", "b", "b", "c", "c"], dtype=object), 1.0, [], picked)
    batch.take(0, "first", 1.0)
    assert [batch.allowed(1) for _ in range(5)] == [False] * 5  # row 0's group, met five times
    assert batch.first_allowed([1, 1, 2]) == 2
    assert picked.refused == {"group": 1, "duplicate": 0}


def test_an_html_path_for_the_manifest_is_one_line(tmp_path):
    X, _ = blobs()
    cache, _ = write_cache(tmp_path / "flat.h5", X)
    result = run(cache, "--budget", "2", "-o", tmp_path / "picks.html")
    assert (
        result.exit_code == 1
        and "give the manifest's .csv path; its contact sheet (.html) goes beside it" in result.output
    )
    assert not (tmp_path / "picks.html").exists() and not (tmp_path / "picks.html.html").exists()
