"""Bad input, second pass (issue 32), the classifiers' and the command line's side: model files that lie about
themselves, run folders that carry links or damaged records, relabel's inputs, option values, an entry of the zoo
that cannot fit the data, and what a newcomer hits in the first hour. Each case: one line (or a documented choice),
never a traceback, a hang or a silent loss."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import signal
import tempfile
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAST, digest, finishes, synthetic_cache, write_tree

import cli
from classifiers import modelfile
from classifiers.bundle import evaluate, extract_options, load_bundle, train
from classifiers.crossval import cross_validate
from embedder.kernel.errors import FeaturebankError
from workflows.deploy.entry import export_model


def one_line_error(result, *words):
    """A CliRunner result that failed with one ``Error:`` line (a usage error: ``Error:`` last), no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    last = [line for line in result.output.splitlines() if line.strip()][-1]
    assert last.startswith("Error:"), result.output
    for word in words:
        assert word in last, (word, last)
    return last


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A synthetic cache (3 classes, 12-d flatten, 6-d layer3) and a logistic regression trained on it."""
    root = tmp_path_factory.mktemp("badcli")
    synthetic_cache(root / "c.h5", counts=(10, 10, 10), dim=12)
    train(str(root / "c.h5"), classifier="logreg", layer="flatten", out=str(root / "m.fbmodel"))
    held = [digest(1000 + i) for i in range(30)]  # other images than the training ones
    synthetic_cache(root / "held.h5", counts=(10, 10, 10), dim=12, seed=1, digests=held)
    return root


def rewrite(source, dest, meta_edit=None, pipeline=None, extra=()):
    """A copy of the model file ``source`` at ``dest``: its metadata edited, its pipeline replaced, members added."""
    with zipfile.ZipFile(source) as z:
        meta, blob = json.loads(z.read(modelfile.META)), z.read(modelfile.PIPELINE)
    if meta_edit:
        meta_edit(meta)
    if pipeline is not None:
        import skops.io

        blob = skops.io.dumps(pipeline)
    with zipfile.ZipFile(dest, "w") as z:
        z.writestr(modelfile.META, json.dumps(meta))
        z.writestr(modelfile.PIPELINE, blob)
        for name, data in extra:
            z.writestr(name, data)
    return str(dest)


# -- model files ---------------------------------------------------------------------------------------------
def test_a_hostile_or_damaged_list_of_training_images_is_refused_in_one_line(model, tmp_path, monkeypatch):
    """The training images' fingerprints are read as bytes of a bounded size and checked against numpy's header
    before anything is allocated: a pickled object array is never unpickled, a header claiming 8 TiB allocates
    nothing, and anything but a flat uint64 array is refused."""

    def saved(array, **kw) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, **kw)
        return buffer.getvalue()

    small = saved(np.arange(3, dtype=np.uint64))
    for name, data, words in [
        ("pickled", saved(np.array([{"a": 1}], dtype=object), allow_pickle=True), "is not a list of fingerprints"),
        ("floats", saved(np.arange(3.0)), "is not a list of fingerprints"),
        ("grid", saved(np.zeros((2, 2), dtype=np.uint64)), "is not a list of fingerprints"),
        ("cut", saved(np.arange(30, dtype=np.uint64))[:-20], "is not a list of fingerprints"),
        ("claims", _claiming(small, 1 << 40), "is not a list of fingerprints"),  # never allocated
        ("junk", b"not numpy at all", "damaged featurebank model file"),
    ]:
        path = rewrite(model / "m.fbmodel", tmp_path / f"{name}.fbmodel", extra=[(modelfile.SEEN, data)])
        result = CliRunner().invoke(cli.main, ["evaluate", path, str(model / "held.h5")])
        one_line_error(result, path, modelfile.SEEN, words)
    path = rewrite(model / "m.fbmodel", tmp_path / "large.fbmodel", extra=[(modelfile.SEEN, small)])
    monkeypatch.setattr(modelfile, "MAX_SEEN_BYTES", len(small) - 1)  # a member over the bound is never read
    one_line_error(CliRunner().invoke(cli.main, ["evaluate", path, str(model / "held.h5")]), "is too large")


def _claiming(saved_bytes: bytes, rows: int) -> bytes:
    """``numpy.save``'s bytes of a small array with a header that claims ``rows`` rows (padded as numpy pads)."""
    import numpy.lib.format as npformat

    stream = io.BytesIO()
    npformat.write_array_header_1_0(stream, {"descr": "<u8", "fortran_order": False, "shape": (rows,)})
    body = saved_bytes[saved_bytes.index(b"\n") + 1 :]
    return stream.getvalue() + body


def test_a_model_file_holding_a_member_twice_is_refused(model, tmp_path):
    """predict used the last copy of the metadata, unzip -p shows the first: what a reviewer reads must run."""
    with zipfile.ZipFile(model / "m.fbmodel") as z:
        meta = json.loads(z.read(modelfile.META))
    lying = dict(meta, classes=list(reversed(meta["classes"])))
    path = tmp_path / "twice.fbmodel"
    with pytest.warns(UserWarning, match="Duplicate name"):
        rewrite(model / "m.fbmodel", path, extra=[(modelfile.META, json.dumps(lying))])
    with pytest.raises(FeaturebankError, match=f"holds {modelfile.META} twice"):
        load_bundle(path)
    with pytest.warns(UserWarning, match="Duplicate name"):
        rewrite(model / "m.fbmodel", path, extra=[(modelfile.PIPELINE, b"x")])
    with pytest.raises(FeaturebankError, match=f"holds {modelfile.PIPELINE} twice"):
        load_bundle(path)


def test_an_unfitted_estimator_is_refused_when_the_file_is_opened(model, tmp_path):
    from classifiers.zoo import make_classifier

    path = rewrite(model / "m.fbmodel", tmp_path / "unfitted.fbmodel", pipeline=make_classifier("logreg"))
    with pytest.raises(FeaturebankError, match="its classifier was never fitted"):
        load_bundle(path)
    result = CliRunner().invoke(cli.main, ["export", path, "-o", str(tmp_path / "x.onnx")])
    one_line_error(result, "never fitted")


def test_metadata_listing_other_classes_than_the_estimator_is_refused(model, tmp_path):
    path = rewrite(model / "m.fbmodel", tmp_path / "two.fbmodel", lambda m: m.update(classes=m["classes"][:2]))
    with pytest.raises(FeaturebankError, match="names 2 classes but its classifier predicts 3"):
        load_bundle(path)
    with pytest.raises(FeaturebankError, match="names 2 classes"):
        evaluate(path, str(model / "c.h5"))


def test_metadata_naming_a_layer_of_other_dimensions_is_refused(model, tmp_path):
    """The file records each layer's dimensions: a layer of other dimensions is refused when it is opened; a file
    that lies consistently (no record) is refused before its classifier sees a row."""
    path = rewrite(model / "m.fbmodel", tmp_path / "layer.fbmodel", lambda m: m.update(layer="layer3"))
    with pytest.raises(FeaturebankError, match="layer 'layer3' has 6 dimensions but its classifier takes 12"):
        load_bundle(path)

    def unrecorded(m):
        m.update(layer="layer3")
        m["trained_on"].pop("dimensions")

    path = rewrite(model / "m.fbmodel", tmp_path / "quiet.fbmodel", unrecorded)
    bundle = load_bundle(path)
    assert bundle.layer == "layer3"
    with pytest.raises(FeaturebankError, match="layer3 has 6 dimensions; the model's classifier takes 12"):
        evaluate(bundle, str(model / "c.h5"))
    with pytest.raises(FeaturebankError, match="layer3 has 6 dimensions; the model's classifier takes 12"):
        export_model(bundle, str(tmp_path / "x.onnx"))  # its training cache is there: checked before ONNX Runtime


def test_a_trained_model_records_its_layer_dimensions_and_the_estimator_agrees(model):
    bundle = load_bundle(model / "m.fbmodel")
    assert bundle.trained_on["dimensions"] == {"flatten": 12, "layer3": 6}
    assert modelfile.input_dimensions(bundle.pipeline) == 12


@pytest.mark.parametrize("target", ["/proc/self/pagemap", "fifo", "empty", "folder"])
def test_a_weights_file_that_is_not_a_regular_file_of_bounded_size_is_refused_unread(model, tmp_path, target):
    """predict hashed /proc/self/pagemap (a 'regular' file of size 0 that never ends) and hung."""
    if target == "/proc/self/pagemap" and not os.path.exists(target):
        pytest.skip("no /proc/self/pagemap here")
    where = {"fifo": tmp_path / "w.pth", "empty": tmp_path / "e.pth", "folder": tmp_path / "d.pth"}.get(target)
    if target == "fifo":
        os.mkfifo(where)
    elif target == "empty":
        where.write_bytes(b"")
    elif target == "folder":
        where.mkdir()

    def point(m):
        m["settings"]["weights"] = "sha256:" + "0" * 64
        m["weights_file"] = str(where or target)

    bundle = load_bundle(rewrite(model / "m.fbmodel", tmp_path / "w.fbmodel", point))
    with pytest.raises(FeaturebankError, match="weights file .* (not a regular file|empty|is not there)"):
        finishes(lambda: extract_options(bundle))


def test_a_weights_file_is_hashed_only_up_to_its_size(model, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()

    def point(m):
        m["settings"]["weights"] = "sha256:" + digest
        m["weights_file"] = str(weights)

    bundle = load_bundle(rewrite(model / "m.fbmodel", tmp_path / "w.fbmodel", point))
    assert extract_options(bundle).weights == str(weights)
    weights.write_bytes(b"other" * 10)
    with pytest.raises(FeaturebankError, match="is not the weights file the model was trained with"):
        extract_options(bundle)


# -- run folders -----------------------------------------------------------------------------------------------
def test_links_planted_beside_the_cache_never_reach_a_run_folder(tmp_path):
    from classifiers.report.html import Thumbs

    secret = tmp_path / "secret.txt"
    secret.write_text("do not send me")
    shared, run = tmp_path / "c.h5.extras" / "x-thumbs", tmp_path / "run"
    shared.mkdir(parents=True)
    names = {p: hashlib.sha1(p.encode()).hexdigest()[:16] + ".jpg" for p in ("a/1.jpg", "a/2.jpg", "a/3.jpg")}
    os.symlink(secret, shared / names["a/1.jpg"])  # a link to a file
    os.link(secret, shared / names["a/2.jpg"])  # a hard link: a regular file, but not a thumbnail
    (shared / names["a/3.jpg"]).write_bytes(b"\xff\xd8\xff" + b"x" * 100)  # looks like a JPEG: taken
    thumbs = Thumbs(str(run), None, str(shared))
    assert thumbs("a/1.jpg")["src"] is None and thumbs("a/2.jpg")["src"] is None
    assert thumbs("a/3.jpg")["src"] == f"thumbs/{names['a/3.jpg']}"
    for name in os.listdir(run / "thumbs"):
        assert not os.path.islink(run / "thumbs" / name)
        assert os.stat(run / "thumbs" / name).st_nlink == 1
        assert b"do not send" not in (run / "thumbs" / name).read_bytes()
    assert os.listdir(run / "thumbs") == [names["a/3.jpg"]]


def test_neighbour_indices_out_of_range_beside_the_cache_are_computed_again(tmp_path):
    from classifiers.data import labeled
    from classifiers.extras import neighbours_of, sidecar

    synthetic_cache(tmp_path / "c.h5", counts=(6, 6), dim=8)
    data = labeled(str(tmp_path / "c.h5"))
    index, similarity = neighbours_of(data, "flatten", 3, 100, 0)
    path = sidecar(data, "flatten", "neighbours", {"k": 3, "reference": 100, "seed": 0})
    for bad in (index + 1000, -index - 5, index[:3], index.astype(np.float64) + 0.5):
        np.savez(path, index=bad, similarity=similarity)
        again, sim = neighbours_of(data, "flatten", 3, 100, 0)
        assert np.array_equal(again, index) and np.array_equal(sim, similarity)
    np.savez(path, index=index, similarity=np.full_like(similarity, np.nan))
    assert np.array_equal(neighbours_of(data, "flatten", 3, 100, 0)[1], similarity)


@pytest.fixture(scope="module")
def run_folder(model):
    """A cv --out folder of the synthetic cache (logreg only: fast)."""
    out = model / "run"
    result = CliRunner().invoke(cli.main, ["cv", str(model / "c.h5"), "-c", "logreg", "--folds", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _copy_run(run_folder, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    return copy


@pytest.mark.parametrize("drop", ["classes", "best", "leaderboard", "settings", "suspicious", "results"])
def test_report_on_a_run_folder_whose_report_lacks_a_key_is_one_line(run_folder, tmp_path, drop):
    run = _copy_run(run_folder, tmp_path)
    d = json.loads((run / "report.json").read_text())
    d.pop(drop)
    (run / "report.json").write_text(json.dumps(d))
    one_line_error(CliRunner().invoke(cli.main, ["report", str(run)]), "report.json", repr(drop))


def test_report_on_a_run_folder_whose_report_has_wrong_types_is_one_line(run_folder, tmp_path):
    run = _copy_run(run_folder, tmp_path)
    d = json.loads((run / "report.json").read_text())
    d["leaderboard"][0]["accuracy"] = "high"
    (run / "report.json").write_text(json.dumps(d))
    one_line_error(CliRunner().invoke(cli.main, ["report", str(run)]), "report.json")


def test_report_on_a_predictions_csv_holding_a_non_number_is_one_line_naming_the_line(run_folder, tmp_path):
    run = _copy_run(run_folder, tmp_path)
    from classifiers.report.reading import find_result

    d = json.loads((run / "report.json").read_text())
    csv_path = run / find_result(d, d["best"])["predictions"]
    lines = csv_path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[4] = "lots"
    lines[3] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n")
    one_line_error(CliRunner().invoke(cli.main, ["report", str(run)]), csv_path.name, "line 4", "'lots'")


def test_report_renders_the_untouched_run_folder(run_folder, tmp_path):
    run = _copy_run(run_folder, tmp_path)
    result = CliRunner().invoke(cli.main, ["report", str(run)])
    assert result.exit_code == 0 and result.output.strip().endswith("report.html")


# -- relabel -------------------------------------------------------------------------------------------------
@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "photos.csv"
    path.write_text("path,label\na/1.jpg,cat\na/2.jpg,cat\nb/1.jpg,dog\n")
    return path


def relabel(*args):
    return CliRunner().invoke(cli.main, ["relabel", *map(str, args)])


def test_relabel_applies_corrections_and_writes_plain_newlines(manifest, tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("path,label,suggested\na/2.jpg,cat,dog\n")
    result = relabel(manifest, fixes, "-o", tmp_path / "new.csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new.csv").read_bytes() == b"path,label\na/1.jpg,cat\na/2.jpg,dog\nb/1.jpg,dog\n"


def test_relabel_matches_label_issues_paths_under_the_caches_root_as_the_docs_loop_makes_them(tmp_path):
    """``manifest photos/ -o photos.csv`` lists ``photos/a/1.jpg``; a cache extracted from ``photos/`` (and its
    label_issues.csv) names ``a/1.jpg``: found through the run's report.json, or by the one path ending so."""
    (tmp_path / "photos.csv").write_text("path,label\nphotos/a/1.jpg,cat\nphotos/a/2.jpg,cat\nphotos/b/1.jpg,dog\n")
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"root": str(tmp_path / "photos")}))
    (run / "label_issues.csv").write_text("rank,path,label,suggested\n1,a/2.jpg,cat,dog\n")
    for fixes in (run / "label_issues.csv", tmp_path / "copied.csv"):
        if not fixes.exists():
            fixes.write_text((run / "label_issues.csv").read_text())  # no report.json beside it
        result = relabel(tmp_path / "photos.csv", fixes, "-o", tmp_path / "new.csv")
        assert result.exit_code == 0, result.output
        assert (
            tmp_path / "new.csv"
        ).read_text() == "path,label\nphotos/a/1.jpg,cat\nphotos/a/2.jpg,dog\nphotos/b/1.jpg,dog\n"
    (run / "report.json").write_text(json.dumps({"root": "/elsewhere/photos"}))  # a run folder moved here
    (tmp_path / "dotted.csv").write_text("path,suggested\n./a/2.jpg,dog\n")
    for fixes in (run / "label_issues.csv", tmp_path / "dotted.csv"):
        result = relabel(tmp_path / "photos.csv", fixes, "-o", tmp_path / "new.csv")
        assert result.exit_code == 0, result.output
        assert "photos/a/2.jpg,dog" in (tmp_path / "new.csv").read_text()
    (tmp_path / "twice.csv").write_text("path,suggested\na/2.jpg,dog\na/2.jpg,cat\n")
    one_line_error(
        relabel(tmp_path / "photos.csv", tmp_path / "twice.csv", "-o", tmp_path / "x.csv"), "twice with other labels"
    )
    assert not (tmp_path / "x.csv").exists()


def test_relabel_refuses_a_fifo_without_waiting_for_it(manifest, tmp_path):
    os.mkfifo(tmp_path / "fixes.csv")
    result = finishes(lambda: relabel(manifest, tmp_path / "fixes.csv", "-o", tmp_path / "new.csv"))
    one_line_error(result, "not a regular file")
    result = finishes(lambda: relabel(tmp_path / "fixes.csv", manifest, "-o", tmp_path / "new.csv"))
    one_line_error(result, "not a regular file")


@pytest.mark.parametrize(
    "which, data, says",
    ids=[
        "latin1-manifest",
        "latin1-fixes",
        "long-manifest",
        "long-fixes",
        "short-fixes",
        "short-manifest",
        "nul",
        "newline",
    ],
    argvalues=[
        ("manifest", b"path,label\na/1.jpg,caf\xe9\n", "not UTF-8 text"),
        ("corrections", b"path,new_label\na/1.jpg,caf\xe9\n", "not UTF-8 text"),
        ("manifest", b"path,label\na/1.jpg," + b"x" * 200_000 + b"\n", "line 2: a field of more than"),
        ("corrections", b"path,new_label\na/1.jpg," + b"x" * 200_000 + b"\n", "line 2: a field of more than"),
        ("corrections", b"path,label,new_label\na/1.jpg\n", "line 2: 1 field(s), the header names 3"),
        ("manifest", b"path,label,group\na/1.jpg,cat\n", "line 2: 2 field(s), the header names 3"),
        ("corrections", b"path,new_label\na/1.jpg,d\x00og\n", "NUL"),
        ("corrections", b'path,new_label\na/1.jpg,"do\ng"\n', "line 2: a line break in a label"),
    ],
)
def test_relabel_inputs_that_cannot_be_read_are_one_line(manifest, tmp_path, which, data, says):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("path,new_label\na/1.jpg,dog\n")
    (manifest if which == "manifest" else fixes).write_bytes(data)
    result = relabel(manifest, fixes, "-o", tmp_path / "new.csv")
    one_line_error(result, says)
    assert not (tmp_path / "new.csv").exists()


def test_relabel_into_a_missing_folder_makes_it_and_under_a_file_is_one_line(manifest, tmp_path):
    """As train -o and export -o do: the folder is made; a path under a regular file is one line."""
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("path,new_label\na/1.jpg,dog\n")
    result = relabel(manifest, fixes, "-o", tmp_path / "nowhere" / "new.csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "nowhere" / "new.csv").read_text().splitlines()[1] == "a/1.jpg,dog"
    one_line_error(relabel(manifest, fixes, "-o", fixes / "new.csv"), "new.csv")


def test_an_empty_new_label_is_said_to_change_nothing(manifest, tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("path,new_label\na/1.jpg,\nb/1.jpg,cat\n")
    result = relabel(manifest, fixes, "-o", tmp_path / "new.csv", "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert (d["changed"], d["left_empty"], d["unchanged"]) == (1, 1, 0)
    text = relabel(manifest, fixes, "-o", tmp_path / "new2.csv").output
    assert "1 row(s) with an empty new_label left as they were" in text


# -- option values ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, says",
    [
        (["--budget", "1" + "0" * 400], "--budget"),
        (["--budget", "1" + "0" * 400 + "s"], "--budget"),
        (["-j", "0"], "-j"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "1e20"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
    ],
)
def test_option_values_are_checked_by_their_types(model, args, says):
    result = CliRunner().invoke(cli.main, ["cv", str(model / "c.h5"), "-c", "logreg", *args])
    assert result.exit_code == 2, result.output
    one_line_error(result, says)


def test_jobs_take_every_core_and_all_but_some_as_joblib_does():
    import click

    from cli import Jobs

    assert [Jobs().convert(v, None, None) for v in ("1", "4", "-1", "-2")] == [1, 4, -1, -2]
    with pytest.raises(click.BadParameter, match="0 jobs cannot run anything"):
        Jobs().convert("0", None, None)


def test_the_bounds_themselves_are_accepted():
    """Seeds 0 and 2**32 - 1 (numpy's range), and a 2**62 batch size (the guard, not a choice) are valid values."""
    seed = next(p for p in cli.cv.params if p.name == "seed").type
    batch = next(p for p in cli.extract.params if p.name == "batch_size").type
    assert [seed.convert(v, None, None) for v in ("0", str(2**32 - 1))] == [0, 2**32 - 1]
    assert batch.convert(str(2**62), None, None) == 2**62


# -- an entry that cannot fit the data -----------------------------------------------------------------------
def test_cv_without_c_skips_an_entry_that_cannot_fit_with_its_reason(tmp_path, monkeypatch):
    """18 rows, 2 folds: an entry built as a plain k = 10 neighbours cannot predict from 9 rows (the zoo's own knn
    now uses every row when k exceeds them, so a test entry stands in). The default list is cut to two entries."""
    from sklearn.neighbors import KNeighborsClassifier

    from classifiers import budget
    from classifiers.registry import ClassifierSpec, register_classifier, unregister_classifier

    register_classifier(ClassifierSpec("k10", "a test entry", lambda seed: KNeighborsClassifier(n_neighbors=10)))
    monkeypatch.setattr(budget, "default_classifiers", lambda: ["logreg", "k10"])
    synthetic_cache(tmp_path / "c.h5", counts=(9, 9), dim=8)
    out = tmp_path / "run"
    try:
        result = CliRunner().invoke(
            cli.main, ["cv", str(tmp_path / "c.h5"), "--folds", "2", "--budget", "none", "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
        d = json.loads((out / "report.json").read_text())
        skipped = d["cv"]["budget"]["skipped"]
        assert "k10" in skipped and "n_neighbors" in skipped["k10"]
        assert "k10" not in {r["classifier"] for r in d["leaderboard"]}
        assert "logreg" in {r["classifier"] for r in d["leaderboard"]}
        assert "k10 left out: it cannot fit these data" in result.output
        with pytest.raises(FeaturebankError, match="k10 on flatten failed"):  # asked for by name: an error
            cross_validate(str(tmp_path / "c.h5"), classifiers=["k10"], layers=["flatten"], folds=2)
    finally:
        unregister_classifier("k10")


# -- a newcomer's first hour --------------------------------------------------------------------------------
def test_train_without_o_is_a_usage_error_and_writes_nothing(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["train", str(model / "c.h5"), "-c", "logreg"])
    assert result.exit_code == 2 and "Missing option '-o'" in result.output
    assert "saved None" not in result.output and os.listdir(tmp_path) == []


def test_export_without_o_is_a_usage_error(model):
    result = CliRunner().invoke(cli.main, ["export", str(model / "m.fbmodel")])
    assert result.exit_code == 2 and "Missing option '-o'" in result.output


def test_cv_on_a_missing_cache_creates_no_output_folder(tmp_path):
    out = tmp_path / "runs" / "x"
    one_line_error(CliRunner().invoke(cli.main, ["cv", str(tmp_path / "missing.h5"), "-o", str(out)]), "not found")
    assert not (tmp_path / "runs").exists()


def test_every_csv_a_run_writes_ends_its_lines_with_a_newline_only(run_folder, model, tmp_path):
    written = list(run_folder.glob("*.csv")) + list((run_folder / "predictions").glob("*.csv"))
    assert {p.name for p in written} >= {"label_issues.csv", "leaderboard.csv"}
    result = CliRunner().invoke(
        cli.main,
        ["evaluate", str(model / "m.fbmodel"), str(model / "held.h5"), "--predictions", str(tmp_path / "p.csv")],
    )
    assert result.exit_code == 0, result.output
    for path in written + [tmp_path / "p.csv"]:
        data = path.read_bytes()
        assert b"\r" not in data and data.endswith(b"\n"), path


def test_evaluate_on_one_class_folder_fails_before_embedding(model, tmp_path, monkeypatch):
    """A class folder given alone is a flat folder of unlabeled images: said before any image is embedded."""
    import classifiers.bundle as bundle_module

    write_tree(tmp_path / "val", classes=("class0",), per_class=2)
    monkeypatch.setattr(bundle_module, "extract", lambda *a, **k: pytest.fail("embedded before the check"))
    with pytest.raises(
        FeaturebankError, match="class0 has no labels.*a folder of class folders .give .*val if class0 is one class"
    ):
        evaluate(str(model / "m.fbmodel"), str(tmp_path / "val" / "class0"))
    (tmp_path / "flat.csv").write_text("path\nval/class0/img000.jpg\n")  # a manifest without labels: no folder hint
    with pytest.raises(
        FeaturebankError, match=r"flat.csv has no labels .* a folder of class folders or a CSV manifest"
    ):
        evaluate(str(model / "m.fbmodel"), str(tmp_path / "flat.csv"))


# -- featurebank manifest: the relabel loop from a class-per-folder tree -------------------------------------
TORCH = dict(FAST, engine="torch")  # no ONNX export, no engine timing


@pytest.mark.parametrize("inside", [False, True], ids=["beside", "inside"])
def test_a_manifest_of_the_folder_is_the_same_input_and_relabeling_embeds_nothing(tmp_path, inside):
    import embedder
    from embedder.cache.hdf5 import CacheReader

    root = tmp_path / "photos"
    paths = write_tree(root, classes=("cats", "dogs"), per_class=2)
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(root), cache, **TORCH)
    before = CacheReader(cache)
    X = before.features("flatten").copy()
    out = (root if inside else tmp_path) / "photos.csv"
    result = CliRunner().invoke(cli.main, ["manifest", str(root), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["classes"] == {"cats": 2, "dogs": 2}
    prefix = "" if inside else "photos/"
    assert out.read_bytes() == ("path,label\n" + "".join(f"{prefix}{p},{p.split('/')[0]}\n" for p in paths)).encode()
    same = embedder.extract(str(out), cache, **TORCH)
    reader = CacheReader(cache)
    assert (same.embedded, same.reused, same.removed) == (0, 4, 0)
    assert list(reader.paths) == paths and list(reader.labels) == list(before.labels)
    np.testing.assert_array_equal(reader.features("flatten"), X)
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(f"path,new_label\n{prefix}{paths[0]},dogs\n")
    fixed = tmp_path / "fixed.csv"
    assert CliRunner().invoke(cli.main, ["relabel", str(out), str(fixes), "-o", str(fixed)]).exit_code == 0
    if inside:  # the corrected manifest beside the first one, so that its paths name the same files
        fixed = root / "fixed.csv"
        (tmp_path / "fixed.csv").rename(fixed)
    relabeled = embedder.extract(str(fixed), cache, **TORCH)
    reader = CacheReader(cache)
    assert relabeled.embedded == 0 and list(reader.paths) == paths
    assert list(reader.labels) == ["dogs", "cats", "dogs", "dogs"]
    np.testing.assert_array_equal(reader.features("flatten"), X)
    back = embedder.extract(str(root), cache, **TORCH)  # and the folder again: its own labels, nothing embedded
    assert back.embedded == 0 and list(CacheReader(cache).labels) == list(before.labels)


def test_a_manifest_of_files_outside_the_cache_folder_is_still_another_input(tmp_path):
    import embedder

    write_tree(tmp_path / "a", classes=("x", "y"), per_class=1)
    write_tree(tmp_path / "b", classes=("x", "y"), per_class=1, start=10)
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(tmp_path / "a"), cache, **TORCH)
    assert CliRunner().invoke(cli.main, ["manifest", str(tmp_path / "b"), "-o", str(tmp_path / "b.csv")]).exit_code == 0
    with pytest.raises(FeaturebankError, match="mirrors another input"):
        embedder.extract(str(tmp_path / "b.csv"), cache, **TORCH)


def test_manifest_of_a_missing_folder_or_into_a_folder_is_one_line(tmp_path):
    one_line_error(CliRunner().invoke(cli.main, ["manifest", str(tmp_path / "nope"), "-o", str(tmp_path / "m.csv")]))
    write_tree(tmp_path / "p", classes=("x",), per_class=1)
    one_line_error(CliRunner().invoke(cli.main, ["manifest", str(tmp_path / "p"), "-o", str(tmp_path)]))
    result = CliRunner().invoke(cli.main, ["manifest", str(tmp_path / "p")])
    assert result.exit_code == 2 and "Missing option '-o'" in result.output


# -- featurebank backbones: fast ----------------------------------------------------------------------------
def test_backbones_lists_the_recorded_rows_without_building_a_model(monkeypatch):
    import embedder.backbones.registry as backbones
    from embedder.backbones import table as backbone_table

    if backbone_table.installed_torchvision() != backbone_table.TORCHVISION:
        pytest.skip(f"the table is of torchvision {backbone_table.TORCHVISION}")
    monkeypatch.setattr(backbones, "describe_backbones", lambda *a: pytest.fail("described live"))
    monkeypatch.setattr(backbones, "skeleton", lambda *a, **k: pytest.fail("a model was built"))
    result = CliRunner().invoke(cli.main, ["backbones", "--json", "--filter", "resnet1*"])
    assert result.exit_code == 0, result.output
    assert [(r["name"], r["features"]) for r in json.loads(result.output)] == [
        ("resnet101", 2048),
        ("resnet152", 2048),
        ("resnet18", 512),
    ]


def test_the_recorded_rows_are_what_torchvision_says(monkeypatch):
    from embedder.backbones import table as backbone_table
    from embedder.backbones.registry import describe_backbones

    if backbone_table.installed_torchvision() != backbone_table.TORCHVISION:
        pytest.skip(f"the table is of torchvision {backbone_table.TORCHVISION}")
    for name in ("resnet18", "mobilenet_v2", "squeezenet1_1"):
        assert backbone_table.backbone_rows(pattern=name) == describe_backbones(pattern=name)
    monkeypatch.setattr(backbone_table, "installed_torchvision", lambda: "0.0.1")  # another version: described live
    assert backbone_table.backbone_rows(pattern="resnet18") == describe_backbones(pattern="resnet18")


@pytest.mark.integration
def test_every_recorded_row_is_what_torchvision_says():
    from embedder.backbones import table as backbone_table
    from embedder.backbones.registry import describe_backbones

    if backbone_table.installed_torchvision() != backbone_table.TORCHVISION:
        pytest.skip(f"the table is of torchvision {backbone_table.TORCHVISION}")
    live = {r["name"]: r for r in describe_backbones()}
    recorded = {r["name"]: r for r in backbone_table.recorded(backbone_table.TORCHVISION)}
    assert recorded == live, sorted(n for n in set(live) | set(recorded) if live.get(n) != recorded.get(n))


# -- predict and evaluate: the caches they make are named, and no lock file is left ----------------------------
def test_predict_and_evaluate_name_their_cache_and_leave_no_lock_files(tmp_path, monkeypatch):
    import embedder

    monkeypatch.delenv("FEATUREBANK_CACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    write_tree(tmp_path / "train", classes=("a", "b"), per_class=2)
    write_tree(tmp_path / "val", classes=("a", "b"), per_class=1, start=20)
    embedder.extract(str(tmp_path / "train"), str(tmp_path / "train.h5"), **TORCH)
    assert not os.path.exists(tmp_path / "train.h5.lock")
    train(str(tmp_path / "train.h5"), classifier="logreg", out=str(tmp_path / "m.fbmodel"))
    runner = CliRunner()
    result = runner.invoke(cli.main, ["predict", "m.fbmodel", "val", "--workers", "0"])
    assert result.exit_code == 0, result.output
    [made] = os.listdir(tmp_path / "cache")  # where the docs say: cache/, and nothing else there
    assert (
        made.endswith(".h5") and f"cache: {os.path.abspath('cache/' + made)} (2 image(s) embedded now" in result.stderr
    )
    assert f"cache/{made}" not in result.stdout  # stdout is the CSV alone
    result = runner.invoke(cli.main, ["evaluate", "m.fbmodel", "val", "--workers", "0", "--cache", "val.h5"])
    assert result.exit_code == 0, result.output
    assert f"(cache {tmp_path / 'val.h5'})" in result.output
    assert sorted(os.listdir(tmp_path / "cache")) == [made] and not os.path.exists("val.h5.lock")


# -- outputs that are not plain files, a disk that fills, a run folder written over ---------------------------
def test_an_output_through_a_link_writes_its_target_and_a_device_is_written_through(tmp_path):
    """For a path the user named (-o): the link's target is written, a device written through. The files
    featurebank names itself (thumbnails, sidecars) are replaced whatever stands there: a planted link is not
    followed out of their folder."""
    from embedder.kernel.atomic import atomic_path
    from embedder.kernel.destination import check_destination

    (tmp_path / "out").mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "out" / "target.csv")
    with atomic_path(str(link), named=True) as tmp, open(tmp, "w") as fh:
        fh.write("a,b\n")
    assert link.is_symlink() and (tmp_path / "out" / "target.csv").read_text() == "a,b\n"
    planted = tmp_path / "thumb.jpg"
    planted.symlink_to(tmp_path / "out" / "target.csv")
    with atomic_path(str(planted)) as tmp, open(tmp, "w") as fh:
        fh.write("jpeg")
    assert not planted.is_symlink() and planted.read_text() == "jpeg"
    assert (tmp_path / "out" / "target.csv").read_text() == "a,b\n"  # the link's target untouched
    assert check_destination(os.devnull) == os.devnull  # no probe file made in /dev
    with atomic_path(os.devnull, named=True) as tmp:  # written through, never renamed over
        assert tmp == os.devnull
        with open(tmp, "w") as fh:
            fh.write("gone")
    assert not os.path.isfile(os.devnull) and os.path.exists(os.devnull)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with atomic_path(str(fifo), named=True) as tmp:
        assert tmp == str(fifo)  # (not opened here: a FIFO waits for its reader)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_full_disk_while_writing_is_one_line_and_the_device_stays(tmp_path):
    synthetic_cache(tmp_path / "train.h5", counts=(6, 6), dim=4)
    synthetic_cache(tmp_path / "free.h5", counts=(3, 3), dim=4, labels=False)
    train(str(tmp_path / "train.h5"), classifier="knn:n_neighbors=3", out=str(tmp_path / "m.fbmodel"))
    result = CliRunner().invoke(cli.main, ["predict", str(tmp_path / "m.fbmodel"), str(tmp_path / "free.h5"),
                                           "-q", "-o", "/dev/full"])  # fmt: skip
    one_line_error(result, "No space left on device", "free some space")
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")


def test_an_os_error_names_the_real_path_and_says_what_to_do():
    import errno

    from embedder.kernel.errors import os_error_line

    renamed = OSError(errno.EISDIR, "Is a directory", "/o/report.md.1a2b3c4d.tmp", None, "/o/report.md")
    assert os_error_line(renamed).startswith("Is a directory: /o/report.md (a file stands where a folder is needed")
    assert os_error_line(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")).startswith(
        "Connection refused (a network or scheduler problem"
    )
    assert os_error_line(OSError("h5py said so")).startswith("OSError: h5py said so (check the path")
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")).endswith(
        "FEATUREBANK_TRACEBACK=1 shows where it came from)"
    )


def test_predict_refuses_to_write_over_its_labels_csv(tmp_path):
    synthetic_cache(tmp_path / "train.h5", counts=(6, 6), dim=4)
    X, _ = synthetic_cache(tmp_path / "free.h5", counts=(3, 3), dim=4, labels=False)
    train(str(tmp_path / "train.h5"), classifier="knn:n_neighbors=3", out=str(tmp_path / "m.fbmodel"))
    labels = tmp_path / "labelled.csv"
    labels.write_text("path,label\n")
    before = labels.read_text()
    result = CliRunner().invoke(cli.main, ["predict", str(tmp_path / "m.fbmodel"), str(tmp_path / "free.h5"),
                                           "--labels", str(labels), "-o", str(labels)])  # fmt: skip
    one_line_error(result, "an input of this command: it would be overwritten")
    assert labels.read_text() == before


def test_a_fifo_or_a_folder_given_as_a_cache_is_one_line_not_a_wait(tmp_path):
    from embedder.cache.hdf5 import CacheReader

    os.mkfifo(tmp_path / "f.h5")
    with pytest.raises(FeaturebankError, match="is not a regular file .a FIFO or a device.: give the cache file"):
        CacheReader(str(tmp_path / "f.h5"))
    (tmp_path / "d.h5").mkdir()
    result = CliRunner().invoke(cli.main, ["info", str(tmp_path / "d.h5")])
    one_line_error(result, "is a folder, not a cache file")
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.fbmodel", "w") as z:  # a model file given where a cache goes
        z.writestr("featurebank-model.json", "{}")
    for command in ("info", "cv"):
        result = CliRunner().invoke(cli.main, [command, str(tmp_path / "m.fbmodel")])
        one_line_error(result, "is a model file (a zip, as train writes), not a cache: give the .h5 cache")
    with zipfile.ZipFile(tmp_path / "other.h5", "w") as z:  # a zip that is no model file: h5py's own reason
        z.writestr("notes.txt", "hello")
    one_line_error(CliRunner().invoke(cli.main, ["info", str(tmp_path / "other.h5")]), "as an HDF5 cache: ")


def test_select_keeps_a_manifest_that_was_filled_in_and_refuses_a_device(tmp_path):
    X, _ = synthetic_cache(tmp_path / "c.h5", counts=(6, 6), dim=4, labels=False)
    filled = tmp_path / "round1.csv"
    filled.write_text("path,label,reason,score\nclass0/img000.jpg,cat,x,1\nclass0/img001.jpg,,x,1\n")
    before = filled.read_text()
    result = CliRunner().invoke(cli.main, ["select", str(tmp_path / "c.h5"), "--budget", "2", "-o", str(filled)])
    one_line_error(result, "has 1 label(s) filled in already: give another -o")
    assert filled.read_text() == before
    result = CliRunner().invoke(cli.main, ["select", str(tmp_path / "c.h5"), "--budget", "2", "-o", os.devnull])
    one_line_error(result, "is not a regular file: select writes a manifest to fill in")
    # saved by a spreadsheet: another encoding, or semicolons, or a capitalised header: never written over
    saved = {
        "latin.csv": "path,label,reason,score\r\nclass0/img000.jpg,chat tigr\xe9,x,1\r\n".encode("cp1252"),
        "semicolons.csv": "\ufeffpath;label;reason;score\r\nclass0/img000.jpg;cat;x;1\r\n".encode("utf-8"),
    }
    for name, raw in saved.items():
        (tmp_path / name).write_bytes(raw)
        result = CliRunner().invoke(
            cli.main, ["select", str(tmp_path / "c.h5"), "--budget", "2", "-o", str(tmp_path / name)]
        )
        one_line_error(result, "exists and cannot be told empty of labels")
        assert (tmp_path / name).read_bytes() == raw
    (tmp_path / "upper.csv").write_text("Path,Label\nclass0/img000.jpg,cat\n")
    result = CliRunner().invoke(
        cli.main, ["select", str(tmp_path / "c.h5"), "--budget", "2", "-o", str(tmp_path / "upper.csv")]
    )
    one_line_error(result, "has 1 label(s) filled in already")
    (tmp_path / "empty.csv").write_text("")  # nothing to lose: written
    result = CliRunner().invoke(
        cli.main, ["select", str(tmp_path / "c.h5"), "--budget", "2", "-o", str(tmp_path / "empty.csv")]
    )
    assert result.exit_code == 0 and (tmp_path / "empty.csv").read_text().startswith("path,label,reason,score\n")


def test_a_run_folder_written_over_holds_one_run_and_an_interrupt_leaves_the_former_run_whole(tmp_path, monkeypatch):
    """The new run is written beside the former one and takes its place at the end: a Ctrl-C while it is written
    (the former behaviour: the former run already removed) leaves the former run as it was."""
    import classifiers.report.writer as writer

    synthetic_cache(tmp_path / "c.h5", counts=(8, 8), dim=4)
    first = cross_validate(str(tmp_path / "c.h5"), classifiers=["logreg:C=1.0", "knn"], layers=["flatten"], folds=2)
    run = tmp_path / "run"
    writer.write_report(first, str(run))
    assert len(list((run / "predictions").iterdir())) == 2
    second = cross_validate(str(tmp_path / "c.h5"), classifiers=["ridge"], layers=["flatten"], folds=2)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    monkeypatch.setattr(writer, "write_map", stop)
    with pytest.raises(KeyboardInterrupt) as stopped:
        writer.write_report(second, str(run))
    assert stopped.value.kept.startswith(f"nothing written: the report of this run was not whole, and what {run}")
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # as it was
    monkeypatch.undo()
    writer.write_report(second, str(run))
    assert json.loads((run / "report.json").read_text())["best"]["classifier"] == "ridge"
    assert len(list((run / "predictions").iterdir())) == 1  # ridge's alone: the first run's are gone
    assert "knn" not in (run / "leaderboard.csv").read_text() and not list(run.glob(writer.STAGE + "*"))
    # a Ctrl-C while the new run takes the folder's place waits for the renames, then stops before the page
    third = cross_validate(str(tmp_path / "c.h5"), classifiers=["knn"], layers=["flatten"], folds=2)
    take = writer._take_place

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)
        take(*args)

    monkeypatch.setattr(writer, "_take_place", interrupted)
    (run / "report.html").unlink()
    with pytest.raises(KeyboardInterrupt) as stopped:
        writer.write_report(third, str(run))
    assert (
        stopped.value.kept == f"the report in {run} was written but not its page: featurebank report {run} renders it"
    )
    assert json.loads((run / "report.json").read_text())["best"]["classifier"] == "knn"
    assert not (run / "report.html").exists() and len(list((run / "predictions").iterdir())) == 1
    monkeypatch.undo()

    # a full disk while the page is written (its thumbnails): the report is in place, and the line says so
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "write_html", full)
    with pytest.raises(
        FeaturebankError, match=re.escape(f"the report in {run} was written but not its page (No space")
    ):
        writer.write_report(third, str(run))
    assert json.loads((run / "report.json").read_text())["best"]["classifier"] == "knn"
    monkeypatch.undo()
    # a folder that holds no cv run keeps what it holds
    other = tmp_path / "project"
    (other / "predictions").mkdir(parents=True)
    (other / "predictions" / "mine.csv").write_text("kept")
    writer.write_report(second, str(other))
    assert (other / "predictions" / "mine.csv").read_text() == "kept"  # not a run's: kept
    # a file of a run's name that no run wrote: refused, kept (it had been written over)
    (other / "report.json").unlink()
    (other / "report.md").write_text("my notes")
    with pytest.raises(FeaturebankError, match="holds report.md, which no featurebank cv run wrote there"):
        writer.write_report(second, str(other))
    assert (other / "report.md").read_text() == "my notes" and not list(other.glob(writer.STAGE + "*"))


def test_a_damaged_side_file_of_a_run_is_named_not_report_json(tmp_path):
    """`featurebank report` blamed report.json for a damaged map.json or predictions CSV: the one line names the
    file (and the CSV's line); a report.json nested past Python's stack is one line in `train --from` too."""
    import classifiers.report.writer as writer

    synthetic_cache(tmp_path / "c.h5", counts=(8, 8), dim=4)
    run = tmp_path / "run"
    writer.write_report(
        cross_validate(str(tmp_path / "c.h5"), classifiers=["logreg:C=1.0"], layers=["flatten"], folds=2), str(run)
    )
    runner = CliRunner()
    (run / "map.json").write_text('{"points": ')
    result = runner.invoke(cli.main, ["report", str(run)])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {run / 'map.json'} is damaged (JSONDecodeError")
    (run / "map.json").unlink()
    (predictions,) = (run / "predictions").iterdir()
    lines = predictions.read_text().splitlines()
    cells = lines[3].split(",")
    cells[4] = "lots"  # the confidence column
    predictions.write_text("\n".join([*lines[:3], ",".join(cells), *lines[4:]]) + "\n")
    result = runner.invoke(cli.main, ["report", str(run)])
    assert (
        result.exit_code == 1 and result.output.startswith(f"Error: {predictions} line 4: ") and "lots" in result.output
    )
    assert result.output.count("\n") == 1
    (run / "report.json").write_text("[" * 100_000 + "]" * 100_000)
    result = runner.invoke(cli.main, ["train", str(tmp_path / "c.h5"), "--from", str(run), "-o", str(tmp_path / "m")])
    assert result.exit_code == 1 and "nested too deeply to read" in result.output and result.output.count("\n") == 1


def test_a_disk_that_fills_while_an_output_is_written_names_the_output(tmp_path):
    """A write's ENOSPC names no file: the one line was 'No space left on device' without a path."""
    import errno

    from embedder.kernel.atomic import atomic_path
    from embedder.kernel.errors import os_error_line

    out = tmp_path / "predictions.csv"
    with pytest.raises(OSError) as full, atomic_path(str(out), named=True) as tmp, open(tmp, "w") as fh:
        fh.write("path,predicted\n")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert os_error_line(full.value).startswith(f"No space left on device: {out} (free some space")
    assert list(tmp_path.iterdir()) == []  # nothing half written left


def test_the_swap_of_a_run_folder_holds_sigterm_too_and_survives_a_link_to_another_disk(tmp_path, monkeypatch):
    """A review's three cases: SIGTERM (which the command line raises as Terminated) halfway through the swap had
    lost both runs; with SIGINT ignored (a background job) the held Ctrl-C was raised anyway; ``predictions/`` a link
    to another file system made the renames fail after the former run was deleted. And a folder standing where a
    file goes is refused before anything is replaced."""
    import classifiers.report.writer as writer
    from embedder.kernel.errors import Terminated, terminate_as_interrupt

    synthetic_cache(tmp_path / "c.h5", counts=(8, 8), dim=4)
    runs = [
        cross_validate(str(tmp_path / "c.h5"), classifiers=[spec], layers=["flatten"], folds=2)
        for spec in ("logreg:C=1.0", "knn", "ridge")
    ]
    run = tmp_path / "run"
    writer.write_report(runs[0], str(run))
    take = writer._take_place

    def signalled(number):
        def during(*args):
            take(*args[:2], *args[2:])  # the swap runs whole, the signal waits for it
            os.kill(os.getpid(), number)

        return during

    monkeypatch.setattr(writer, "_take_place", signalled(signal.SIGTERM))
    with terminate_as_interrupt(), pytest.raises(Terminated) as stopped:
        writer.write_report(runs[1], str(run))
    assert stopped.value.kept.startswith(f"the report in {run} was written but not its page")
    assert json.loads((run / "report.json").read_text())["best"]["classifier"] == "knn"
    assert [p.name for p in (run / "predictions").iterdir()] == ["knn@flatten.csv"]
    monkeypatch.setattr(writer, "_take_place", signalled(signal.SIGINT))
    former = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        writer.write_report(runs[2], str(run))  # ignored, as the job asked: no KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, former)
    assert json.loads((run / "report.json").read_text())["best"]["classifier"] == "ridge"
    monkeypatch.undo()
    if os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev:
        elsewhere = pathlib.Path(tempfile.mkdtemp(dir="/dev/shm"))
        try:
            shutil.rmtree(run / "predictions")
            (run / "predictions").symlink_to(elsewhere)
            writer.write_report(runs[0], str(run))
            assert json.loads((run / "report.json").read_text())["best"]["classifier"] == "logreg:C=1.0"
            assert "logreg_C=1.0@flatten.csv" in os.listdir(elsewhere) and (run / "report.html").exists()
        finally:
            shutil.rmtree(elsewhere)
            (run / "predictions").unlink()
    before = json.loads((run / "report.json").read_text())
    (run / "map.json").unlink()
    (run / "map.json").mkdir()
    with pytest.raises(FeaturebankError, match=r"map\.json is a folder where the report puts a file: move it"):
        writer.write_report(runs[1], str(run))
    assert json.loads((run / "report.json").read_text()) == before and not list(run.glob(writer.STAGE + "*"))
