"""Backbones: weights identities, local checkpoints, seeded random init, node names and sizes, offline errors."""

import hashlib
import urllib.error

import pytest
import torch
import torchvision

from embedder.backbones.registry import (
    feature_dim,
    layer_shapes,
    load_backbone,
    resolve_layers,
    resolve_weights,
    skeleton,
)
from embedder.kernel.errors import FeaturebankError


def test_weights_names_resolve_to_recorded_identities():
    assert resolve_weights("resnet50", "DEFAULT").identity == "ResNet50_Weights.IMAGENET1K_V2"
    assert resolve_weights("resnet50", "IMAGENET1K_V1").identity == "ResNet50_Weights.IMAGENET1K_V1"
    assert resolve_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V1").identity == "ResNet50_Weights.IMAGENET1K_V1"
    assert resolve_weights("resnet50", "none", seed=7).identity == "none:seed=7"
    with pytest.raises(FeaturebankError, match="unknown weights 'IMAGENET9K' for resnet50: choose one of DEFAULT"):
        resolve_weights("resnet50", "IMAGENET9K")
    with pytest.raises(FeaturebankError, match="did you mean resnet50"):
        resolve_weights("resnet5O", "DEFAULT")


def test_a_weights_download_that_cannot_happen_is_one_line_that_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(FeaturebankError) as err:
        load_backbone("resnet18", "DEFAULT")
    message = str(err.value)
    assert "\n" not in message
    assert "cannot download ResNet18_Weights.IMAGENET1K_V1" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message and "--weights" in message


def test_seeded_random_init_is_reproducible():
    a, b, c = (load_backbone("resnet18", "none", seed=s).model for s in (3, 3, 4))
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_local_state_dict_is_loaded_exactly_and_identified_by_sha256(tmp_path):
    ref = load_backbone("resnet18", "none", seed=11).model
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pt"
    torch.save(ref.state_dict(), plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        b = load_backbone("resnet18", str(path))
        assert b.weights.identity == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        for (k, v), (k2, v2) in zip(ref.state_dict().items(), b.model.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), k
        assert not b.model.training and not any(p.requires_grad for p in b.model.parameters())
    assert (b.preprocessing.resize, b.preprocessing.crop) == (256, 224)  # the family's classic recipe


def test_a_checkpoint_with_another_head_size_loads(tmp_path):
    two_classes = torchvision.models.resnet18(num_classes=2)
    torch.save(two_classes.state_dict(), tmp_path / "ft.pth")
    b = load_backbone("resnet18", str(tmp_path / "ft.pth"))
    assert b.model.fc.out_features == 2 and torch.equal(b.model.fc.weight, two_classes.fc.weight)


def test_bad_weights_files_are_clear_errors(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(FeaturebankError, match="does not fit mobilenet_v2: .*missing keys"):
        load_backbone("mobilenet_v2", str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FeaturebankError, match="cannot read weights file"):
        load_backbone("resnet18", str(tmp_path / "junk.pth"))
    with pytest.raises(FeaturebankError, match="weights file not found"):
        load_backbone("resnet18", str(tmp_path / "missing.pth"))


@pytest.mark.parametrize(
    "name,node,dim",
    [
        ("resnet18", "flatten", 512),
        ("mobilenet_v3_small", "classifier.2", 1024),
        ("vgg11", "classifier.5", 4096),
        ("squeezenet1_0", "classifier.0", 512),
        ("convnext_tiny", "classifier.1", 768),
        ("efficientnet_b0", "classifier.0", 1280),
        ("inception_v3", "flatten", 2048),
        ("vit_b_16", "getitem_5", 768),
    ],
)
def test_penultimate_node_is_the_input_of_the_head(name, node, dim):
    assert resolve_layers(skeleton(name)) == [node]
    assert feature_dim(name) == dim


def test_layer_shapes_and_unknown_layers():
    shapes = dict(layer_shapes("resnet18"))
    assert shapes["layer3.1.relu_1"] == (256, 14, 14) and shapes["flatten"] == (512,) and shapes["fc"] == (1000,)
    assert resolve_layers(skeleton("resnet18"), ["layer3", "penultimate"]) == ["layer3", "flatten"]
    assert dict(layer_shapes("resnet18", 224, ["layer3"])) == {"layer3": (256, 14, 14)}
    assert dict(layer_shapes("inception_v3", nodes=["Mixed_7c"]))["Mixed_7c"] == (2048, 8, 8)  # at its own 299 px
    with pytest.raises(FeaturebankError, match="unknown layer 'layer5'"):
        resolve_layers(skeleton("resnet18"), ["layer5"])
