"""The command line: --help with examples, JSON on stdout, one-line errors, no tracebacks."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_tree

import cli
from embedder.cache.hdf5 import CacheReader

FAST_ARGS = ["-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64", "--batch-size", "4", "--workers", "0"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("command", ["extract", "info", "layers", "backbones"])
def test_every_command_has_help_with_an_example(runner, command):
    result = runner.invoke(cli.main, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "featurebank " + command in result.output


def test_extract_json_summary_and_info(runner, tmp_path):
    root = tmp_path / "images"
    write_tree(root)
    (root / "cats" / "empty.jpg").write_bytes(b"")
    cache = tmp_path / "c.h5"
    result = runner.invoke(cli.main, ["extract", str(root), "--cache", str(cache), "--json", *FAST_ARGS])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 9 and summary["embedded"] == 9 and summary["cache"] == str(cache)
    assert summary["failed"] == [{"path": "cats/empty.jpg", "reason": "empty file (0 bytes)"}]
    assert summary["layers"] == {"flatten": 512} and summary["settings"]["weights"] == "none:seed=0"
    info = json.loads(runner.invoke(cli.main, ["info", str(cache), "--json"]).stdout)
    assert info["rows"] == 9 and info["classes"] == {"cats": 3, "dogs": 3, "owls": 3}
    assert info["failed"] == summary["failed"] and info["pending_parts"] == 0
    human = runner.invoke(cli.main, ["info", str(cache)])
    assert "classes      cats 3, dogs 3, owls 3" in human.output and "cats/empty.jpg: empty file" in human.output
    strict = runner.invoke(cli.main, ["extract", str(root), "--cache", str(cache), "--strict", "-q", *FAST_ARGS])
    assert strict.exit_code == 1 and "Error: 1 file(s) could not be embedded (--strict)" in strict.output
    assert len(CacheReader(cache)) == 9
    broken = tmp_path / "broken"  # every file unreadable: the summary, then one error line and exit 1, not 0
    (broken / "cats").mkdir(parents=True)
    (broken / "cats" / "a.jpg").write_bytes(b"not a jpeg")
    (broken / "cats" / "b.jpg").write_bytes(b"")
    nothing = runner.invoke(cli.main, ["extract", str(broken), "--cache", str(tmp_path / "n.h5"), *FAST_ARGS])
    assert nothing.exit_code == 1 and nothing.output.startswith(f"0 rows in {tmp_path / 'n.h5'}")
    assert nothing.output.splitlines()[-1].startswith("Error: none of the 2 image(s) could be read (e.g. cats/")


def test_extract_says_what_comes_next(runner, tmp_path):
    """An unlabeled folder leads to select (the labelling loop), a labelled tree to cv, a manifest with both to
    either; the summary counts the labelled rows."""
    from helpers import photo

    flat = tmp_path / "my photos"
    flat.mkdir()
    for i in range(3):
        photo(i).save(flat / f"p{i}.jpg")
    cache = tmp_path / "flat.h5"
    out = runner.invoke(cli.main, ["extract", str(flat), "--cache", str(cache), *FAST_ARGS])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[-1] == (
        f"next: featurebank select {cache} --budget N -o to_label.csv (which N images to label first; no row has a label)"
    )
    manifest = tmp_path / "some labels.csv"
    manifest.write_text(f"path,label\n{flat}/p0.jpg,cat\n{flat}/p1.jpg,\n{flat}/p2.jpg,dog\n")
    both = runner.invoke(cli.main, ["extract", str(manifest), "--cache", str(tmp_path / "m.h5"), "--json", *FAST_ARGS])
    assert json.loads(both.stdout)["labelled"] == 2 and json.loads(both.stdout)["rows"] == 3
    said = runner.invoke(cli.main, ["extract", str(manifest), "--cache", str(tmp_path / "m.h5"), *FAST_ARGS])
    assert said.output.splitlines()[-1] == (
        f"next: featurebank cv {tmp_path / 'm.h5'} (2 labelled rows), or featurebank select {tmp_path / 'm.h5'} "
        "--budget N -o to_label.csv (of the 1 without)"
    )
    root = tmp_path / "tree"
    write_tree(root)
    tree = runner.invoke(cli.main, ["extract", str(root), "--cache", str(tmp_path / "t.h5"), *FAST_ARGS])
    assert tree.output.splitlines()[-1] == (  # a held-out split's cache is not for choosing on
        f"next: featurebank cv {tmp_path / 't.h5'} (keep a separate test cache for featurebank evaluate MODEL)"
    )
    val = runner.invoke(cli.main, ["extract", str(root), "--cache", str(tmp_path / "ants-val.h5"), *FAST_ARGS])
    assert val.output.splitlines()[-1].startswith(  # named for a test split: scored once, not cross-validated
        f"next: featurebank evaluate MODEL {tmp_path / 'ants-val.h5'} (its name says held-out images: score a model"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["extract", "{tmp}/missing"], "Error: input not found:"),
        (["extract", "{root}", "-b", "resnet5"], "unknown backbone 'resnet5' (did you mean"),
        (
            ["extract", "{root}", "-b", "resnet18", "-w", "IMAGENET9K"],
            "Error: unknown weights 'IMAGENET9K' for resnet18",
        ),
        (["extract", "{root}", "-b", "resnet18", "-w", "{tmp}/junk.pth"], "Error: cannot read weights file"),
        (["extract", "{root}", "-b", "resnet18", "-w", "none", "-l", "layer7"], "Error: unknown layer 'layer7'"),
        (["extract", "{root}", "--device", "tpu"], "'tpu' is not one of auto, cpu, cuda, cuda:N, mps"),
        (
            ["extract", "{root}", "-w", "none", "-b", "resnet18", "--device", "cpu", "--precision", "fp16"],
            "Error: fp16 needs a GPU",
        ),
        (
            ["extract", "{root}", "-b", "vit_b_16", "-w", "none", "--crop", "200", "--cache", "{tmp}/v.h5"],
            "Error: the model cannot run on 200x200 inputs",
        ),
        (["info", "{tmp}/nothing.h5"], "Error: cache not found"),
        (["info", "{tmp}/junk.pth"], "Error: cannot open"),
        (["layers", "alexnett"], "unknown backbone 'alexnett' (did you mean alexnet?)"),
    ],
)
def test_errors_are_one_line_without_traceback(runner, tmp_path, args, message):
    root = tmp_path / "images"
    write_tree(root, classes=("a",), per_class=1)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    result = runner.invoke(cli.main, [a.format(tmp=tmp_path, root=root) for a in args])
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, KeyError, AttributeError))
    assert len([ln for ln in result.output.splitlines() if ln.startswith("Error")]) == 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["select", "c.h5", "--budget", "0", "-o", "x.csv"],
            "Invalid value for '--budget': 0 is not in the range x>=1.",
        ),
        (["select"], "Missing argument 'CACHE'."),
        (["selct", "c.h5"], "No such command 'selct'. Did you mean 'select'?"),
        (["cv", "c.h5", "--folds", "many"], "Invalid value for '--folds': 'many' is not a valid integer."),
        (["cv", "--folds"], "Option '--folds' requires an argument."),  # click gives this one no context
    ],
)
def test_a_usage_error_is_one_line_that_says_where_the_help_is(runner, args, said):
    """click's usage errors print the usage and a hint above the error; featurebank's are one line, exit 2."""
    result = runner.invoke(cli.main, args, prog_name="featurebank")
    command = "featurebank" if args[0] == "selct" else f"featurebank {args[0]}"
    assert result.exit_code == 2 and result.output == f"Error: {said} (see {command} --help)\n"


def test_layers_marks_the_penultimate_node(runner):
    result = runner.invoke(cli.main, ["layers", "resnet18", "--json"])
    rows = {r["node"]: r for r in json.loads(result.stdout)}
    assert rows["flatten"]["penultimate"] and rows["layer4.1.relu_1"]["shape"] == [512, 7, 7]
    assert rows["layer4.1.relu_1"]["vector"] == 512 and not rows["fc"]["penultimate"]


@pytest.mark.integration
def test_backbones_lists_every_torchvision_classifier_with_its_feature_size(runner):
    rows = {r["name"]: r for r in json.loads(runner.invoke(cli.main, ["backbones", "--json"]).stdout)}
    assert (
        rows["resnet50"]["features"] == 2048 and rows["resnet50"]["default_weights"] == "ResNet50_Weights.IMAGENET1K_V2"
    )
    assert rows["vgg16"]["features"] == 4096 and rows["inception_v3"]["crop"] == 299
    assert {"efficientnet_b0", "mobilenet_v3_large", "convnext_tiny", "googlenet"} <= set(rows)


@pytest.mark.parametrize("command", ["classifiers", "cv", "train", "evaluate", "predict", "finetune"])
def test_classifier_commands_have_help_with_an_example(runner, command):
    result = runner.invoke(cli.main, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "featurebank " + command in result.output


def test_classifiers_json_lists_the_zoo(runner):
    rows = json.loads(runner.invoke(cli.main, ["classifiers", "--json"]).stdout)
    assert [r["name"] for r in rows] == [
        "logreg",
        "linear-svm",
        "rbf-svm",
        "rbf-svm~nystroem",
        "knn",
        "ridge",
        "lda",
        "random-forest",
        "extra-trees",
        "ensemble",
    ]
    # cv's default run: every entry but the stand-in and the random forest (extra-trees stands for it)
    assert [r["name"] for r in rows if not r["default"]] == ["rbf-svm~nystroem", "random-forest"]
    assert rows[2]["pipeline"].startswith("l2 → pca(256) → SVC") and rows[2]["search"]["gamma"][0] == "scale"
    assert rows[3]["summary"].startswith("APPROXIMATE stand-in for rbf-svm")
    assert rows[0]["probabilities"] and not rows[5]["probabilities"]


def test_cv_train_predict_evaluate_from_the_command_line(runner, tmp_path, monkeypatch):
    from helpers import synthetic_cache

    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    synthetic_cache(tmp_path / "s.h5")
    result = runner.invoke(
        cli.main,
        [
            "cv",
            str(tmp_path / "s.h5"),
            "-c",
            "logreg,rbf-svm:pca=8,C=3",
            "-l",
            "flatten",
            "--folds",
            "3",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {r["classifier"] for r in report["leaderboard"]} == {"logreg", "rbf-svm:pca=8,C=3"}
    assert (tmp_path / "run" / "predictions" / "rbf-svm_pca=8_C=3@flatten.csv").exists()
    human = runner.invoke(cli.main, ["cv", str(tmp_path / "s.h5"), "-c", "logreg", "--folds", "3"])
    table = [line.split() for line in human.stdout.splitlines()[1:4]]  # stderr: the budget's line
    assert table[0][:3] == ["#", "classifier", "layer"] and table[0][-3:] == ["p", "vs", "#1"]
    best = report["leaderboard"][0]  # the same folds as the JSON run: logreg's rows print what it printed
    logreg = [r for r in report["leaderboard"] if r["classifier"] == "logreg"][0]
    assert table[1][:4] == ["1", "logreg", "flatten", "16"] and table[1][-1] == "best"
    assert table[1][4:7] == [
        "{:.1f}".format(100 * logreg["accuracy"]["mean"]),
        "±",
        "{:.1f}".format(100 * logreg["accuracy"]["std"]),
    ]
    assert table[2][:3] == ["2", "logreg", "layer3"]
    judge = min((r for r in report["leaderboard"] if r["classifier"] == "logreg"), key=lambda r: r["log_loss"]["mean"])
    assert (  # which row judged, and why that one (not always #1)
        f"Most suspicious images (out-of-fold, judged by logreg @ {judge['layer']}, the row with probabilities whose "
        "log-loss is lowest, the surest judge):" in human.output
    )
    assert best["p_value"] is None and best["not_worse"]

    root = tmp_path / "images"
    write_tree(root, per_class=3)
    (root / "dogs" / "broken.jpg").write_bytes(b"")
    cache = tmp_path / "c.h5"
    assert runner.invoke(cli.main, ["extract", str(root), "--cache", str(cache), "-q", *FAST_ARGS]).exit_code == 0
    trained = runner.invoke(
        cli.main, ["train", str(cache), "-c", "knn:n_neighbors=1", "-o", str(tmp_path / "m.joblib")]
    )
    assert trained.exit_code == 0 and trained.output.startswith(
        f"saved {tmp_path / 'm.joblib'}: knn:n_neighbors=1 on flatten ("
    )
    assert "  9 images, classes cats 3, dogs 3, owls 3\n" in trained.output
    predicted = runner.invoke(
        cli.main, ["predict", str(tmp_path / "m.joblib"), str(root), "-k", "2", "--batch-size", "4", "--workers", "0"]
    )
    assert predicted.exit_code == 0, predicted.output
    lines = predicted.stdout.strip().splitlines()
    assert lines[0] == "path,label,predicted,p,class2,p2,fit_on,familiarity,error"  # its own training images
    rows = [ln.split(",") for ln in lines[1:]]
    assert len(rows) == 10 and {r[6] for r in rows if r[0] != "dogs/broken.jpg"} == {"1"}
    broken = next(r for r in rows if r[0] == "dogs/broken.jpg")
    assert broken[2] == "" and broken[-2] == "" and broken[-1].startswith("empty file")
    # 9 training images can flag none: train said so once; predict, on these very images, says nothing of it
    assert "note: the model keeps 9 training images: no image can be shown unlike them" in trained.output
    assert "unlike" not in predicted.stderr and all(r[-2] for r in rows if r is not broken)
    assert all(r[1] == r[2] for r in rows if r[0] != "dogs/broken.jpg")  # 1-NN on its own training images
    assert "1 of 10 images could not be classified" in predicted.stderr
    args = ["predict", str(tmp_path / "m.joblib"), str(root), "-k", "2", "--batch-size", "4", "--workers", "0"]
    as_json = runner.invoke(cli.main, [*args, "--json"])
    assert as_json.stdout == runner.invoke(cli.main, [*args, "--format", "json"]).stdout  # --json, as elsewhere
    assert {r["path"] for r in json.loads(as_json.stdout)["rows"]} == {r[0] for r in rows}
    evaluated = runner.invoke(cli.main, ["evaluate", str(tmp_path / "m.joblib"), str(cache), "--json"])
    assert evaluated.exit_code == 1 and evaluated.stderr == (
        f"Error: every one of the 9 labelled images of {cache} is an image the model was fit on: evaluate scores a "
        "model on images it never saw (a cv report scores every row out of fold)\n"
    )


def test_classifier_errors_are_one_line(runner, tmp_path):
    from helpers import synthetic_cache

    synthetic_cache(tmp_path / "s.h5", counts=(8, 2))
    result = runner.invoke(cli.main, ["cv", str(tmp_path / "s.h5")])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "Error: 'class1' has 2 image(s), fewer than --folds 5" in result.output
    result = runner.invoke(cli.main, ["cv", str(tmp_path / "s.h5"), "-c", "svm"])
    assert result.exit_code == 2 and "unknown classifier 'svm'" in result.output
    result = runner.invoke(cli.main, ["predict", str(tmp_path / "absent.joblib"), "x.jpg"])
    assert result.exit_code == 1 and "Error: model file not found" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli.main, ["predict", "only.jpg"])
    assert result.exit_code == 2 and "give a MODEL file and at least one image" in result.output


def test_finetune_from_the_command_line(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "images"
    write_tree(root, per_class=4)
    args = ["finetune", str(root), "-o", str(tmp_path / "run"), *FAST_ARGS, "--epochs", "1", "--val-split", "0.25"]
    result = runner.invoke(cli.main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["blocks"] == ["layer4"] and [h["epoch"] for h in run["history"]] == [0, 1]
    assert len(run["comparison"]) == 2 and run["comparison"][0]["model"] == "frozen linear probe"
    assert run["checkpoint"] == str(tmp_path / "run" / "best.pth")
    again = runner.invoke(cli.main, args)
    assert (
        again.exit_code == 1 and "holds a run already: add --resume" in again.output and "Traceback" not in again.output
    )
    bad = runner.invoke(cli.main, [*args, "--unfreeze", "some"])
    assert bad.exit_code == 2 and "give 0 (head only), a number of blocks, or all" in bad.output


def test_ctrl_c_says_how_to_continue(runner, monkeypatch):
    import embedder.job
    import workflows.finetune.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # where it is defined: patching the lazy package would leave the original bound there after the test
    monkeypatch.setattr(workflows.finetune.run, "finetune", interrupted)
    monkeypatch.setattr(embedder.job, "extract", interrupted)
    result = runner.invoke(cli.main, ["finetune", "photos", "-o", "runs/x"])
    assert result.exit_code == 130 and "run the same command with --resume" in result.stderr
    result = runner.invoke(cli.main, ["extract", "photos"])
    assert result.exit_code == 130 and "whatever was embedded before is kept" in result.stderr


def test_ctrl_c_in_extract_says_how_many_images_it_kept(runner, tmp_path, monkeypatch):
    """Interrupted in its second batch, extract says the first batch's 4 images are kept, and the next run
    embeds only the other 5; interrupted in its first, that nothing was finished."""
    from embedder.engines.guard import BatchRunner

    root = tmp_path / "images"
    write_tree(root)
    cache, calls = tmp_path / "c.h5", []
    original = BatchRunner.__call__

    def stop_at(n):
        def call(self, images):
            calls.append(len(images))
            if len(calls) == n:
                raise KeyboardInterrupt
            return original(self, images)

        return call

    monkeypatch.setattr(BatchRunner, "__call__", stop_at(1))
    first = runner.invoke(cli.main, ["extract", str(root), "--cache", str(cache), *FAST_ARGS])
    assert first.exit_code == 130
    assert "Interrupted: no image of the 9 to embed was finished, the cache is as it was" in first.stderr
    calls.clear()
    monkeypatch.setattr(BatchRunner, "__call__", stop_at(2))
    second = runner.invoke(cli.main, ["extract", str(root), "--cache", str(cache), *FAST_ARGS])
    assert second.exit_code == 130 and "Interrupted: the 4 of 9 images embedded so far are kept;" in second.stderr
    monkeypatch.setattr(BatchRunner, "__call__", original)
    again = runner.invoke(cli.main, ["extract", str(root), "--cache", str(cache), "--json", *FAST_ARGS])
    summary = json.loads(again.stdout)
    assert (summary["reused"], summary["embedded"], summary["rows"]) == (4, 5, 9)


def test_cv_ranks_several_caches_and_train_search_honours_groups(runner, tmp_path):
    from helpers import synthetic_cache
    from test_bundle import near_copies
    from test_crossval import write_cache

    X, y = synthetic_cache(tmp_path / "a.h5")
    paths = [f"class{c}/img{i:03d}.jpg" for i, c in enumerate(y)]
    labels = [f"class{c}" for c in y]
    write_cache(
        tmp_path / "b.h5", paths[::-1], labels[::-1], {"classifier.0": X[::-1, :4]}, {"backbone": "mobilenet_v2"}
    )
    args = [
        "cv",
        str(tmp_path / "a.h5"),
        str(tmp_path / "b.h5"),
        "-c",
        "logreg",
        "-l",
        "flatten,classifier.0",
        "--folds",
        "3",
    ]
    result = runner.invoke(cli.main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert [(r["backbone"], r["layer"]) for r in d["leaderboard"]] == [
        ("resnet18", "flatten"),
        ("mobilenet_v2", "classifier.0"),
    ]
    assert d["leaderboard"][1]["p_value"] > 0 and d["cv"]["folds_from"].startswith(str(tmp_path / "a.h5"))
    human = runner.invoke(cli.main, args).stdout.splitlines()
    assert human[1:4] == [
        f"  resnet18: {tmp_path / 'a.h5'}",
        f"  mobilenet_v2: {tmp_path / 'b.h5'}",
        f"  folds from {tmp_path / 'a.h5'} (the first cache; every cache's rows aligned to it by path)",
    ]
    assert human[4].split()[:3] == ["#", "backbone", "classifier"] and human[5].split()[:4] == [
        "1",
        "resnet18",
        "logreg",
        "flatten",
    ]
    write_cache(tmp_path / "other.h5", paths[:-1], labels[:-1], {"flatten": X[:-1]})
    refused = runner.invoke(cli.main, ["cv", str(tmp_path / "a.h5"), str(tmp_path / "other.h5"), "-c", "logreg"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output and refused.output.count("\n") == 1
    assert refused.output.startswith(
        "Error: the caches do not hold the same labelled images: 1 labelled image(s) "
        f"only in {tmp_path / 'a.h5'} (e.g. class2/img029.jpg)"
    )

    near_copies(tmp_path / "g.h5")
    trained = runner.invoke(
        cli.main, ["train", str(tmp_path / "g.h5"), "-c", "knn", "--search", "-o", str(tmp_path / "g.joblib"), "--json"]
    )
    assert trained.exit_code == 0, trained.output
    found = json.loads(trained.stdout)["trained_on"]["search"]
    assert found["splitter"] == "StratifiedGroupKFold" and found["best_params"] == {"clf__n_neighbors": 5}
    leaky = runner.invoke(
        cli.main,
        ["train", str(tmp_path / "g.h5"), "-c", "knn", "--search", "--no-groups", "-o", str(tmp_path / "l.joblib")],
    )
    assert (
        '  search: StratifiedKFold (3 folds), chose {"clf__n_neighbors": 1} (balanced accuracy 1.000 on the '
        "inner folds: the score that chose it, so optimistic; cv --search scores the choice on folds it never saw)"
        in leaky.output
    )


def test_train_quiet_prints_nothing_and_writes_the_model(runner, tmp_path):
    from helpers import synthetic_cache

    from classifiers.bundle import load_bundle

    X, _ = synthetic_cache(tmp_path / "c.h5", counts=(8, 8), dim=6)
    args = ["train", str(tmp_path / "c.h5"), "-c", "ridge", "--no-calibrate", "-l", "flatten"]
    quiet = runner.invoke(cli.main, [*args, "-q", "-o", str(tmp_path / "q.fbmodel")])
    assert quiet.exit_code == 0 and quiet.output == ""
    said = runner.invoke(cli.main, [*args, "-o", str(tmp_path / "s.fbmodel")])
    assert "saved" in said.output and "not calibrated (asked for: --no-calibrate, calibrate=False)" in said.output
    q, s = load_bundle(tmp_path / "q.fbmodel"), load_bundle(tmp_path / "s.fbmodel")
    assert q.calibration == s.calibration and q.calibration["method"] == "none"
    np.testing.assert_array_equal(q.scores(X)[0], s.scores(X)[0])  # the same model, only unsaid


def test_a_finetune_checkpoint_names_its_backbone_and_is_not_taken_for_a_model_file(runner, tmp_path):
    """``predict --head -w best.pth`` without -b had tried resnet50 (267 missing keys); evaluate and predict with
    the checkpoint where a model file goes had said only 'not a featurebank model file'."""
    import torch

    from embedder.backbones.registry import load_backbone
    from embedder.kernel.preprocess import Preprocessing

    net = load_backbone("resnet18", "none").model
    net.fc = torch.nn.Linear(512, 3)
    best = tmp_path / "best.pth"
    torch.save(
        {
            "state_dict": net.state_dict(),
            "classes": ["cats", "dogs", "owls"],
            "preprocessing": Preprocessing(resize=72, crop=64).to_dict(),
            "featurebank": {"backbone": "resnet18"},
        },
        best,
    )
    root = tmp_path / "images"
    write_tree(root, per_class=1)
    args = ["--cache", str(tmp_path / "c.h5"), "--batch-size", "4", "--workers", "0"]
    head = runner.invoke(cli.main, ["predict", "--head", "-w", str(best), str(root), "--json", *args])
    assert head.exit_code == 0, head.output
    rows = json.loads(head.stdout)["rows"]
    assert len(rows) == 3 and {t["class"] for t in rows[0]["top"]} == {"cats", "dogs", "owls"}
    said = f"Error: {best} is a PyTorch checkpoint, not a featurebank model file: a network from `featurebank finetune`"
    for command in (["evaluate", str(best), str(root)], ["predict", str(best), str(root)]):
        result = runner.invoke(cli.main, command)
        assert result.exit_code == 1 and result.stderr.startswith(said), result.output
        assert f"featurebank predict --head -w {best} IMAGES" in result.stderr
