"""Real photos and a real ImageNet checkpoint (../shared): the cache equals loading the state dict by hand,
and the features classify ants and bees as well as the PyTorch tutorial reports."""

import numpy as np
import pytest
import torch
import torchvision
from helpers import HYMENOPTERA, MOBILENET_V2, need
from PIL import Image
from sklearn.linear_model import LogisticRegression
from torchvision.transforms._presets import ImageClassification

import embedder
from embedder.cache.hdf5 import CacheReader

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    need(HYMENOPTERA)
    need(MOBILENET_V2)
    out = tmp_path_factory.mktemp("real")
    return {
        split: embedder.extract(
            str(HYMENOPTERA / split),
            str(out / f"{split}.h5"),
            backbone="mobilenet_v2",
            weights=str(MOBILENET_V2),
            batch_size=16,
        )
        for split in ("train", "val")
    }


def test_checkpoint_features_equal_loading_the_state_dict_by_hand(caches):
    reader = CacheReader(caches["val"].cache)
    assert reader.settings["weights"] == "sha256:c07abd0af560dcff50319826dec5af94a684dd19eb958d4d1863a6367a08a31b"
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(MOBILENET_V2, weights_only=True), strict=True)
    model.classifier[1] = torch.nn.Identity()
    model.eval()
    preset = ImageClassification(crop_size=224, resize_size=256)
    pick = np.arange(0, len(reader), 10)
    with torch.no_grad():
        ref = model(
            torch.stack([preset(Image.open(HYMENOPTERA / "val" / reader.paths[i]).convert("RGB")) for i in pick])
        ).numpy()
    np.testing.assert_allclose(reader.features()[pick], ref, rtol=1e-4, atol=1e-4)


def test_real_folder_is_fully_embedded_and_linearly_separable(caches):
    train, val = caches["train"], caches["val"]
    assert (train.rows, val.rows, train.failed, val.failed) == (245, 153, [], [])
    assert "ants/imageNotFound.gif" in CacheReader(train.cache).paths  # a valid GIF: a row, junk or not
    X, y, _ = embedder.load(train.cache)
    Xv, yv, _ = embedder.load(val.cache)
    accuracy = LogisticRegression(max_iter=3000).fit(X, y).score(Xv, yv)
    assert accuracy > 0.90  # the tutorial reports about 94-95 % with ResNet-18


def test_cv_train_evaluate_and_the_junk_file_on_real_photos(caches, tmp_path):
    from classifiers.bundle import evaluate, train
    from classifiers.crossval import cross_validate

    report = cross_validate(caches["train"].cache, classifiers=["logreg", "knn", "lda"], folds=5)
    assert report.best.metric("accuracy")["mean"] > 0.9
    _, outliers = report.outliers(3)
    assert outliers[0]["path"] == "ants/imageNotFound.gif"  # the placeholder is unlike any photo
    judge, suspicious = report.suspicious(5)
    assert judge.classifier == "logreg" and all(s["label"] != s["predicted"] for s in suspicious)
    bundle = train(caches["train"].cache, classifier="logreg", out=str(tmp_path / "m.joblib"))
    result = evaluate(str(tmp_path / "m.joblib"), caches["val"].cache)
    assert result["rows"] == 153 and result["metrics"]["accuracy"] > 0.9
    assert bundle.classes == ["ants", "bees"]


def test_the_checkpoints_own_imagenet_head_knows_ants_from_bees(caches, tmp_path, monkeypatch):
    from classifiers.bundle import predict_imagenet

    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path))
    images = [str(HYMENOPTERA / "val" / "ants"), str(HYMENOPTERA / "val" / "bees")]
    result = predict_imagenet(images, backbone="mobilenet_v2", weights=str(MOBILENET_V2), top=5, batch_size=16)
    assert result["layer"] == "classifier.1" and len(result["rows"]) == 153
    top1 = [(r["path"].split("/")[-2], r["predicted"]) for r in result["rows"]]
    ants = [p for folder, p in top1 if folder == "ants"]
    bees = [p for folder, p in top1 if folder == "bees"]
    assert ants.count("ant") > 0.5 * len(ants) and bees.count("bee") > 0.5 * len(bees)
    # the scores are the 5 largest of the softmax over all 1000 logits in the cache, best first
    reader = CacheReader(result["cache"])
    logits = reader.features(result["layer"]).astype(np.float64)
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    row_of = {p: i for i, p in enumerate(reader.paths)}
    for r in result["rows"]:
        expected = np.sort(proba[row_of[r["path"]]])[::-1][:5]
        assert [t["score"] for t in r["top"]] == pytest.approx(expected, abs=1e-6)
    assert max(sum(t["score"] for t in r["top"]) for r in result["rows"]) <= 1 + 1e-5


def test_finetuning_starts_exactly_at_the_linear_probe(caches, tmp_path, monkeypatch):
    """The probe-initialized network (epoch 0) scores what the probe scores on the same validation photos, and
    one epoch on the last block leaves every other parameter and every BatchNorm statistic as loaded."""
    from workflows.finetune import finetune

    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    run = finetune(
        str(HYMENOPTERA / "train"),
        str(tmp_path / "run"),
        val=str(HYMENOPTERA / "val"),
        backbone="mobilenet_v2",
        weights=str(MOBILENET_V2),
        unfreeze=1,
        epochs=1,
        batch_size=16,
    )
    probe = run.comparison[0]
    assert probe["val_accuracy"] > 0.9 and run.history[0]["val_accuracy"] == pytest.approx(probe["val_accuracy"])
    assert run.blocks == ["features.18"]
    loaded = torch.load(MOBILENET_V2, weights_only=True)
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    for key, value in loaded.items():
        if not key.startswith(("features.18.", "classifier.")) or (key.startswith("features.18.1.")):  # 18.1 is BN
            assert torch.equal(value, trained[key]), key
    assert not torch.equal(loaded["features.18.0.weight"], trained["features.18.0.weight"])


def test_label_issues_on_other_photos_with_flipped_labels(caches):
    """The held-out check of label issues: hymenoptera val/, which benchmarks/label_noise.py (train/ only) never
    saw, 10 % of its labels flipped (seeded); the default signals rank the flips first and count them."""
    from sklearn.model_selection import cross_val_predict

    from classifiers.crossval import make_splits
    from classifiers.label_issues import MEMBERS, NEIGHBOURS, combine, find_label_issues, neighbour_probs
    from classifiers.neighbours import nearest_neighbours
    from classifiers.zoo import make_classifier

    X, names, _ = embedder.load(caches["val"].cache)
    y = np.searchsorted(np.unique(names), names)  # ants 0, bees 1
    rng = np.random.default_rng(0)
    flipped = np.sort(rng.choice(len(y), 15, replace=False))
    noisy = y.copy()
    noisy[flipped] = 1 - y[flipped]
    folds = [(s.train, s.test) for s in make_splits(noisy, folds=5, seed=0)]
    members = [
        cross_val_predict(make_classifier(spec), X, noisy, cv=folds, method="predict_proba")
        for spec in ("logreg", "lda", "knn")
    ][:MEMBERS]
    index, _ = nearest_neighbours(X.astype(np.float32).copy(), NEIGHBOURS)
    rows = np.arange(len(noisy))
    best = min(members, key=lambda p: -np.log(np.clip(p[rows, noisy], 1e-15, 1)).mean())  # sizes the set, as cv
    found = find_label_issues(noisy, combine(members, neighbour_probs(index, noisy, 2)), size_from=best)
    hits = len(set(found.order[:15].tolist()) & set(flipped.tolist()))
    assert hits >= 12  # top-K precision at least 80 % (K = 15 flipped)
    assert 10 <= found.estimated <= 30  # the estimate within a factor 1.5 below, 2 above the truth
    assert found.flagged[flipped].sum() >= 12
