"""Fine-tuning on tiny CPU runs: what is frozen stays bit-identical, learning rates are as asked, a resumed run
follows the uninterrupted one exactly, and the result is a checkpoint like any other."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_bad_files, write_tree
from embedder import CacheReader, extract, load_backbone
from embedder.backbones import skeleton
from embedder.errors import FeaturebankError
from embedder.finetune import (block_names, finetune, freeze, linear_probe, param_groups, replace_head,
                               unfrozen_blocks)

TINY = dict(backbone="resnet18", weights="none", resize=72, crop=64, batch_size=4, workers=0, val_split=0.25)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    write_tree(root, per_class=4)
    return root


def _last(out) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


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


def test_the_probe_is_the_zoos_logreg():
    """embedder/ does not import classifiers/, so the probe is written out; it must stay the zoo's linear probe."""
    from classifiers.zoo import make_classifier

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 4)), np.repeat([0, 1], 10)
    probe, _ = linear_probe(X, y, 2)
    zoo = make_classifier("logreg")
    assert probe[-1].get_params() == {**zoo.named_steps["clf"].get_params(), "random_state": 0}
    np.testing.assert_allclose(probe.predict_proba(X), zoo.fit(X, y).predict_proba(X))


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


def test_checkpoint_is_a_backbone_like_any_other(images, tmp_path):
    from classifiers.bundle import predict_imagenet

    result = finetune(str(images), str(tmp_path / "run"), epochs=2, from_scratch=True, **TINY)
    assert [r["model"].split(" (")[0] for r in result.comparison] == ["frozen linear probe", "fine-tuned", "from scratch"]
    summary = extract(images, str(tmp_path / "ft.h5"), backbone="resnet18", weights=result.checkpoint, batch_size=4,
                      workers=0)
    settings = CacheReader(summary.cache).settings
    assert settings["weights"].startswith("sha256:") and settings["weights"] != "none:seed=0"
    assert (settings["preprocessing"]["resize"], settings["preprocessing"]["crop"]) == (72, 64)  # carried by the file
    head = predict_imagenet([str(images)], backbone="resnet18", weights=result.checkpoint, top=3, batch_size=4, workers=0)
    assert {t["class"] for t in head["rows"][0]["top"]} == {"cats", "dogs", "owls"}
    val = json.loads((tmp_path / "run" / "report.json").read_text())
    assert val["best_epoch"] == result.best_epoch and (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "run" / "log.csv").read_text().splitlines()[0].startswith("epoch,train_loss,train_accuracy,val_loss")
    assert (tmp_path / "run" / "scratch" / "log.csv").read_text().count("\n") == 4  # header, epochs 0 to 2
    scratch = _last(tmp_path / "run" / "scratch")["model"]
    base = load_backbone("resnet18", "none").model.state_dict()
    assert not torch.equal(scratch["conv1.weight"], base["conv1.weight"])  # from scratch, everything trains
    assert not torch.equal(scratch["bn1.running_mean"], base["bn1.running_mean"])


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
        finetune(str(two), str(tmp_path / "run"), augment="heavy", **TINY)
