"""Real photos and a real ImageNet checkpoint (../shared): the cache equals loading the state dict by hand,
and the features classify ants and bees as well as the PyTorch tutorial reports."""
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.linear_model import LogisticRegression
from torchvision.transforms._presets import ImageClassification

import embedder
from embedder.cache import CacheReader

from conftest import HYMENOPTERA, MOBILENET_V2, need

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    need(HYMENOPTERA)
    need(MOBILENET_V2)
    out = tmp_path_factory.mktemp("real")
    return {split: embedder.extract(str(HYMENOPTERA / split), str(out / f"{split}.h5"), backbone="mobilenet_v2",
                                    weights=str(MOBILENET_V2), batch_size=16)
            for split in ("train", "val")}


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
        ref = model(torch.stack([preset(Image.open(HYMENOPTERA / "val" / reader.paths[i]).convert("RGB"))
                                 for i in pick])).numpy()
    np.testing.assert_allclose(reader.features()[pick], ref, rtol=1e-4, atol=1e-4)


def test_real_folder_is_fully_embedded_and_linearly_separable(caches):
    train, val = caches["train"], caches["val"]
    assert (train.rows, val.rows, train.failed, val.failed) == (245, 153, [], [])
    assert "ants/imageNotFound.gif" in CacheReader(train.cache).paths  # a valid GIF: a row, junk or not
    X, y, _ = embedder.load(train.cache)
    Xv, yv, _ = embedder.load(val.cache)
    accuracy = LogisticRegression(max_iter=3000).fit(X, y).score(Xv, yv)
    assert accuracy > 0.90  # the tutorial reports about 94-95 % with ResNet-18
