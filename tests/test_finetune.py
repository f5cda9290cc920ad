"""Fine-tuning on tiny CPU runs: what is frozen stays bit-identical, learning rates are as asked, a resumed run
follows the uninterrupted one exactly, the result is a checkpoint like any other, the epoch is chosen on
validation only (test images cannot change it), and groups stay on one side of the split."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import write_bad_files, write_tree

from embedder import CacheReader, extract, load_backbone
from embedder.backbones.registry import skeleton
from embedder.kernel.errors import FeaturebankError
from workflows.finetune import (
    block_names,
    finetune,
    fold_linear,
    freeze,
    linear_probe,
    param_groups,
    replace_head,
    split_rows,
    unfrozen_blocks,
)

# the pixel path, named (the default, auto, takes views where they apply: tests/test_finetune_views.py)
TINY = dict(
    backbone="resnet18", weights="none", resize=72, crop=64, batch_size=4, workers=0, val_split=0.25, augment="pixels"
)

pytestmark = pytest.mark.usefixtures("own_cache_dir")


def _last(out) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


def _split(out) -> dict[str, list[dict]]:
    """split.csv of a run folder: its rows by part (train, val, test)."""
    parts: dict[str, list[dict]] = {}
    with open(out / "split.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parts.setdefault(row["part"], []).append(row)
    return parts


def _head_log_loss(checkpoint: str, rows: list[dict]) -> float:
    """Log-loss of a checkpoint's own head on images (``predict --head``, an independent path through the engine),
    for rows with a path and a label."""
    from classifiers.bundle import predict_imagenet

    got = predict_imagenet(
        [r["path"] for r in rows], backbone="resnet18", weights=checkpoint, top=10, batch_size=4, workers=0
    )["rows"]
    p = [{t["class"]: t["score"] for t in g["top"]}[r["label"]] for g, r in zip(got, rows)]
    return float(-np.mean(np.log(p)))


def test_blocks_by_family():
    assert block_names(skeleton("resnet18")) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    assert block_names(skeleton("mobilenet_v2")) == [f"features.{i}" for i in range(19)]
    assert block_names(skeleton("vgg11"))[-3:] == ["features.18", "classifier.0", "classifier.3"]
    assert unfrozen_blocks(skeleton("resnet18"), 2) == ["layer3", "layer4"]
    assert unfrozen_blocks(skeleton("resnet18"), 0) == []
    assert unfrozen_blocks(skeleton("resnet18"), "all") == block_names(skeleton("resnet18"))


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_only_the_unfrozen_block_and_head_change(images, tmp_path, bn):
    finetune(str(images), str(tmp_path / "run"), unfreeze=1, epochs=2, bn=bn, **TINY)
    before = load_backbone("resnet18", "none").model.state_dict()
    after = _last(tmp_path / "run")["model"]
    assert after["fc.weight"].shape == (3, 512)
    for key, value in before.items():
        if key.startswith("fc."):
            continue
        trained = key.startswith("layer4.")
        is_bn = ".bn" in key or "downsample.1" in key
        if not trained or (is_bn and bn == "frozen"):
            assert torch.equal(value, after[key]), f"{key} moved"  # bit-identical, statistics included
        elif key.endswith(("conv1.weight", "conv2.weight")) or (bn == "train" and key.endswith("running_mean")):
            assert not torch.equal(value, after[key]), f"{key} did not train"


def test_learning_rates_per_group(images, tmp_path):
    model = skeleton("resnet18")
    replace_head(model, 3)
    freeze(model, ["layer4"], "frozen")
    groups = param_groups(model, lr=0.01, backbone_lr_scale=0.1, weight_decay=0.0)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 0.01), ("backbone", 0.001)]
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups[0]["params"]) == ["fc.bias", "fc.weight"]
    backbone = [names[id(p)] for p in groups[1]["params"]]
    assert all(n.startswith("layer4.") and ".bn" not in n for n in backbone) and len(backbone) == 5  # 5 convs
    result = finetune(str(images), str(tmp_path / "run"), epochs=2, lr=0.01, backbone_lr_scale=0.1, **TINY)
    assert result.history[0]["epoch"] == 0 and result.history[0]["train_loss"] is None  # the untrained start
    first = result.history[1]
    assert (first["lr_head"], first["lr_backbone"]) == (0.01, 0.001)
    assert result.history[2]["lr_head"] == pytest.approx(0.005)  # cosine decay over 2 epochs


@pytest.mark.integration  # over 4 s on 2 cores: the second tier
def test_resume_follows_the_uninterrupted_trajectory(images, tmp_path):
    whole = finetune(str(images), str(tmp_path / "whole"), epochs=3, unfreeze=2, **TINY)

    def interrupt(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(str(images), str(tmp_path / "cut"), epochs=3, unfreeze=2, on_epoch_end=interrupt, **TINY)
    assert _last(tmp_path / "cut")["state"]["epoch"] == 1
    with pytest.raises(FeaturebankError, match="holds a run already: add --resume"):
        finetune(str(images), str(tmp_path / "cut"), epochs=3, unfreeze=2, **TINY)
    with pytest.raises(FeaturebankError, match="was started with lr=0.001, not 0.01"):
        finetune(str(images), str(tmp_path / "cut"), epochs=3, unfreeze=2, lr=0.01, resume=True, **TINY)
    resumed = finetune(str(images), str(tmp_path / "cut"), epochs=3, unfreeze=2, resume=True, **TINY)
    a, b = _last(tmp_path / "whole")["model"], _last(tmp_path / "cut")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history) and len(whole.history) == 4  # epochs 0 to 3
    # --resume where no epoch was saved (a typo in --out): said, then trained from the start, as before
    from embedder.kernel.errors import Note

    with pytest.warns(Note, match=r"--resume: .*fresh holds no saved epoch .*training starts at epoch 1"):
        fresh = finetune(str(images), str(tmp_path / "fresh"), epochs=1, unfreeze=2, resume=True, **TINY)
    assert len(fresh.history) == 2


# the keys of last.pt's "config" and best.pth's "featurebank", in order, as every featurebank so far wrote them
RECORDED_KEYS = [
    "backbone",
    "weights",
    "unfreeze",
    "epochs",
    "lr",
    "backbone_lr_scale",
    "weight_decay",
    "batch_size",
    "dropout",
    "bn",
    "augment",
    "probe_init",
    "patience",
    "seed",
    "precision",
    "workers",
    "classes",
    "train_images",
    "val_images",
    "validation",
]


@pytest.mark.integration  # over 4 s on 2 cores: the second tier
def test_every_training_option_is_recorded_under_its_own_name(images, tmp_path):
    """Each option, given a value unlike the others', reaches the config that last.pt, best.pth and the result
    record, under its own name, in the format older runs have (so their --resume still matches); a resume that
    differs in one option names it."""
    options = dict(
        unfreeze=2,
        epochs=1,
        lr=0.003,
        backbone_lr_scale=0.25,
        weight_decay=0.0007,
        batch_size=3,
        dropout=0.35,
        bn="train",
        augment="trivial",
        probe_init=False,
        patience=5,
        seed=11,
        precision="fp32",
        workers=0,
    )
    common = dict(backbone="resnet18", weights="none", resize=72, crop=64, val_split=0.25)
    result = finetune(str(images), str(tmp_path / "run"), **common, **options)
    expected = {
        "backbone": "resnet18",
        "weights": "none:seed=11",
        **options,
        "classes": ["cats", "dogs", "owls"],
        "train_images": 9,
        "val_images": 3,
        "validation": "--val-split 0.25 of DATA, stratified",
    }
    last = _last(tmp_path / "run")
    assert last["config"] == expected and list(last["config"]) == RECORDED_KEYS
    best = torch.load(tmp_path / "run" / "best.pth", map_location="cpu", weights_only=True)["featurebank"]
    assert {k: best[k] for k in RECORDED_KEYS} == expected and result.config == expected
    assert (result.history[1]["lr_head"], result.history[1]["lr_backbone"]) == (0.003, 0.003 * 0.25)
    # fields of one type swapped (lr and weight_decay) is another run, and --resume says which option differs
    with pytest.raises(FeaturebankError, match=r"was started with lr=0.003, not 0.0007; use the same options"):
        finetune(
            str(images),
            str(tmp_path / "run"),
            resume=True,
            **common,
            **{**options, "lr": 0.0007, "weight_decay": 0.003},
        )
    with pytest.raises(FeaturebankError, match=r"was started with probe_init=False, not True"):
        finetune(str(images), str(tmp_path / "run"), resume=True, **common, **{**options, "probe_init": True})
    resumed = finetune(str(images), str(tmp_path / "run"), resume=True, **common, **{**options, "patience": 1})
    assert len(resumed.history) == 2 and resumed.config == {**expected, "patience": 1}  # patience may change


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"epochs": 0}, "--epochs and --batch-size must be at least 1"),
        ({"lr": 0.0}, "--lr positive"),
        ({"dropout": 1.0}, r"--dropout in \[0, 1\)"),
        ({"augment": "heavy"}, "unknown augmentation 'heavy'"),
    ],
)
def test_bad_training_options_are_refused_before_anything_is_embedded(images, tmp_path, bad, message):
    with pytest.raises(FeaturebankError, match=message):
        finetune(str(images), str(tmp_path / "run"), **{**TINY, **bad})
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_the_probe_is_the_zoos_logreg():
    """The probe is the zoo's logreg Pipeline itself (same steps, same predictions), and only a linear pipeline
    folds into one Linear head."""
    from classifiers.zoo import describe, make_classifier

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 4)), np.repeat([0, 1], 10)
    probe, _ = linear_probe(X, y, 2)
    assert describe(probe) == describe("logreg") == "scale → TunedLogisticRegression()"
    np.testing.assert_array_equal(probe.predict_proba(X), make_classifier("logreg").fit(X, y).predict_proba(X))
    with pytest.raises(FeaturebankError, match="cannot start a Linear head"):
        fold_linear(make_classifier("logreg:pca=2").fit(X, y))


def test_head_starts_as_the_linear_probe():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8)) + np.repeat(np.eye(3, 8) * 3, 10, axis=0)
    y = np.repeat(np.arange(3), 10)
    probe, init = linear_probe(X, y, 3)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(8, 5))
    head = replace_head(model, 3, init)
    with torch.no_grad():
        logits = head(torch.as_tensor(X, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(logits, probe.decision_function(X), rtol=1e-4, atol=1e-4)
    # binary: two logits whose softmax is the probe's probability
    probe2, init2 = linear_probe(X[:20], y[:20], 2)
    head2 = replace_head(model, 2, init2)
    with torch.no_grad():
        p = torch.softmax(head2(torch.as_tensor(X[:20], dtype=torch.float32)), 1).numpy()
    np.testing.assert_allclose(p, probe2.predict_proba(X[:20]), atol=1e-4)


@pytest.mark.integration  # two trainings (fine-tuned, from scratch) and an extraction
def test_checkpoint_is_a_backbone_like_any_other(images, tmp_path):
    result = finetune(str(images), str(tmp_path / "run"), epochs=2, from_scratch=True, **TINY)
    assert [r["model"].split(" (")[0] for r in result.comparison] == [
        "frozen linear probe",
        "fine-tuned",
        "from scratch",
    ]
    summary = extract(
        images, str(tmp_path / "ft.h5"), backbone="resnet18", weights=result.checkpoint, batch_size=4, workers=0
    )
    settings = CacheReader(summary.cache).settings
    assert settings["weights"].startswith("sha256:") and settings["weights"] != "none:seed=0"
    assert (settings["preprocessing"]["resize"], settings["preprocessing"]["crop"]) == (72, 64)  # carried by the file
    # best.pth is the epoch with the best validation accuracy (then loss), and its own head scores what that epoch
    # scored on the validation images of the split actually used
    history = result.history
    best = max(range(len(history)), key=lambda e: (history[e]["val_accuracy"], -history[e]["val_loss"], -e))
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert result.best_epoch == best == saved["featurebank"]["epoch"]
    assert saved["classes"] == ["cats", "dogs", "owls"]
    val = _split(tmp_path / "run")["val"]
    assert len(val) == result.config["val_images"] == 3
    assert _head_log_loss(result.checkpoint, val) == pytest.approx(history[best]["val_loss"], abs=2e-3)
    assert result.comparison[1]["val_accuracy"] == history[best]["val_accuracy"]
    assert (
        (tmp_path / "run" / "log.csv")
        .read_text()
        .splitlines()[0]
        .startswith("epoch,train_loss,train_accuracy,val_loss")
    )
    assert (tmp_path / "run" / "scratch" / "log.csv").read_text().count("\n") == 4  # header, epochs 0 to 2
    scratch = _last(tmp_path / "run" / "scratch")["model"]
    base = load_backbone("resnet18", "none").model.state_dict()
    assert not torch.equal(scratch["conv1.weight"], base["conv1.weight"])  # from scratch, everything trains
    assert not torch.equal(scratch["bn1.running_mean"], base["bn1.running_mean"])
    # without --test, the numbers are validation numbers and say so
    assert result.reported_on == "validation" and "selection included" in result.note
    assert all(r[f"test_{k}"] is None for r in result.comparison for k in ("accuracy", "f1_macro", "log_loss"))
    assert result.note in (tmp_path / "run" / "report.md").read_text()


def test_the_curves_draw_the_history(tmp_path):
    from PIL import Image

    from classifiers.report.plots import training_curves, training_curves_png

    history = [
        {"epoch": 0, "train_loss": None, "train_accuracy": None, "val_loss": 1.1, "val_accuracy": 0.4},
        {"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.5, "val_loss": 0.8, "val_accuracy": 0.6},
        {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.9},
    ]
    fig = training_curves(history)
    loss, accuracy = fig.axes
    lines = {(ax.get_title(), line.get_label()): list(line.get_ydata()) for ax in fig.axes for line in ax.get_lines()}
    assert lines[("cross-entropy loss", "validation")] == [1.1, 0.8, 0.7]
    assert lines[("accuracy", "validation")] == [0.4, 0.6, 0.9]
    train = lines[("cross-entropy loss", "train")]
    assert np.isnan(train[0]) and train[1:] == [0.9, 0.5]  # epoch 0 has no training
    assert list(loss.get_lines()[0].get_xdata()) == [0, 1, 2]
    png = training_curves_png(history, str(tmp_path / "c.png"))
    with Image.open(png) as im:
        assert im.size == (1100, 440) and len(im.convert("RGB").getcolors(1 << 16)) > 50  # drawn, not blank


def test_bad_images_are_skipped_and_reported(images, tmp_path):
    bad = write_bad_files(images / "dogs")
    result = finetune(str(images), str(tmp_path / "run"), epochs=1, **TINY)
    reasons = {s["path"]: s["reason"] for s in result.skipped}
    for name, reason in bad.items():
        assert reasons[f"dogs/{name}"].startswith(reason)
    assert result.config["train_images"] + result.config["val_images"] == 12


def test_clear_errors(tmp_path):
    one = tmp_path / "one"
    write_tree(one, classes=("cats",), per_class=3)
    with pytest.raises(FeaturebankError, match="only one class"):
        finetune(str(one), str(tmp_path / "run"), **TINY)
    two = tmp_path / "two"
    write_tree(two, classes=("a", "b"), per_class=1)
    with pytest.raises(FeaturebankError, match="needs at least 2 per class"):
        finetune(str(two), str(tmp_path / "run"), **TINY)
    with pytest.raises(FeaturebankError, match="unknown augmentation"):
        finetune(str(two), str(tmp_path / "run"), **{**TINY, "augment": "heavy"})


@pytest.mark.integration
def test_test_images_never_influence_the_checkpoint(images, tmp_path):
    """The epoch is chosen on validation: two runs with other --test folders write the same best.pth, byte for byte,
    and the comparison is reported on the test images, each number recomputable by another path."""
    from classifiers.metrics import scores
    from classifiers.zoo import make_classifier

    write_tree(tmp_path / "test1", per_class=2, start=100)
    write_tree(tmp_path / "test2", per_class=3, start=200)
    a = finetune(str(images), str(tmp_path / "a"), test=str(tmp_path / "test1"), epochs=2, **TINY)
    b = finetune(str(images), str(tmp_path / "b"), test=str(tmp_path / "test2"), epochs=2, **TINY)
    assert (tmp_path / "a" / "best.pth").read_bytes() == (tmp_path / "b" / "best.pth").read_bytes()
    last_a, last_b = _last(tmp_path / "a")["model"], _last(tmp_path / "b")["model"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    val = lambda r: {k: v for k, v in r.items() if k.startswith("val_")}  # noqa: E731
    assert [val(r) for r in a.comparison] == [val(r) for r in b.comparison]
    assert (a.reported_on, a.test_images, b.test_images) == (
        "test",
        6,
        9,
    ) and "nothing was trained or selected" in a.note
    # the probe's test numbers: the zoo's logreg fit on the training part of the cache, scored on the test cache
    split = _split(tmp_path / "a")
    assert len(split["test"]) == 6 and not {r["path"] for r in split["test"]} & {
        r["path"] for r in split["train"] + split["val"]
    }
    fast = dict(
        backbone="resnet18", weights="none", resize=72, crop=64, layers=["penultimate"], batch_size=4, workers=0
    )
    train_cache = CacheReader(extract(images, **fast).cache)
    test_cache = CacheReader(extract(tmp_path / "test1", **fast).cache)
    classes = ["cats", "dogs", "owls"]
    rows = [i for i, p in enumerate(train_cache.full_paths()) if p in {r["path"] for r in split["train"]}]
    probe = make_classifier("logreg").fit(
        train_cache.features()[rows], [classes.index(c) for c in train_cache.labels[rows]]
    )
    y_test = np.array([classes.index(c) for c in test_cache.labels])
    expected = scores(y_test, probe.predict(test_cache.features()), probe.predict_proba(test_cache.features()), 3)
    assert {k: a.comparison[0][f"test_{k}"] for k in expected} == pytest.approx(expected)
    # the fine-tuned row's test numbers are those of best.pth (the chosen epoch), not of the last epoch
    assert a.comparison[1]["test_log_loss"] == pytest.approx(_head_log_loss(a.checkpoint, split["test"]), abs=2e-3)
    md = (tmp_path / "a" / "report.md").read_text()
    assert "| test accuracy % |" in md and a.note in md


def test_test_images_that_are_training_images_are_refused(images, tmp_path):
    with pytest.raises(FeaturebankError, match="also a training or validation image"):
        finetune(str(images), str(tmp_path / "run"), test=str(images), epochs=1, **TINY)
    copy = tmp_path / "copy" / "cats"
    copy.mkdir(parents=True)
    shutil.copy(images / "dogs" / "img01.png", copy / "renamed.png")  # same bytes, another name and class
    with pytest.raises(
        FeaturebankError,
        match=r"holds 1 image\(s\) whose bytes equal a training or validation image "
        r"\(cats/renamed.png\).*give --drop-test-copies",
    ):
        finetune(str(images), str(tmp_path / "run"), test=str(tmp_path / "copy"), epochs=1, **TINY)
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before any training


def test_drop_test_copies_leaves_the_copies_out_of_the_test_numbers(images, tmp_path):
    test = tmp_path / "test"
    write_tree(test, per_class=2, start=40)
    shutil.copy(images / "dogs" / "img01.png", test / "cats" / "renamed.png")  # same bytes as a training image
    r = finetune(str(images), str(tmp_path / "run"), test=str(test), drop_test_copies=True, epochs=1, **TINY)
    assert r.test_dropped == ["cats/renamed.png"] and r.test_images == 6
    assert "1 test image(s) whose bytes equal a training or validation image were left out" in r.note
    with open(tmp_path / "run" / "split.csv", newline="") as fh:
        tested = [row["path"] for row in csv.DictReader(fh) if row["part"] == "test"]
    assert len(tested) == 6 and not any(p.endswith("renamed.png") for p in tested)


def test_split_keeps_groups_on_one_side_and_spreads_ungrouped_rows():
    y = np.repeat([0, 1, 2], 20)
    groups = np.array([f"g{i // 3}" if i % 20 < 9 else "\0" + str(i) for i in range(60)], dtype=object)
    train, val = split_rows(y, groups, 0.2, seed=0)
    assert sorted([*train, *val]) == list(range(60)) and 8 <= len(val) <= 16
    named = {g for g in groups if not g.startswith("\0")}
    for g in named:
        sides = {"val" if i in set(val) else "train" for i in np.flatnonzero(groups == g)}
        assert len(sides) == 1, g
    ungrouped = [i for i in range(60) if groups[i].startswith("\0")]
    assert set(ungrouped) & set(val) and set(ungrouped) & set(train)  # not one group "" on one side
    assert set(y[val].tolist()) == {0, 1, 2}
    again = split_rows(y, groups, 0.2, seed=0)
    assert all(np.array_equal(p, q) for p, q in zip((train, val), again))
    with pytest.raises(FeaturebankError, match="3 groups: a --val-split of 0.2 keeps 1 of 5"):
        split_rows(np.repeat([0, 1], 3), np.array(list("aabbcc"), dtype=object), 0.2, seed=0)


@pytest.mark.parametrize(
    "y, share, said",
    [
        (np.repeat([0, 1, 2], 3), 0.2, "--val-split 0.2 of 9 images holds out 2, fewer than the 3 classes: "),
        (
            np.repeat([0, 1], 6),
            0.05,
            "holds out 1, fewer than the 2 classes: a stratified split needs one of each on "
            "both sides; give a --val-split from 0.17 to 0.83, or --val DATA",
        ),
        (np.repeat([0, 1], 6), 0.9, "--val-split 0.9 of 12 images leaves to train on 1, fewer than the 2 classes"),
        (np.repeat([0, 1, 2], 1), 0.5, "class 0 has 1 image(s): a stratified --val-split needs at least 2 per class"),
    ],
)
def test_a_val_split_too_small_or_too_large_for_the_classes_is_one_line(y, share, said):
    """Not scikit-learn's traceback (the default 0.2 on 9 images of 3 classes had been one)."""
    with pytest.raises(FeaturebankError) as err:
        split_rows(y, None, share, seed=0)
    assert said in str(err.value) and "\n" not in str(err.value)
    low, high = 0.17, 0.83  # the bounds said are safe: at each, both sides hold every class
    for bound in (low, high):
        train, val = split_rows(np.repeat([0, 1], 6), None, bound, seed=0)
        assert set(np.repeat([0, 1], 6)[train]) == set(np.repeat([0, 1], 6)[val]) == {0, 1}


def _manifest(path, images, groups: dict[str, str]):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for p in sorted(images.rglob("*.*")):
            rel = p.relative_to(images).as_posix()
            writer.writerow([f"{images.name}/{rel}", rel.split("/")[0], groups.get(rel, "")])


def test_groups_stay_on_one_side_in_the_split_used(images, tmp_path):
    """A manifest where only some images have a group: the run's split (split.csv) keeps each group on one side,
    the ungrouped images spread over both; a --val or --test sharing a group with DATA is refused."""
    groups = {
        f"{c}/img{i:02d}.{'jpg' if i % 2 == 0 else 'png'}": f"{c}-pair"
        for c in ("cats", "dogs", "owls")
        for i in (0, 1)
    }
    _manifest(tmp_path / "data.csv", images, groups)
    result = finetune(str(tmp_path / "data.csv"), str(tmp_path / "run"), epochs=1, **TINY)
    split = _split(tmp_path / "run")
    side = {r["path"]: part for part, rows in split.items() for r in rows}
    assert len(side) == 12 and result.config["val_images"] == len(split["val"])
    for g in set(groups.values()):
        assert len({side[r["path"]] for rows in split.values() for r in rows if r["group"] == g}) == 1, g
    ungrouped = {side[r["path"]] for rows in split.values() for r in rows if not r["group"]}
    assert ungrouped == {"train", "val"}
    assert "groups kept on one side" in result.config["validation"]
    other = tmp_path / "other"
    write_tree(other, per_class=2, start=300)
    _manifest(tmp_path / "other.csv", other, {"cats/img00.jpg": "cats-pair"})
    with pytest.raises(FeaturebankError, match="--val shares 1 group"):
        finetune(str(tmp_path / "data.csv"), str(tmp_path / "v"), val=str(tmp_path / "other.csv"), epochs=1, **TINY)
    with pytest.raises(FeaturebankError, match="shares group 'cats-pair'"):
        finetune(str(tmp_path / "data.csv"), str(tmp_path / "t"), test=str(tmp_path / "other.csv"), epochs=1, **TINY)


def test_the_command_says_what_its_numbers_are(images, tmp_path):
    from click.testing import CliRunner

    import cli

    write_tree(tmp_path / "test", per_class=2, start=100)
    args = [
        "finetune",
        str(images),
        "-o",
        str(tmp_path / "run"),
        "-b",
        "resnet18",
        "-w",
        "none",
        "--resize",
        "72",
        "--crop",
        "64",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--epochs",
        "1",
        "--val-split",
        "0.25",
        "-q",
    ]
    done = CliRunner().invoke(cli.main, [*args, "--test", str(tmp_path / "test")])
    assert done.exit_code == 0, done.output
    d = json.loads((tmp_path / "run" / "report.json").read_text())
    lines = done.output.splitlines()
    assert lines[1] == d["note"] and lines[2].split() == [
        "model", "test", "acc", "%", "right", "95", "%", "interval", "bal.", "acc", "%", "val", "acc", "%",
        "(selection)", "seconds",
    ]  # fmt: skip
    probe = d["comparison"][0]
    lo, hi = probe["test_accuracy_interval"]
    assert probe["test_total"] == 6 and probe["test_right"] == round(6 * probe["test_accuracy"])
    assert lines[3].split()[-6:-1] == [
        f"{100 * probe['test_accuracy']:.2f}",
        f"{probe['test_right']}/6",
        f"{100 * lo:.1f}-{100 * hi:.1f}",
        *(f"{100 * probe[k]:.2f}" for k in ("test_balanced_accuracy", "val_accuracy")),
    ]
    refused = CliRunner().invoke(cli.main, [*args[:3], str(tmp_path / "other"), *args[4:], "--test", str(images)])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert refused.output.startswith("Error: --test ") and "also a training or validation image" in refused.output


def test_the_result_table_has_a_val_column_beside_the_test_one_and_not_twice_without_a_test_set():
    from workflows.finetune.report import result_text

    row = {"model": "fine-tuned", "val_accuracy": 0.9, "val_balanced_accuracy": 0.8, "seconds": 12.0}
    base = {
        "blocks": ["features.18"], "trainable_parameters": 1000, "note": "n", "skipped": [], "checkpoint": "best.pth",
        "best_epoch": 2, "files": {"report_html": "report.html"},
    }  # fmt: skip
    on_val = result_text({**base, "reported_on": "val", "comparison": [row]})
    assert on_val[2].split() == ["model", "val", "acc", "%", "(selection)", "bal.", "acc", "%", "seconds"]
    assert on_val[3].split() == ["fine-tuned", "90.00", "80.00", "12.0"]
    tested = {**row, "test_accuracy": 0.7, "test_balanced_accuracy": 0.6, "test_right": 7, "test_total": 10,
              "test_accuracy_interval": [0.39678, 0.89222]}  # fmt: skip
    on_test = result_text({**base, "reported_on": "test", "comparison": [tested]})
    assert on_test[2].split() == [
        "model", "test", "acc", "%", "right", "95", "%", "interval", "bal.", "acc", "%", "val", "acc", "%",
        "(selection)", "seconds",
    ]  # fmt: skip
    assert on_test[3].split() == ["fine-tuned", "70.00", "7/10", "39.7-89.2", "60.00", "90.00", "12.0"]
