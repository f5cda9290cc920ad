"""Bad input on the fine-tuning side (issue 32): the trunk store of ``--augment views`` (files under CACHE/trunk/)
validated when it is opened, a full disk and Ctrl-C while the views are written, what an interrupted run says it
kept, the views pass timed on its own line, ``--augment views`` as the default where it applies, and the best row
of a cv run trained by name (``train --from``) and compared with fine-tuning (``finetune --compare``)."""

from __future__ import annotations

import csv
import errno
import json
import os
import pathlib
import re

import numpy as np
import pytest
from helpers import FAST, finishes, write_tree

from embedder.kernel.errors import FeaturebankError
from workflows.finetune.trunk import TrunkStore

SETTINGS = {"backbone": "resnet18", "weights": "w", "precision": "fp32", "preprocessing": {}, "cut": "layer4"}
ROW = (4, 2, 2)
TINY = dict(FAST, val_split=0.25)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))


# -- the trunk store, validated when opened ------------------------------------------------------------------
def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *ROW)).astype(np.float16)


def _store(root, row_shape=ROW) -> TrunkStore:
    return TrunkStore(str(root / "trunk"), SETTINGS, row_shape=row_shape)


def _part_of(store: TrunkStore, digest: str) -> str:
    """The base path (without .json/.npy) of the part that holds ``digest``'s center."""
    for name in os.listdir(store.parts):
        if name.endswith(".json"):
            with open(os.path.join(store.parts, name), encoding="utf-8") as fh:
                if [digest, "center"] in json.load(fh):
                    return os.path.join(store.parts, name[:-5])
    raise AssertionError(digest)


def _fifo(path: str) -> None:
    os.unlink(path)
    os.mkfifo(path)


DAMAGE = {
    "an index that is a dict": (
        lambda base: pathlib.Path(base + ".json").write_text(json.dumps({"c": "center", "d": "center"})),
        "its index is not a list of [digest, view] pairs",
    ),
    "an index with more keys than rows": (
        lambda base: pathlib.Path(base + ".json").write_text(
            json.dumps([["c", "center"], ["d", "center"], ["e", "center"]])
        ),
        "its index lists 3 rows and its .npy holds 2",
    ),
    "an index whose keys have extra items": (
        lambda base: pathlib.Path(base + ".json").write_text(json.dumps([["c", "center", "x"], ["d", "center", 1]])),
        "its index is not a list of [digest, view] pairs",
    ),
    "an index nested 100,000 deep": (
        lambda base: pathlib.Path(base + ".json").write_text("[" * 100_000 + "]" * 100_000),
        "its index is not readable JSON",
    ),
    "rows of another shape": (
        lambda base: np.save(base + ".npy", np.zeros((2, 3, 2, 2), np.float16)),
        "rows of shape (3, 2, 2), not (4, 2, 2)",
    ),
    "rows of another type": (
        lambda base: np.save(base + ".npy", np.zeros((2, *ROW), np.float32)),
        "rows of float32, not float16",
    ),
    "a row holding NaN": (
        lambda base: np.save(base + ".npy", np.where(np.arange(16).reshape(1, *ROW) == 5, np.nan, _rows(2, 1))),
        "a row that is not finite",
    ),
    "an .npy that is not an array": (
        lambda base: pathlib.Path(base + ".npy").write_bytes(b"junk" * 10),
        "its .npy is not readable",
    ),
    "an .npy replaced by a FIFO": (lambda base: _fifo(base + ".npy"), "its .npy is not a regular file (a FIFO)"),
    "an index replaced by a FIFO": (lambda base: _fifo(base + ".json"), "its index is not a regular file (a FIFO)"),
    "an .npy that is gone": (lambda base: os.unlink(base + ".npy"), "its .npy cannot be opened (No such file"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_part_of_the_trunk_store_is_set_aside_with_its_reason_and_never_read(tmp_path, case):
    """Opening the store checks every part (index schema, rows' type and shape, finite rows, regular files opened
    without waiting): a bad part is set aside (its index renamed to .rejected, so it is not read again) and its
    images are computed again; the good parts are kept as they are."""
    store = _store(tmp_path)
    store.write([("a", "center"), ("b", "center")], _rows(2))
    store.write([("c", "center"), ("d", "center")], _rows(2, 1))
    damage, reason = DAMAGE[case]
    base = _part_of(store, "c")
    damage(base)
    again = finishes(lambda: _store(tmp_path))
    assert ("a", "center") in again and ("b", "center") in again
    assert ("c", "center") not in again and ("d", "center") not in again
    assert len(again.rejected) == 1 and again.rejected[0]["part"] == os.path.basename(base)
    assert reason in again.rejected[0]["reason"], again.rejected[0]
    np.testing.assert_array_equal(again.gather(again.locate([("a", "center"), ("b", "center")])), _rows(2))
    assert os.path.exists(base + ".json.rejected") and not os.path.exists(base + ".json")
    third = finishes(lambda: _store(tmp_path))  # set aside once: not read again
    assert third.rejected == [] and sorted(third.index) == [("a", "center"), ("b", "center")]
    third.write([("c", "center"), ("d", "center")], _rows(2, 1))  # computed again, read again
    assert sorted(_store(tmp_path).index) == [(d, "center") for d in "abcd"]


def test_the_parts_are_checked_against_the_trunks_own_shape(tmp_path):
    """Without an expected shape (a store opened to be read), the parts must agree with the first; with the
    trunk's shape (a run), a part of another is set aside even when it is the only one."""
    store = _store(tmp_path, row_shape=None)
    store.write([("a", "center")], _rows(1))
    assert _store(tmp_path, row_shape=None).shape == ROW
    other = _store(tmp_path, row_shape=(8, 1, 1))
    assert other.index == {} and "rows of shape (4, 2, 2), not (8, 1, 1)" in other.rejected[0]["reason"]


def test_a_store_folder_that_is_a_file_is_one_line(tmp_path):
    root = tmp_path / "trunk"
    root.mkdir()
    store = TrunkStore(str(root), SETTINGS, row_shape=ROW)
    parts = store.parts
    os.rmdir(parts)
    open(parts, "w").close()
    with pytest.raises(FeaturebankError, match=r"cannot use the trunk store .*parts"):
        TrunkStore(str(root), SETTINGS, row_shape=ROW)


# -- a full disk and Ctrl-C while the views are written -------------------------------------------------------
def _disk_full_after(monkeypatch, parts: int) -> None:
    """``os.write`` raises ENOSPC on the trunk store's temporary .npy files once ``parts`` were written whole."""
    real = os.write
    seen: list[str] = []

    def full(fd, data):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if "/trunk/" in target and ".npy." in target and target.endswith(".tmp"):
            if target not in seen:
                seen.append(target)
            if len(seen) > parts:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)


def _tmp_files(folder) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def test_a_full_disk_while_the_views_are_written_is_one_line_and_a_rerun_continues(tmp_path, monkeypatch):
    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=4)  # 12 images: the center pass writes 3 parts of 4
    _disk_full_after(monkeypatch, 2)
    with pytest.raises(FeaturebankError) as caught:
        finetune(str(root), str(tmp_path / "run"), augment="views", epochs=1, **TINY)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(
        f"cannot write the frozen trunk's rows to {tmp_path}/cache/trunk/"
    )
    assert "No space left on device; every batch written before it is kept: free some space" in message
    assert message.endswith("then run the same command again to continue (with --resume once an epoch is saved)")
    assert _tmp_files(tmp_path) == [] and len(list((tmp_path / "cache" / "trunk").glob("*/parts/*.json"))) == 2
    monkeypatch.undo()
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    finetune(str(root), str(tmp_path / "run"), augment="views", epochs=1, **TINY)
    info = json.loads((tmp_path / "run" / "views.json").read_text())
    assert info["phases"]["center"]["computed_images"] == 4  # the 8 centers written before the disk filled: kept


def test_the_trunk_rows_that_do_not_fit_float16_or_are_not_finite_are_never_written(tmp_path):
    import torch

    from embedder.kernel.preprocess import Preprocessing
    from workflows.finetune.trunk import trunk_rows

    prep = Preprocessing(resize=8, crop=8)
    images = torch.zeros((2, 1, 3, 8, 8), dtype=torch.uint8)
    cpu, none = torch.device("cpu"), torch.autocast("cpu", enabled=False)
    for bad in (lambda x: x.mean((1, 2, 3)) * 0 + 1e6, lambda x: x.mean((1, 2, 3)) * float("nan")):
        with pytest.raises(FeaturebankError, match="does not fit in float16"):
            trunk_rows(bad, images, prep, cpu, none, 4)


# -- what an interrupted run says it kept ---------------------------------------------------------------------
def _cli(args):
    from click.testing import CliRunner

    import cli

    return CliRunner().invoke(cli.main, args)


def _finetune_args(root, out, *more):
    return ["finetune", str(root), "-o", str(out), "-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64",
            "--workers", "0", "--batch-size", "4", "--val-split", "0.25", *more]  # fmt: skip


def test_ctrl_c_before_the_first_epoch_says_what_is_true(tmp_path, monkeypatch):
    from workflows.finetune import cached_loop

    root = tmp_path / "images"
    write_tree(root, per_class=4)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cached_loop, "fill", interrupted)  # in the views pass, after the center pass
    done = _cli(_finetune_args(root, tmp_path / "run", "--augment", "views", "--epochs", "1"))
    assert done.exit_code == 130, done.output
    line = done.output.strip().splitlines()[-1]
    assert line.startswith("Interrupted: no epoch had finished, so") and "last.pt" in line
    assert "is saved" not in line and "--resume" not in line and not (tmp_path / "run" / "last.pt").exists()
    assert f"the frozen trunk's rows computed so far are kept in {tmp_path}/cache/trunk" in line
    assert line.endswith("run the same command again to continue from them.")


def test_ctrl_c_after_an_epoch_names_the_saved_epoch(tmp_path, monkeypatch):
    from workflows.finetune import report

    root = tmp_path / "images"
    write_tree(root, per_class=4)

    def interrupted(epoch, row):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "epoch_text", interrupted)  # right after epoch 1 was saved
    done = _cli(_finetune_args(root, tmp_path / "run", "--augment", "pixels", "--epochs", "2"))
    assert done.exit_code == 130 and (tmp_path / "run" / "last.pt").exists()
    assert done.output.strip().splitlines()[-1] == (
        f"Interrupted: epoch 1 is saved ({tmp_path / 'run' / 'last.pt'}); run the same command with --resume to "
        "continue."
    )


# -- the views pass on its own line, each epoch's time its own ------------------------------------------------
def test_the_views_pass_has_its_own_line_and_the_epoch_line_its_own_time(tmp_path, monkeypatch):
    import time

    from workflows.finetune import cached_loop

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    real = cached_loop.fill

    def slow(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(cached_loop, "fill", slow)  # twice: the training images' views, the validation centers
    done = _cli(_finetune_args(root, tmp_path / "run", "--augment", "views", "--views", "center,flip", "--epochs", "1"))
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    views = next(x for x in lines if x.startswith("views pass:"))
    epoch = next(x for x in lines if x.startswith("epoch 1:"))
    assert lines.index(views) < lines.index(epoch)
    assert float(re.search(r"in ([\d.]+) s", views).group(1)) >= 1.2
    assert "9 training images x 2 views, 3 validation centers" in views
    log = json.loads((tmp_path / "run" / "log.json").read_text())  # "seconds": the run's total so far
    own = log[1]["seconds"] - log[0]["seconds"]  # epoch 1 alone; epoch 0's total holds the pass
    assert log[0]["seconds"] >= 1.2 and float(re.search(r"\(([\d.]+) s\)$", epoch).group(1)) == pytest.approx(
        own, abs=0.11
    )


# -- --augment views is the default where it applies ----------------------------------------------------------
def test_views_is_the_default_where_the_trunk_fits_float16(tmp_path):
    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    notes: list[str] = []
    result = finetune(str(root), str(tmp_path / "run"), epochs=1, say=notes.append, **TINY)
    assert result.config["augment"] == "views" and result.config["views"] == "center,flip,crops:2"
    assert (tmp_path / "run" / "views.json").exists() and not any(x.startswith("note:") for x in notes)


@pytest.mark.parametrize(
    "backbone,options,why",
    [
        ("mobilenet_v2", {}, "its frozen trunk's output does not fit in float16"),
        ("resnet18", {"unfreeze": "all"}, "with --unfreeze all there is no frozen trunk"),
    ],
)
def test_the_default_falls_back_to_pixels_with_a_note_that_says_why(tmp_path, backbone, options, why):
    """A random MobileNetV2's activations at 64 px are around 1e-12, below float16: the views cannot be stored."""
    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    notes: list[str] = []
    result = finetune(
        str(root), str(tmp_path / "run"), epochs=1, say=notes.append, **{**TINY, "backbone": backbone, **options}
    )
    assert result.config["augment"] == "flip" and "views" not in result.config
    assert not (tmp_path / "run" / "views.json").exists()
    assert len(notes) == 1 and notes[0].startswith("note: training on pixels (--augment pixels), not --augment views:")
    assert why in notes[0] and "\n" not in notes[0]


def test_explicit_views_that_do_not_fit_float16_are_still_refused(tmp_path):
    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=2)
    with pytest.raises(FeaturebankError, match="does not fit in float16.*use --augment pixels"):
        finetune(str(root), str(tmp_path / "run"), epochs=1, augment="views", **{**TINY, "backbone": "mobilenet_v2"})


def test_resume_keeps_the_augmentation_the_run_was_started_with(tmp_path):
    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=4)

    def interrupt(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(str(root), str(tmp_path / "run"), epochs=2, augment="pixels", on_epoch_end=interrupt, **TINY)
    resumed = finetune(str(root), str(tmp_path / "run"), epochs=2, resume=True, **TINY)  # the default: auto
    assert resumed.config["augment"] == "flip" and len(resumed.history) == 3


# -- the best cv row, by name: train --from ---------------------------------------------------------------------
@pytest.fixture
def cv_run(tmp_path):
    """A synthetic cache and a cv --out folder of it whose best row is not train's default (logreg)."""
    from helpers import synthetic_cache

    cache = tmp_path / "c.h5"
    synthetic_cache(cache, counts=(10, 10, 10))
    done = _cli(["cv", str(cache), "-c", "knn:n_neighbors=3", "-l", "flatten,layer3", "--folds", "3", "-o",
                 str(tmp_path / "cv"), "-q"])  # fmt: skip
    assert done.exit_code == 0, done.output
    return cache, tmp_path / "cv", json.loads((tmp_path / "cv" / "report.json").read_text())["best"]


def test_train_from_a_cv_run_trains_its_best_row(cv_run, tmp_path):
    from classifiers.bundle import load_bundle

    cache, run, best = cv_run
    done = _cli(["train", str(cache), "--from", str(run), "-o", str(tmp_path / "m.fbmodel"), "--json"])
    assert done.exit_code == 0, done.output
    assert "note: " not in done.output  # chosen on these very images
    from helpers import synthetic_cache

    other = tmp_path / "other" / "c.h5"  # the same settings, other images: trained, with a note that says so
    other.parent.mkdir()
    synthetic_cache(other, counts=(10, 10, 10), seed=3)
    import h5py

    with h5py.File(other, "r+") as f:
        f.attrs["source"] = "classes:/somewhere/else"
    elsewhere = _cli(["train", str(other), "--from", str(run), "-o", str(tmp_path / "o.fbmodel")])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert f"note: --from {run}: its best row was chosen on {cache} (classes:/synthetic), not on these images " in (
        elsewhere.output
    )
    model = load_bundle(str(tmp_path / "m.fbmodel"))
    assert (model.classifier, model.layer) == (best["classifier"], best["layer"]) and best["classifier"].startswith(
        "knn"
    )
    for flags in (["-c", "rbf-svm"], ["-l", "flatten"], ["--unlabeled-rule", "always"], ["--unlabeled-mode", "spread"]):
        both = _cli(["train", str(cache), "--from", str(run), *flags, "-o", str(tmp_path / "x.fbmodel")])
        said = " ".join(both.output.split())  # click wraps its usage errors
        assert (
            both.exit_code == 2
            and (
                "--from takes the classifier, the layer and how the unlabeled rows joined from the run: leave out "
                f"{flags[0]}"
            )
            in said
        )
        assert not (tmp_path / "x.fbmodel").exists()


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda d: d["caches"][0]["settings"].update(backbone="resnet50"), "made with other settings than"),
        (lambda d: d["best"].update(layer="layer9"), "its best row is on layer layer9, which"),
        (lambda d: d.pop("best"), "lacks its best row"),
        (lambda d: d["best"].update(classifier="no-such"), "is not a zoo spec"),
        (lambda d: d.update(format="something else"), "is not a cross-validation run folder"),
        (
            lambda d: (d["best"].update(classifier=d["best"]["classifier"] + " +unlabeled"), d.update(unlabeled="x")),
            "'unlabeled' is not what cv writes",
        ),
    ],
)
def test_train_from_a_run_that_does_not_match_is_one_line(cv_run, tmp_path, edit, says):
    cache, run, _ = cv_run
    d = json.loads((run / "report.json").read_text())
    edit(d)
    (run / "report.json").write_text(json.dumps(d))
    done = _cli(["train", str(cache), "--from", str(run), "-o", str(tmp_path / "m.fbmodel")])
    assert done.exit_code == 1 and done.output.startswith("Error: ") and done.output.count("\n") == 1, done.output
    assert says in done.output and not (tmp_path / "m.fbmodel").exists()


def test_train_from_a_run_whose_best_row_fit_the_unlabeled_rows_takes_them_the_same_way(cv_run, monkeypatch):
    """cv --unlabeled names such a row "<spec> +unlabeled": train --from fits that spec with --unlabeled, in the
    run's way (report.json's unlabeled.mode), not a one-line refusal."""
    import classifiers.bundle
    from classifiers.from_run import best_row, train_best

    cache, run, best = cv_run
    d = json.loads((run / "report.json").read_text())
    d["best"]["classifier"] += " +unlabeled"
    d["unlabeled"] = {"mode": "self-train"}
    (run / "report.json").write_text(json.dumps(d))
    row = best_row(str(run))
    assert (row.classifier, row.unlabeled) == (best["classifier"], "self-train")
    assert row.text() == f"{best['classifier']} +unlabeled on {best['layer']}"
    seen = []
    monkeypatch.setattr(classifiers.bundle, "train", lambda reader, o: seen.append(o) or "bundle")
    assert train_best(str(cache), str(run))[0] == "bundle"
    o = seen[0]
    assert (o.classifier, o.layer, o.unlabeled, o.unlabeled_mode) == (best["classifier"], best["layer"], True,
                                                                      "self-train")  # fmt: skip


def test_train_from_a_folder_without_a_report_is_one_line(cv_run, tmp_path):
    cache, _, _ = cv_run
    (tmp_path / "empty").mkdir()
    done = _cli(["train", str(cache), "--from", str(tmp_path / "empty"), "-o", str(tmp_path / "m.fbmodel")])
    assert done.exit_code == 1 and "has no report.json" in done.output and done.output.count("\n") == 1


# -- finetune --compare: the best cv row beside the fine-tuned network ------------------------------------------
def test_finetune_compares_with_the_best_row_of_a_cv_run(tmp_path):
    """A cv run on the extraction of the same images (same backbone, weights, penultimate layer): its best row
    (not logreg) is fit on the same training rows as the probe and scored on the same validation images."""
    from workflows.finetune import finetune

    root, test = tmp_path / "images", tmp_path / "test"
    write_tree(root, per_class=4)
    write_tree(test, per_class=2, start=50)
    everything = tmp_path / "all.csv"  # cv's cache holds the --test images too: its best row was chosen on them
    everything.write_text(
        "path,label\n"
        + "".join(f"{p},{p.parent.name}\n" for p in sorted(root.rglob("*.*")) + sorted(test.rglob("*.*")))
    )
    args = ["extract", str(everything), "--cache", str(tmp_path / "c.h5"), "-b", "resnet18", "-w", "none", "--resize",
            "72", "--crop", "64", "--workers", "0", "--engine", "torch", "-q"]  # fmt: skip
    assert _cli(args).exit_code == 0
    cv = _cli(["cv", str(tmp_path / "c.h5"), "-c", "knn:n_neighbors=3,lda", "--folds", "2", "-o",
               str(tmp_path / "cv"), "-q"])  # fmt: skip
    assert cv.exit_code == 0, cv.output
    best = json.loads((tmp_path / "cv" / "report.json").read_text())["best"]
    result = finetune(
        str(root),
        str(tmp_path / "run"),
        epochs=1,
        augment="pixels",
        compare=str(tmp_path / "cv"),
        test=str(test),
        **TINY,
    )
    rows = {r["model"]: r for r in result.comparison}
    row = rows[f"frozen {best['classifier']} (cv's best row)"]
    assert list(rows)[-1] == row["model"] and str(tmp_path / "cv") in row["trained"]
    # cv chose that row on folds that held the validation and the test images: the row and a note say so
    assert row["trained"].endswith("; cv chose it on folds holding 3 of the 3 validation and 6 of the 6 test images")
    assert (
        f"--compare {tmp_path / 'cv'}: cv chose its best row on folds holding 6 of the 6 --test images: that row's "
        "test figures are not free of selection" in result.notes
    )
    # the same classifier fit on the probe's training rows, scored on its validation rows
    from classifiers.zoo import make_classifier
    from embedder import CacheReader

    reader = CacheReader(str(tmp_path / "c.h5"))
    split = {r["path"]: r["part"] for r in csv.DictReader((tmp_path / "run" / "split.csv").read_text().splitlines())}
    paths = reader.full_paths()
    train = np.array([split.get(p) == "train" for p in paths])
    val = np.array([split.get(p) == "val" for p in paths])
    X, y = reader.features(), reader.labels
    fitted = make_classifier(best["classifier"]).fit(X[train], y[train])
    assert row["val_accuracy"] == pytest.approx(float((fitted.predict(X[val]) == y[val]).mean()))


def test_finetune_compare_with_a_run_of_other_features_is_refused_before_anything_runs(cv_run, tmp_path):
    _, run, _ = cv_run  # a cv run of a synthetic cache: resnet18 random weights, layers flatten and layer3
    d = json.loads((run / "report.json").read_text())
    d["best"]["layer"] = "layer3"
    (run / "report.json").write_text(json.dumps(d))
    root = tmp_path / "images"
    write_tree(root, per_class=2)
    done = _cli(_finetune_args(root, tmp_path / "run", "--compare", str(run), "--epochs", "1"))
    assert done.exit_code == 1 and done.output.count("\n") == 1, done.output
    assert done.output.startswith(
        f"Error: --compare {run}: its best row ("
    ) and "layer 'layer3' there, 'flatten' here" in (done.output)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_run_folder_that_cannot_be_written_is_one_line_before_anything_is_embedded(tmp_path, monkeypatch):
    """Other commands check their destination first; finetune had embedded every image and failed afterwards."""
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "images"
    write_tree(root, per_class=4)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    done = _cli(_finetune_args(root, blocker / "run", "--epochs", "1"))
    assert done.exit_code == 1 and done.output.count("\n") == 1, done.output
    assert done.output.startswith(f"Error: cannot write the run in {blocker}")
    assert not (tmp_path / "cache").exists()  # nothing embedded


@pytest.mark.parametrize("augment", ["views", "pixels"])
def test_a_learning_rate_the_weights_diverge_at_is_one_line(tmp_path, augment):
    """NaN outputs after an epoch: one line that says what to change, not scikit-learn's log-loss traceback; a
    non-finite --lr never starts."""
    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    with pytest.raises(FeaturebankError, match=r"^training diverged: the network's outputs on the validation images"):
        finetune(str(root), str(tmp_path / "run"), epochs=1, lr=1e30, augment=augment, **TINY)
    for name in ("lr", "weight_decay", "backbone_lr_scale"):
        with pytest.raises(FeaturebankError, match=f"--{name.replace('_', '-')} nan: give a finite number"):
            finetune(str(root), str(tmp_path / "other"), epochs=1, **{**TINY, name: float("nan")})


@pytest.mark.integration  # about 9 s: four refused resumes and one that runs
def test_resume_from_a_damaged_or_tampered_last_pt_is_one_line(tmp_path):
    """A cut-short last.pt, NaN weights or a negative epoch: one line naming the file, not torch's or numpy's
    traceback; the same run resumes from an intact one."""
    import torch

    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    options = dict(TINY, augment="pixels")
    finetune(str(root), str(tmp_path / "run"), epochs=1, **options)
    last = tmp_path / "run" / "last.pt"
    intact = last.read_bytes()
    saved = torch.load(last, map_location="cpu", weights_only=True)
    nan = {**saved, "model": {k: (v * float("nan") if v.is_floating_point() else v) for k, v in saved["model"].items()}}
    cases = [
        (intact[: len(intact) // 2], "damaged: "),
        (nan, "its weights hold NaN or inf"),
        ({**saved, "state": {**saved["state"], "epoch": -5}}, "its epoch is -5"),
        ({"config": {}}, "not a checkpoint of an epoch"),
    ]
    for content, said in cases:
        if isinstance(content, bytes):
            last.write_bytes(content)
        else:
            torch.save(content, last)
        with pytest.raises(FeaturebankError) as err:
            finetune(str(root), str(tmp_path / "run"), epochs=1, resume=True, **options)
        message = str(err.value)
        assert message.startswith(f"--resume: {last} cannot be used (") and said in message and "\n" not in message
    last.write_bytes(intact)  # the finished run, resumed: nothing left to train, its epoch read back
    resumed = finetune(str(root), str(tmp_path / "run"), epochs=1, resume=True, **options)
    assert [h["epoch"] for h in resumed.history] == [0, 1]


def test_a_folder_of_someone_elses_files_is_never_written_over(tmp_path):
    """-o a folder that holds a report.md or split.csv no run wrote (no last.pt): one line, the files as they
    were; a run's own leftovers from before its first epoch (a split.csv with its header) are taken over."""
    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own report")
    (mine / "split.csv").write_text("my split")
    for name in ("split.csv", "report.md"):  # in the order a run writes them: the first is named
        with pytest.raises(FeaturebankError, match=f"holds {name}, which no finetune run wrote there: move it"):
            finetune(str(root), str(mine), epochs=1, **TINY)
        assert (mine / name).read_text() in ("my own report", "my split")
        (mine / name).unlink()
    (mine / "split.csv").write_text("path,part,label,group\n")  # what a run killed before epoch 1 leaves
    finetune(str(root), str(mine), epochs=1, **TINY)
    assert (mine / "last.pt").exists() and (mine / "report.md").read_text().startswith("# Fine-tuning")


@pytest.mark.integration  # a second process holds the folder
def test_a_second_process_writing_the_same_run_folder_is_one_line(tmp_path):
    """Two finetune runs with one -o had mixed their files (one's report, the other's best.pth); the second is now
    refused while the first holds the folder, and the folder is free again once it is done."""
    import subprocess
    import sys

    from workflows.finetune import finetune

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom embedder.kernel.atomic import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(pathlib.Path(__file__).resolve().parents[1]),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FeaturebankError, match=f"^another featurebank process is writing the run {run}: wait"):
            finetune(str(root), str(run), epochs=1, **TINY)
        assert os.listdir(run) == [".featurebank-run.lock"]  # nothing of the refused run
    finally:
        holder.kill()
        holder.wait()
    result = finetune(str(root), str(run), epochs=1, **TINY)  # the holder gone: the lock is free
    assert result.history[-1]["epoch"] == 1


def test_a_cache_with_rows_that_are_not_numbers_is_named_before_the_probe(tmp_path):
    """finetune --cache of a cache whose rows hold NaN: the image named (as cv and train do), not the probe's
    scale step saying 'Input X contains NaN'."""
    import h5py
    from helpers import synthetic_cache

    from embedder.cache.hdf5 import CacheReader
    from workflows.finetune.split import Embedded

    synthetic_cache(tmp_path / "c.h5", counts=(4, 4))
    reader = CacheReader(str(tmp_path / "c.h5"))
    layer, second = reader.layers[0], reader.paths[1]
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        f["features"][layer][1, 0] = np.nan
    with pytest.raises(
        FeaturebankError, match=f"1 image\\(s\\) have NaN or infinite values in layer {layer} \\(e.g. {second}"
    ):
        Embedded.of_cache(CacheReader(str(tmp_path / "c.h5")))
