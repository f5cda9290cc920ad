"""A model file written by featurebank 0.1.0 still loads and predicts what it did then: skops records where each of
its classes is defined (``classifiers.ensemble.ZooEnsemble``, ``classifiers.registry.BlockedScaler``, …), so a
module that moves must leave an alias behind (``classifiers.modelfile``) or old files stop loading.

``tests/data/model-0.1.0.fbmodel`` is the zoo's default ``ensemble`` (logreg, rbf-svm with PCA, knn; a soft vote)
trained by release 0.1.0 on the synthetic cache of ``conftest.synthetic_cache(counts=(10, 10, 10), dim=12)``;
``model-0.1.0-expected.npz`` holds six query rows and the probabilities that release gave them."""

from __future__ import annotations

import pathlib
import zipfile

import numpy as np
import skops.io

from classifiers.bundle import load_bundle

DATA = pathlib.Path(__file__).resolve().parent / "data"
OLD = DATA / "model-0.1.0.fbmodel"


def test_the_old_file_names_featurebank_classes():
    """The file is a meaningful check: it names five featurebank classes by their 0.1.0 modules."""
    names = skops.io.get_untrusted_types(data=zipfile.ZipFile(OLD).read("pipeline.skops"))
    assert {n for n in names if n.startswith("classifiers.")} == {
        "classifiers.ensemble.ZooEnsemble",
        "classifiers.linear.TunedLogisticRegression",
        "classifiers.neighbours.CosineKNeighbors",
        "classifiers.registry.BlockedScaler",
        "classifiers.registry.ReducedPCA",
    }


def test_a_model_file_of_release_0_1_0_predicts_as_it_did():
    bundle = load_bundle(OLD)
    expected = np.load(DATA / "model-0.1.0-expected.npz")
    assert bundle.classes == ["class0", "class1", "class2"]
    assert bundle.classifier == "ensemble" and bundle.layer == "flatten"
    assert bundle.predict(expected["X"]).tolist() == [0, 1, 2, 0, 2, 1]
    proba, kind = bundle.scores(expected["X"])
    assert kind == "probability"
    np.testing.assert_allclose(proba, expected["proba"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(proba[0], [0.84787, 0.054116, 0.098014], atol=1e-5)
