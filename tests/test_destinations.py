"""Holes an adversarial pass found on the classifier side (issue 18): an unwritable destination, an output onto an
input, bad classifier parameters, class names that are math text, interrupts, and predict when every image fails.
Each is one line and a non-zero exit, with nothing written and nothing lost."""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from helpers import synthetic_cache, write_bad_files, write_tree

import cli
from classifiers.bundle import train

REPO = str(pathlib.Path(__file__).resolve().parents[1])


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A synthetic cache and a model file trained on it."""
    root = tmp_path_factory.mktemp("destinations")
    synthetic_cache(root / "c.h5", counts=(8, 8, 8))
    train(str(root / "c.h5"), classifier="logreg", layer="flatten", out=str(root / "m.fbmodel"))
    return root


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))


def digest(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


# -- 3. an unwritable destination -------------------------------------------------------------------------------
# Tests run as root, where a chmod'ed folder is still writable: the destinations below lie under a regular FILE
# (NotADirectoryError, as a read-only folder gives EACCES/EROFS), and one case fakes EACCES with monkeypatch.


def test_a_destination_that_cannot_be_written_is_one_line(model, tmp_path, runner):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    cases = {
        "the model file m.fbmodel": ["train", str(model / "c.h5"), "-o", str(blocker / "sub" / "m.fbmodel")],
        "the report": ["cv", str(model / "c.h5"), "-c", "logreg", "--folds", "2", "--out", str(blocker / "run")],
        "-o p.csv": ["predict", str(model / "m.fbmodel"), str(image), "-o", str(blocker / "p.csv")],
        "--predictions p.csv": [
            "evaluate",
            str(model / "m.fbmodel"),
            str(model / "c.h5"),
            "--predictions",
            str(blocker / "sub" / "p.csv"),
        ],
        "the ONNX file m.onnx": ["export", str(model / "m.fbmodel"), "-o", str(blocker / "m.onnx")],
    }
    for what, args in cases.items():
        line = one_error_line(runner.invoke(cli.main, args))
        assert line.startswith(f"Error: cannot write {what} in {blocker}"), line
        assert line.endswith(("Not a directory", "it is a file, not a folder", "is a file, not a folder")), line
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.integration
def test_an_unwritable_cache_is_one_line(tmp_path, runner):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    write_tree(tmp_path / "images", per_class=1)
    result = runner.invoke(
        cli.main,
        [
            "extract",
            str(tmp_path / "images"),
            "--cache",
            str(blocker / "x.h5"),
            "-q",
            "-b",
            "resnet18",
            "-w",
            "none",
            "--resize",
            "40",
            "--crop",
            "32",
        ],
    )
    assert one_error_line(result) == f"Error: cannot write the cache x.h5 in {blocker}: it is a file, not a folder"


def test_a_read_only_folder_is_one_line(model, tmp_path, runner, monkeypatch):
    import embedder.kernel.destination

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(kwargs.get("dir", ""), "probe"))

    monkeypatch.setattr(embedder.kernel.destination.tempfile, "mkstemp", refuse)
    line = one_error_line(runner.invoke(cli.main, ["train", str(model / "c.h5"), "-o", str(tmp_path / "m.fbmodel")]))
    assert line.startswith(f"Error: cannot write the model file m.fbmodel in {tmp_path}: Permission denied")
    assert not (tmp_path / "m.fbmodel").exists()


# -- 6. an output onto an input ---------------------------------------------------------------------------------


def test_no_command_overwrites_its_input(model, tmp_path, runner):
    before = {p: digest(model / p) for p in ("c.h5", "m.fbmodel")}
    line = one_error_line(runner.invoke(cli.main, ["train", str(model / "c.h5"), "-o", str(model / "c.h5")]))
    assert f"the model file {model / 'c.h5'} is {model / 'c.h5'}, an input of this command" in line
    other_spelling = str(model / ".." / model.name / "c.h5")
    assert "an input of this command" in one_error_line(
        runner.invoke(cli.main, ["train", str(model / "c.h5"), "-o", other_spelling])
    )
    os.symlink(model / "c.h5", tmp_path / "link.h5")
    assert "an input of this command" in one_error_line(
        runner.invoke(cli.main, ["train", str(model / "c.h5"), "-o", str(tmp_path / "link.h5")])
    )
    line = one_error_line(runner.invoke(cli.main, ["export", str(model / "m.fbmodel"), "-o", str(model / "m.fbmodel")]))
    assert "the ONNX file" in line and "an input of this command" in line
    (tmp_path / "best.pth").write_bytes(b"checkpoint")
    line = one_error_line(
        runner.invoke(cli.main, ["export", str(tmp_path / "best.pth"), "-o", str(tmp_path / "best.pth")])
    )
    assert "an input of this command" in line and (tmp_path / "best.pth").read_bytes() == b"checkpoint"

    write_tree(tmp_path / "images", per_class=1)
    image = tmp_path / "images" / "cats" / os.listdir(tmp_path / "images" / "cats")[0]
    image_digest = digest(image)
    for inputs, said in (([str(image)], "an input of this command"), ([str(tmp_path / "images")], "is an image")):
        result = runner.invoke(cli.main, ["predict", str(model / "m.fbmodel"), *inputs, "-o", str(image)])
        assert said in one_error_line(result)  # named, or found in a folder
    line = one_error_line(
        runner.invoke(cli.main, ["predict", str(model / "m.fbmodel"), str(image), "-o", str(model / "m.fbmodel")])
    )
    assert "an input of this command" in line
    assert digest(image) == image_digest and {p: digest(model / p) for p in before} == before
    assert not (tmp_path / "cache").exists()  # refused before anything was embedded


def test_no_table_is_written_over_an_image(model, tmp_path, runner):
    """An output named after a photo (the shell's completion): refused whatever the command reads, since
    featurebank never writes an image."""
    write_tree(tmp_path / "images", per_class=2)
    images = sorted((tmp_path / "images").rglob("*.*"))
    before = {p: digest(p) for p in images}
    png = next(p for p in images if p.suffix == ".png")
    for args in (
        ["evaluate", str(model / "m.fbmodel"), str(tmp_path / "images"), "--predictions", str(images[0])],
        ["manifest", str(tmp_path / "images"), "-o", str(images[1])],
        ["select", str(model / "c.h5"), "--budget", "2", "-o", str(png)],  # the cache's images are elsewhere
        ["predict", str(model / "m.fbmodel"), str(model / "c.h5"), "-o", str(images[2])],
    ):
        line = one_error_line(runner.invoke(cli.main, args))
        assert line.endswith("is an image: it would be overwritten; give another path"), args
    assert {p: digest(p) for p in images} == before
    from PIL import Image

    from embedder.kernel.destination import is_image_file

    for fmt in ("BMP", "GIF", "TIFF", "WEBP", "JPEG", "PNG"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"x.{fmt.lower()}", fmt)
        assert is_image_file(str(tmp_path / f"x.{fmt.lower()}")), fmt
    (tmp_path / "bmw.csv").write_text("BMW,model\nX5,2020\n")  # text that starts as a BMP's first bytes
    assert not is_image_file(str(tmp_path / "bmw.csv"))


def test_no_output_is_written_over_a_cache_a_model_file_or_a_checkpoint_of_another_kind(model, tmp_path, runner):
    """A cache, a model file or a checkpoint named as another command's output (a slip of the shell's completion):
    refused, the file intact; train -o over its own earlier model file still replaces it."""
    import shutil

    import torch

    cache, fbmodel, pth = tmp_path / "victim.h5", tmp_path / "victim.fbmodel", tmp_path / "best.pth"
    shutil.copy(model / "c.h5", cache)
    shutil.copy(model / "m.fbmodel", fbmodel)
    torch.save({"w": torch.zeros(2)}, pth)
    before = {p: digest(p) for p in (cache, fbmodel, pth)}
    m, c = str(model / "m.fbmodel"), str(model / "c.h5")
    for args, what in (
        (["train", c, "-l", "flatten", "-o", str(cache)], "the model file"),
        (["predict", m, c, "-o", str(cache)], "-o"),
        (["predict", m, c, "-o", str(fbmodel)], "-o"),
        (["select", c, "--budget", "2", "-o", str(pth)], "-o"),
        (["export", m, "-o", str(fbmodel)], "the ONNX file"),
        (["export", m, "-o", str(cache)], "the ONNX file"),
    ):
        line = one_error_line(runner.invoke(cli.main, args))
        kind = {cache: "an HDF5 cache", fbmodel: "a featurebank model file", pth: "a PyTorch checkpoint"}
        target = pathlib.Path(args[-1])
        assert line == f"Error: {what} {target} is {kind[target]}: it would be overwritten; give another path", args
    assert {p: digest(p) for p in (cache, fbmodel, pth)} == before
    r = runner.invoke(cli.main, ["train", c, "-l", "flatten", "-c", "knn", "-o", str(fbmodel)])
    assert r.exit_code == 0 and digest(fbmodel) != before[fbmodel]  # a model over a model: what -o asks
    table = tmp_path / "classes.csv"
    table.write_text("path,label\n")
    write_tree(tmp_path / "images", per_class=2)
    r = runner.invoke(cli.main, ["manifest", str(tmp_path / "images"), "-o", str(table)])  # a table over a table
    assert r.exit_code == 0 and table.read_text() != "path,label\n", r.output
    from embedder.kernel.destination import check_destination, featurebank_kind

    assert featurebank_kind("/dev/stdout") is None and check_destination("/dev/stdout") == "/dev/stdout"


def test_cv_out_never_writes_over_files_no_cv_run_wrote(model, tmp_path, runner):
    """A folder holding a user's report.md, or a report.json of something else: one line before the folds, the
    files as they were; a folder of an earlier cv run is replaced as before."""
    c = str(model / "c.h5")
    folder = tmp_path / "userdir"
    folder.mkdir()
    (folder / "report.md").write_text("my own report")
    (folder / "report.json").write_text('{"mine": 1}')
    args = ["cv", c, "-c", "knn", "--folds", "2", "-q", "--out", str(folder)]
    line = one_error_line(runner.invoke(cli.main, args))
    assert line == (
        f"Error: {folder} holds report.json, which no featurebank cv run wrote there: move it, or write the report "
        "elsewhere (nothing was replaced)"
    )
    assert (folder / "report.md").read_text() == "my own report" and sorted(os.listdir(folder)) == [
        "report.json",
        "report.md",
    ]
    run = tmp_path / "run"
    for _ in range(2):  # written, then replaced by the next run
        assert runner.invoke(cli.main, [*args[:-1], str(run)]).exit_code == 0
    assert (run / "report.md").read_text().startswith("#")


# -- 8. bad classifier parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, says",
    [
        ("rbf-svm:pca=abc", "pca='abc'"),
        ("rbf-svm:pca=[1]", "pca=[1]"),
        ("rbf-svm:pca=1e999", "'pca=1e999' in classifier 'rbf-svm:pca=1e999' is inf"),
        ("logreg:C=1e400", "'C=1e400' in classifier 'logreg:C=1e400' is inf: give a finite number"),
        ("logreg:max_iter=0", "classifier logreg: max_iter=0: give a whole number of 1 or more"),
        ("rbf-svm:pca=-5", "pca=-5"),
        ("rbf-svm:pca=0", "pca=0"),
        ("rbf-svm:l2=maybe", "l2='maybe'"),
        ("logreg:scale=2", "scale=2"),
        ("logreg:C=abc", "classifier logreg: C='abc': give a positive number"),
        ("knn:n_neighbors=0", "n_neighbors must be a whole number >= 1, got 0"),
        ("ensemble:method=vote2", "unknown ensemble method"),
        ("ensemble:inner_folds=1", "inner_folds=1"),
    ],
)
def test_bad_classifier_parameters_are_one_line(model, runner, spec, says):
    for command in (["cv", str(model / "c.h5")], ["train", str(model / "c.h5"), "-o", "never.fbmodel"]):
        result = runner.invoke(cli.main, [*command, "-c", spec])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        errors = [line for line in result.stderr.splitlines() if "Error" in line]
        assert len(errors) == 1 and says in errors[0], result.stderr
    assert not os.path.exists("never.fbmodel")
    from classifiers.zoo import make_classifier
    from embedder.kernel.errors import FeaturebankError

    with pytest.raises(FeaturebankError, match="classifier|ensemble|pca|l2|scale"):
        make_classifier(spec)


def test_good_step_values_still_work():
    from classifiers.zoo import make_classifier
    from embedder.kernel.errors import FeaturebankError

    assert make_classifier("rbf-svm:pca=8").named_steps["pca"].n_components == 8
    assert make_classifier("rbf-svm:pca=on").named_steps["pca"].n_components == 256
    assert make_classifier("rbf-svm:pca=off,l2=off").named_steps["pca"] == "passthrough"
    assert make_classifier("logreg:l2=on").named_steps["l2"] != "passthrough"
    # from Python, the keywords are checked as the spec's values are: "off" is not False (a string is true)
    assert make_classifier("logreg", scale=False, pca=16).named_steps["pca"].n_components == 16
    for bad, says in (({"scale": "off"}, "scale='off'"), ({"pca": 0}, "pca=0"), ({"l2": 1}, "l2=1")):
        with pytest.raises(FeaturebankError, match=says):
            make_classifier("logreg", **bad)


# -- 9. class names that are math text ----------------------------------------------------------------------------


def test_class_names_that_look_like_math_are_drawn_as_text(tmp_path, runner):
    classes = ["$\\foo$", "$x^{$", "50$ or $60"]
    synthetic_cache(tmp_path / "m.h5", counts=(8, 8, 8), classes=classes)
    result = runner.invoke(
        cli.main,
        [
            "cv",
            str(tmp_path / "m.h5"),
            "-c",
            "logreg",
            "-l",
            "flatten",
            "--folds",
            "2",
            "--out",
            str(tmp_path / "run"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("confusion.png", "leaderboard.png", "map.png", "report.html"):
        assert (tmp_path / "run" / name).stat().st_size > 1000, name
    import numpy as np

    from classifiers.report.plots import confusion_png

    confusion_png(np.eye(3, dtype=int), classes, "$x^{$", str(tmp_path / "c.png"))  # the title too
    assert (tmp_path / "c.png").stat().st_size > 1000


# -- 13. predict when no image can be classified ---------------------------------------------------------------------


@pytest.mark.integration
def test_predict_exits_1_when_every_image_fails(model, tmp_path, runner):
    write_bad_files(tmp_path / "bad")
    result = runner.invoke(
        cli.main,
        [
            "predict",
            str(model / "m.fbmodel"),
            str(tmp_path / "bad"),
            "--workers",
            "0",
            "-q",
            "-o",
            str(tmp_path / "p.csv"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: none of the 5 images could be classified: ")
    assert len(result.stderr.strip().splitlines()) == 1
    rows = (tmp_path / "p.csv").read_text().splitlines()  # each row says why
    assert len(rows) == 6 and all(r.split(",")[-1] for r in rows[1:])


# -- 12. Ctrl-C and SIGTERM say what each command kept -----------------------------------------------------------------

STALL = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # what a terminal's Ctrl-C meets
import {module} as target

def stall(*args, **kwargs):
    print("READY", flush=True)
    time.sleep(120)

setattr(target, {name!r}, stall)
import cli
sys.argv = ["featurebank", *{args!r}]
cli.main()
"""


def interrupted(module: str, name: str, args: list, signum: int) -> subprocess.CompletedProcess:
    """Run the command in a process of its own, stalled inside ``module.name``, and send it ``signum`` there."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-c", STALL.format(module=module, name=name, args=args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    timer = threading.Timer(240, process.kill)
    timer.start()
    try:
        assert process.stdout.readline().strip() == "READY", process.stderr.read()
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        timer.cancel()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_cv_says_nothing_was_written(model, tmp_path, signum):
    done = interrupted(
        "classifiers.crossval",
        "_fit_folds",
        ["cv", str(model / "c.h5"), "-c", "logreg", "--folds", "2", "--out", str(tmp_path / "run")],
        signum,
    )
    how, code = ("Interrupted", 130) if signum == signal.SIGINT else ("Terminated (SIGTERM)", 143)
    assert done.returncode == code, done.stderr
    assert (
        done.stderr.strip() == f"{how}: no report was written and the caches are unchanged; run the same "
        f"command again to start over."
    )
    assert "every finished batch" not in done.stderr
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")  # made only when written


@pytest.mark.integration
def test_a_terminated_train_keeps_the_previous_model_file(model, tmp_path):
    out = tmp_path / "m.fbmodel"
    out.write_bytes(b"the previous model")
    done = interrupted(
        "classifiers.bundle", "fit_grouped", ["train", str(model / "c.h5"), "-o", str(out)], signal.SIGTERM
    )
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip() == (
        "Terminated (SIGTERM): no model file was written (an existing -o file is "
        "unchanged); run the same command again."
    )
    assert out.read_bytes() == b"the previous model" and os.listdir(tmp_path) == ["m.fbmodel"]


@pytest.mark.integration
def test_an_interrupted_predict_says_what_it_kept(model, tmp_path):
    write_tree(tmp_path / "images", per_class=1)
    done = interrupted(
        "classifiers.bundle",
        "extract",
        ["predict", str(model / "m.fbmodel"), str(tmp_path / "images"), "-o", str(tmp_path / "p.csv")],
        signal.SIGINT,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == (
        "Interrupted: no predictions were written; the images embedded so far are kept "
        "in the cache, and the same command continues from them."
    )
    assert not (tmp_path / "p.csv").exists()


def test_an_empty_output_path_is_refused_not_reported_saved(model, tmp_path, runner):
    """``-o "$OUT"`` with OUT unset: a usage error, where train had said "saved" and written nothing."""
    before = sorted(os.listdir(model))
    for args in (
        ["train", str(model / "c.h5"), "-o", ""],
        ["select", str(model / "c.h5"), "--budget", "2", "-o", ""],
        ["evaluate", str(model / "m.fbmodel"), str(model / "c.h5"), "--predictions", " "],
        ["cv", str(model / "c.h5"), "-c", "lda", "--out", ""],
    ):
        result = runner.invoke(cli.main, args)
        assert result.exit_code == 2 and "an empty path: give a file or folder name" in result.output, args
        assert "saved" not in result.output and "Traceback" not in result.output
    assert sorted(os.listdir(model)) == before


def test_outputs_go_into_folders_not_there_yet(model, tmp_path, runner):
    """An output's folder is checked before the work and made when the file is written."""
    write_tree(tmp_path / "images", per_class=1)
    out = tmp_path / "a" / "b"
    assert runner.invoke(cli.main, ["manifest", str(tmp_path / "images"), "-o", str(out / "m.csv")]).exit_code == 0
    assert (out / "m.csv").read_text().startswith("path,label\n")
    done = runner.invoke(cli.main, ["train", str(model / "c.h5"), "-c", "lda", "-o", str(out / "c" / "m.fbmodel")])
    assert done.exit_code == 0 and (out / "c" / "m.fbmodel").is_file()


def test_a_cv_run_cut_off_while_it_took_its_folder_can_be_run_again(model, tmp_path, monkeypatch):
    """A disk error (or a kill) after the former run's report.json went and before the new one came in leaves the
    run's other files without a report.json: the next run replaces them, it does not take them for a user's."""
    import classifiers.report.writer as writer
    from classifiers.crossval import cross_validate

    report = cross_validate(str(model / "c.h5"), classifiers=["knn"], layers=["flatten"], folds=2, extras=None)
    run = tmp_path / "run"
    writer.write_report(report, str(run))
    moved = []
    real = writer._move

    def fails_on_the_second(source, target):
        moved.append(target)
        if len(moved) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real(source, target)

    monkeypatch.setattr(writer, "_move", fails_on_the_second)
    with pytest.raises(Exception, match="Input/output error"):
        writer.write_report(report, str(run))
    monkeypatch.undo()
    assert not (run / "report.json").exists() and (run / writer.PLACING).exists()
    writer.check_report_folder(str(run))  # not refused: the files are a run's
    writer.write_report(report, str(run))
    assert (run / "report.json").exists() and not (run / writer.PLACING).exists()
    (run / "report.json").unlink()  # a report.md without a report.json and without the marker: a user's now
    with pytest.raises(Exception, match="holds report.md, which no featurebank cv run wrote there"):
        writer.check_report_folder(str(run))
