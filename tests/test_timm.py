"""timm backbones (``timm:NAME[.TAG]``): preprocessing equal to timm's eval transform, default vectors equal to
``forward_head(forward_features(x), pre_logits=True)``, ONNX Runtime rows equal to torch's, token pooling, tags
as settings, and weights (local safetensors, offline hub). Random weights saved to local files: no download."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from helpers import cosines, photo, rows_close, write_tree
from PIL import Image

import embedder
from embedder.backbones.registry import (
    block_names,
    check_backbone,
    default_preprocessing,
    load_backbone,
    resolve_layers,
    resolve_weights,
    skeleton,
)
from embedder.kernel.errors import FeaturebankError

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

# (timm architecture, crop used in the tests): the smallest config of each family; ViTs are built at that size
FAMILIES = {
    "convnext": ("convnext_atto", 64),
    "efficientnet": ("efficientnet_b0", 64),
    "dinov2": ("vit_small_patch14_dinov2", 56),
    "siglip": ("vit_base_patch16_siglip_224", 32),
    "clip": ("vit_xsmall_patch16_clip_224", 32),
}


def timm_model(arch: str, crop: int, seed: int = 0):
    """The architecture as timm builds it for ``crop`` px (ViTs: position embeddings for that grid), seeded."""
    torch.manual_seed(seed)
    cfg = timm.models.get_pretrained_cfg(timm.models.get_pretrained_cfg(arch).architecture)
    kwargs = {"img_size": crop} if cfg.fixed_input_size else {}
    return timm.create_model(arch, pretrained=False, **kwargs).eval()


def timm_eval_transform(arch: str, crop: int, **overrides):
    """timm's own eval transform with the tag's config, at ``crop`` px with its crop_pct."""
    with torch.device("meta"):
        cfg = timm.data.resolve_model_data_config(timm.create_model(arch, pretrained=False))
    cfg = {**cfg, "input_size": (3, crop, crop), **overrides}
    return timm.data.create_transform(**cfg, is_training=False), cfg


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm") / "images"
    paths = write_tree(root, classes=("a", "b"), per_class=2)
    return root, [root / p for p in paths]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family → (local .safetensors file of seeded random weights, the timm model they came from)."""
    folder = tmp_path_factory.mktemp("weights")
    made = {}

    def get(family):
        if family not in made:
            arch, crop = FAMILIES[family]
            model = timm_model(arch, crop)
            path = folder / f"{arch}.safetensors"
            safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
            made[family] = (path, model)
        return made[family]

    return get


# -- preprocessing: the pretrained config, and timm's pixels -------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_preprocessing_is_the_tags_config_and_gives_timms_eval_pixels(family):
    arch, _ = FAMILIES[family]
    name = check_backbone(f"timm:{arch}")
    prep = default_preprocessing(name)
    transform, cfg = timm_eval_transform(arch, prep.crop)
    assert (prep.crop, prep.resize) == (cfg["input_size"][1], math.floor(cfg["input_size"][1] / cfg["crop_pct"]))
    assert (prep.mean, prep.std, prep.interpolation) == (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
    uint8 = timm.data.create_transform(**cfg, is_training=False, normalize=False)
    for i, size in enumerate([(500, 375), (375, 500), (prep.crop, prep.crop), (90, 70)]):
        image = photo(i, size)
        np.testing.assert_array_equal(prep.to_array(image), uint8(image).numpy())
        x = prep.normalize(torch.from_numpy(prep.to_array(image))[None])[0]
        torch.testing.assert_close(x, transform(image), atol=2e-6, rtol=0)


def test_names_tags_and_the_known_preprocessings():
    assert check_backbone("timm:vit_small_patch14_dinov2") == "timm:vit_small_patch14_dinov2.lvd142m"
    dino = default_preprocessing("timm:vit_small_patch14_dinov2")
    assert (dino.resize, dino.crop, dino.interpolation) == (518, 518, "bicubic")  # patch 14, not 224 px
    siglip = default_preprocessing("timm:vit_base_patch16_siglip_224")
    assert siglip.mean == siglip.std == (0.5, 0.5, 0.5) and siglip.resize == math.floor(224 / 0.9)
    clip = default_preprocessing("timm:vit_base_patch16_clip_224.openai")
    assert clip.mean[0] == pytest.approx(0.48145466)
    assert resolve_weights("timm:convnext_tiny", "DEFAULT").identity == "convnext_tiny.in12k_ft_in1k"
    assert resolve_weights("timm:convnext_tiny", "fb_in1k").identity == "convnext_tiny.fb_in1k"
    assert resolve_weights("timm:convnext_tiny.fb_in1k", "DEFAULT").identity == "convnext_tiny.fb_in1k"
    with pytest.raises(FeaturebankError, match="unknown tag 'in99k' for timm:convnext_tiny: choose one of"):
        check_backbone("timm:convnext_tiny.in99k")
    with pytest.raises(FeaturebankError, match=r"unknown timm model 'convnext_tiniest'.*did you mean"):
        check_backbone("timm:convnext_tiniest")
    with pytest.raises(FeaturebankError, match="two tags given"):
        resolve_weights("timm:convnext_tiny.fb_in1k", "fb_in22k")


# -- default vectors and engines ----------------------------------------------------------------------------
def reference(model, paths, arch, crop):
    transform, _ = timm_eval_transform(arch, crop)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


@pytest.mark.integration
@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_vectors_are_timms_pre_logits_and_onnxruntime_shares_the_rows(family, photos, saved, tmp_path):
    arch, crop = FAMILIES[family]
    root, paths = photos
    path, model = saved(family)
    _, cfg = timm_eval_transform(arch, crop)
    resize = math.floor(crop / cfg["crop_pct"])  # timm's resize for this crop; draft off: the same decoded image
    opts = dict(
        backbone=f"timm:{arch}", weights=str(path), resize=resize, crop=crop, batch_size=4, workers=0, draft=False
    )
    by_torch = embedder.extract(str(root), str(tmp_path / "torch.h5"), engine="torch", **opts)
    X, _, files = embedder.load(by_torch.cache)
    expected = reference(model, [root / f for f in files], arch, crop)
    assert X.shape == expected.shape and X.shape[1] == model.num_features
    assert cosines(X, expected).min() >= 0.9999
    s = by_torch.settings
    assert s["backbone"] == check_backbone(f"timm:{arch}") and s["weights"] == (
        "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    )
    by_ort = embedder.extract(str(root), str(tmp_path / "ort.h5"), engine="onnxruntime", **opts)
    assert by_ort.engine["name"] == "onnxruntime" and by_ort.settings == s  # the same rows
    rows_close(embedder.load(by_ort.cache)[0], X)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["convnext_atto", "efficientnet_b0", "vit_small_patch14_dinov2"])
def test_on_real_photos_at_the_tags_own_size_the_vectors_are_timms(arch, tmp_path):
    """The same check on other, real photos (hymenoptera val: JPEGs of many sizes), with nothing overridden: the
    tag's own preprocessing (DINOv2 at 518 px) and featurebank's default decoding."""
    from helpers import HYMENOPTERA, need

    folder = need(HYMENOPTERA) / "val"
    root = tmp_path / "photos"
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for f in sorted((folder / cls).glob("*.jpg"))[:1]:
            (root / cls / f.name).symlink_to(f)
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    weights = tmp_path / f"{arch}.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    run = embedder.extract(
        str(root), str(tmp_path / "c.h5"), backbone=f"timm:{arch}", weights=str(weights), batch_size=2, workers=0
    )
    X, _, files = embedder.load(run.cache)
    crop = default_preprocessing(check_backbone(f"timm:{arch}")).crop
    assert run.settings["preprocessing"]["crop"] == crop == timm_eval_transform(arch, crop)[1]["input_size"][1]
    assert cosines(X, reference(model, [root / f for f in files], arch, crop)).min() >= 0.9999


# -- token layers and pooling -------------------------------------------------------------------------------
@pytest.mark.integration
def test_cls_avg_and_cls_avg_pool_the_token_tensor_without_register_tokens(photos, tmp_path):
    """DINOv2 with 4 registers: 5 prefix tokens; ``avg`` is over the patch tokens only."""
    arch, crop = "vit_small_patch14_reg4_dinov2", 28
    root, paths = photos
    model = timm_model(arch, crop, seed=3)
    path = tmp_path / "reg4.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    transform, _ = timm_eval_transform(arch, crop)
    images = [Image.open(p).convert("RGB") for p in paths]
    captured = {}
    model.blocks[1].register_forward_hook(lambda m, i, o: captured.__setitem__("t", o))
    with torch.no_grad():
        model.forward_features(torch.stack([transform(im) for im in images]))
    tokens = captured["t"].numpy()
    assert model.num_prefix_tokens == 5 and tokens.shape[1] == 5 + (crop // 14) ** 2
    hand = {
        "cls": tokens[:, 0],
        "avg": tokens[:, 5:].mean(1),
        "cls+avg": np.concatenate([tokens[:, 0], tokens[:, 5:].mean(1)], 1),
    }
    assert not np.allclose(hand["avg"], tokens.mean(1), atol=1e-3)  # the registers would change it
    for pooling, want in hand.items():
        e = embedder.Embedder(
            f"timm:{arch}",
            str(path),
            layers=["blocks.1"],
            pooling=pooling,
            resize=crop,
            crop=crop,
            engine="torch",
            device="cpu",
        ).fit()
        got = e.transform(images)
        assert got.shape == want.shape and e.n_features_out_ == want.shape[1]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_cls_pooling_is_refused_where_there_is_no_class_token():
    model = skeleton("timm:vit_base_patch16_siglip_224", 32)  # SigLIP: no class token, a MAP head
    from embedder.backbones.features import layer_dims

    assert layer_dims(model, ["blocks.0"], "avg", 32) == {"blocks.0": 768}
    with pytest.raises(FeaturebankError, match="no class token"):
        layer_dims(model, ["blocks.0"], "cls", 32)
    with pytest.raises(FeaturebankError, match="takes token layers"):
        layer_dims(skeleton("timm:convnext_atto"), ["stages.2"], "cls", 64)


@pytest.mark.integration  # builds a 22M-parameter ViT
def test_layer_names_several_in_one_pass_and_blocks_for_finetuning(photos):
    dino = skeleton("timm:vit_small_patch14_dinov2", 56)
    assert resolve_layers(dino) == ["head_drop"]
    assert resolve_layers(dino, ["blocks.3", "penultimate", "norm"]) == ["blocks.3", "head_drop", "norm"]
    assert block_names(dino)[:2] == ["patch_embed", "blocks.0"] and block_names(dino)[-2:] == ["blocks.11", "norm"]
    assert block_names(skeleton("timm:convnext_atto")) == [
        "stem",
        "stages.0",
        "stages.1",
        "stages.2",
        "stages.3",
        "head.norm",
    ]
    assert block_names(skeleton("timm:efficientnet_b0"))[2:9] == [f"blocks.{i}" for i in range(7)]
    root, paths = photos
    e = embedder.Embedder(
        "timm:convnext_atto",
        "none",
        layers=["stages.1", "stages.3", "penultimate"],
        resize=64,
        crop=64,
        engine="torch",
        device="cpu",
    ).fit()
    X = e.transform([str(p) for p in paths])
    assert e.dims_ == {"stages.1": 80, "stages.3": 320, "head.drop": 320} and X.shape == (len(paths), 720)
    model = load_backbone("timm:convnext_atto", "none", resize=64, crop=64).model
    transform, _ = timm_eval_transform("convnext_atto", 64, crop_pct=1.0)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        stage1 = model.stages[1](model.stages[0](model.stem(x))).mean((2, 3)).numpy()
    np.testing.assert_allclose(X[:, :80], stage1, rtol=1e-4, atol=1e-4)


# -- weights and settings -----------------------------------------------------------------------------------
def test_offline_default_weights_are_one_line_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FeaturebankError) as err:
        load_backbone("timm:vit_small_patch14_dinov2", "DEFAULT")
    message = str(err.value)
    assert "\n" not in message and "vit_small_patch14_dinov2.lvd142m" in message
    assert "https://huggingface.co/timm/vit_small_patch14_dinov2.lvd142m/resolve/main/model.safetensors" in message
    assert str(tmp_path / "hf" / "hub") in message and "--weights" in message


def test_seeded_random_weights_and_strict_local_files(tmp_path):
    a, b, c = (load_backbone("timm:convnext_atto", "none", seed=s).model for s in (1, 1, 2))
    assert torch.equal(a.stem[0].weight, b.stem[0].weight) and not torch.equal(a.stem[0].weight, c.stem[0].weight)
    pth = tmp_path / "atto.pth"
    torch.save(a.state_dict(), pth)
    loaded = load_backbone("timm:convnext_atto", str(pth))
    assert loaded.weights.identity == "sha256:" + hashlib.sha256(pth.read_bytes()).hexdigest()
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in a.state_dict().items())
    torch.save({k: v for k, v in a.state_dict().items() if not k.startswith("stages.3")}, tmp_path / "cut.pth")
    with pytest.raises(FeaturebankError, match="does not fit timm:convnext_atto.d2_in1k: Missing key"):
        load_backbone("timm:convnext_atto", str(tmp_path / "cut.pth"))


@pytest.mark.integration
def test_a_rerun_keeps_its_rows_and_another_tag_gets_its_own_settings(photos, tmp_path):
    root, _ = photos
    opts = dict(weights="none", resize=64, crop=64, batch_size=4, workers=0, engine="torch")
    first = embedder.extract(str(root), str(tmp_path / "a.h5"), backbone="timm:efficientnet_b0", **opts)
    again = embedder.extract(str(root), str(tmp_path / "a.h5"), backbone="timm:efficientnet_b0.ra_in1k", **opts)
    assert first.embedded == 4 and again.embedded == 0 and again.settings == first.settings
    other = embedder.extract(
        str(root), str(tmp_path / "b.h5"), backbone="timm:efficientnet_b0.ra4_e3600_r224_in1k", **opts
    )
    assert other.settings["backbone"] == "timm:efficientnet_b0.ra4_e3600_r224_in1k" != first.settings["backbone"]
    with pytest.raises(FeaturebankError):
        embedder.extract(str(root), str(tmp_path / "a.h5"), backbone="timm:efficientnet_b0.ra4_e3600_r224_in1k", **opts)


def test_finetuning_surgery_on_timm_layouts():
    """A ViT built without classes (DINOv2: Identity head) gets a Linear head from the probe; the last blocks
    and the head train, nothing else."""
    from workflows.finetune import freeze, replace_head
    from workflows.finetune.surgery import unfrozen_blocks

    model = load_backbone("timm:vit_small_patch14_dinov2", "none", resize=28, crop=28).model
    W, b = np.full((3, 384), 0.01, np.float32), np.arange(3, dtype=np.float32)
    head = replace_head(model, 3, (W, b))
    assert model.head is head and (head.in_features, head.out_features) == (384, 3)
    blocks = unfrozen_blocks(model, 2)
    assert blocks == ["blocks.11", "norm"]
    freeze(model, blocks, "frozen")
    trainable = {
        n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks.") else "")
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"blocks.11", "norm", "head"}
    x = torch.zeros(2, 3, 28, 28)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        np.testing.assert_allclose(model(x).numpy(), pre.numpy() @ W.T + b, rtol=1e-5, atol=1e-5)


def test_the_command_line_lists_timm_backbones_and_their_layers():
    import json

    from click.testing import CliRunner

    from cli import main

    listed = CliRunner().invoke(main, ["backbones", "--source", "timm", "--filter", "*small*dinov2*", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["name"] for r in rows] == [
        "timm:vit_small_patch14_dinov2.lvd142m",
        "timm:vit_small_patch14_reg4_dinov2.lvd142m",
    ]
    assert (rows[0]["resize"], rows[0]["crop"], rows[0]["interpolation"]) == (518, 518, "bicubic")
    shown = CliRunner().invoke(main, ["layers", "timm:vit_small_patch14_dinov2", "--size", "56", "--json"])
    assert shown.exit_code == 0, shown.output
    nodes = {r["node"]: r for r in json.loads(shown.output)}
    assert nodes["head_drop"]["penultimate"] and nodes["head_drop"]["vector"] == 384
    assert nodes["blocks.3.add_1"]["shape"] == [17, 384]
    bad = CliRunner().invoke(main, ["layers", "timm:vit_small_patch14_dinov3"])
    assert bad.exit_code != 0 and "unknown timm model" in bad.output


def test_the_backbones_own_classes_for_predict_head(tmp_path):
    from embedder.backbones.registry import head_classes, output_node

    classes = head_classes("timm:convnext_tiny.fb_in1k", "DEFAULT")  # names only: nothing is downloaded
    assert len(classes) == 1000 and classes[0] == "tench" and classes[1] == "goldfish"
    with pytest.raises(FeaturebankError, match="no ImageNet classifier head"):
        head_classes("timm:vit_small_patch14_dinov2", "DEFAULT")
    path = tmp_path / "atto.safetensors"
    safetensors_torch.save_file(timm.create_model("convnext_atto").state_dict(), str(path))
    assert head_classes("timm:convnext_atto", str(path)) == classes
    assert output_node("timm:convnext_atto") == "head.fc"
