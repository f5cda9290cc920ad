"""Fine-tuning on the frozen trunk run once (``--augment views``): the cut network computes what the whole network
computes (loss and gradients, on the same views), the probe's features come back from the cached center views,
a changed image gets new views, and a kill while caching keeps the finished views."""

from __future__ import annotations

import copy
import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FAST_ARGS, MOBILENET_V2, ROOT, need, photo, write_tree

from embedder import CacheReader, extract, load_backbone
from embedder.backbones.registry import head_name
from embedder.kernel.errors import FeaturebankError
from workflows.finetune import (
    add_head_dropout,
    block_names,
    finetune,
    freeze,
    replace_head,
    set_train_mode,
    unfrozen_blocks,
)
from workflows.finetune.cached_loop import store_settings
from workflows.finetune.center_pass import CenterEmbedding
from workflows.finetune.fixed_views import ViewsTransform, crop_box, parse_views
from workflows.finetune.probe import linear_probe
from workflows.finetune.split import Embedded, labeled_part, split_rows
from workflows.finetune.trunk import TrunkStore, split_at

TINY = dict(backbone="resnet18", weights="none", resize=72, crop=64, batch_size=4, workers=0, val_split=0.25)
VIEWS = dict(TINY, augment="views")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))


def test_views_are_named_and_fixed():
    assert parse_views("center,flip,crops:3") == ("center", "flip", "crop0", "crop1", "crop2")
    assert parse_views("crops:2,center,crops:3") == ("crop0", "crop1", "center", "crop2")
    for bad in ("center,zoom", "crops:0", "crops:x", ""):
        with pytest.raises(FeaturebankError, match="--views"):
            parse_views(bad)
    # crop i is the same box whatever N is (its rows stay valid when N grows), inside the image, 25-100 % of it
    boxes = [crop_box(i) for i in range(8)]
    assert boxes == [crop_box(i) for i in range(8)] and len(set(boxes)) == 8
    for left, top, right, bottom, _ in boxes:
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1 and 0.2 <= (right - left) * (bottom - top) <= 1
    assert [b[4] for b in boxes] == [False, True] * 4


def test_view_pixels():
    """center is the weights' preprocessing, flip its mirror, a crop the resized box of the image."""
    from embedder.kernel.preprocess import Preprocessing

    prep = Preprocessing(resize=72, crop=64)
    image = photo(3, (120, 90))
    views = ViewsTransform(prep, ("center", "flip", "crop0")).to_array(image)
    assert views.shape == (3, 3, 64, 64) and views.dtype == np.uint8
    assert np.array_equal(views[0], prep.to_array(image)) and np.array_equal(views[1], views[0][:, :, ::-1])
    left, top, right, bottom, _ = crop_box(0)
    box = image.crop((round(left * 120), round(top * 90), round(right * 120), round(bottom * 90))).resize((64, 64), 2)
    diff = np.abs(views[2].astype(int) - np.asarray(box).transpose(2, 0, 1).astype(int))
    assert diff.mean() < 8  # the same picture (the box's edges are rounded to pixels here)


def _batch(n=6, size=64):
    from embedder.kernel.preprocess import Preprocessing

    prep = Preprocessing(resize=72, crop=size)
    views = ViewsTransform(prep, ("center", "flip", "crop0", "crop1"))
    x = torch.as_tensor(np.stack([views.to_array(photo(i, (96 + 4 * i, 80)))[i % 4] for i in range(n)]))
    return prep, prep.normalize(x), torch.arange(n) % 3


@pytest.mark.parametrize("backbone,unfreeze", [("resnet18", 2), ("mobilenet_v2", 1), ("resnet18", 0)])
def test_cached_loss_and_gradients_equal_the_full_network(backbone, unfreeze):
    """The same batch of the same views, with dropout and frozen BatchNorm: the cut network's loss and gradients
    are the whole network's (float32 cut: float tolerance), and within float16 rounding from the stored rows.
    MobileNetV2 is the real checkpoint (a random one's activations at 64 px are around 1e-12: below float16)."""
    weights = str(need(MOBILENET_V2)) if backbone == "mobilenet_v2" else "none"
    model = load_backbone(backbone, weights, 0).model
    replace_head(model, 3)
    blocks = unfrozen_blocks(model, unfreeze)
    freeze(model, blocks, "frozen")
    add_head_dropout(model, 0.3)
    trunk, rest = split_at(model, blocks[0] if blocks else head_name(model), [*block_names(model), head_name(model)])
    _, x, y = _batch()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(model.parameters()))

    def loss_and_grads(forward):
        model.zero_grad(set_to_none=True)
        set_train_mode(model, blocks, "frozen")
        torch.manual_seed(7)  # the same dropout mask
        loss = F.cross_entropy(forward(), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in trainable}

    with torch.no_grad():
        model.eval()
        cut32 = trunk(x)
        cut16 = cut32.half().float()
    full_loss, full_grads = loss_and_grads(lambda: model(x))
    loss32, grads32 = loss_and_grads(lambda: rest(cut32))
    loss16, grads16 = loss_and_grads(lambda: rest(cut16))
    assert full_loss > 0
    torch.testing.assert_close(loss32, full_loss, rtol=1e-5, atol=1e-6)
    for n, g in full_grads.items():
        assert g.abs().sum() > 0, n
        torch.testing.assert_close(grads32[n], g, rtol=1e-4, atol=1e-6)
        # float16 rows (a relative error of 2e-4 on the cut): the head's gradients within 1e-2, the blocks' in
        # direction (cosine 0.998 and about 5 % in norm on this random resnet18, whose layers amplify the rounding)
        if n.startswith(head_name(model)):
            assert (grads16[n] - g).norm() <= 1e-2 * g.norm(), n
        assert F.cosine_similarity(grads16[n].flatten(), g.flatten(), 0) > 0.99, n
        assert (grads16[n] - g).norm() <= 0.15 * g.norm(), n
    assert abs(float(loss16 - full_loss)) <= 1e-3 * float(full_loss)


def _store_of(out) -> TrunkStore:
    info = json.loads((out / "views.json").read_text())
    with open(os.path.join(info["store"], "settings.json"), encoding="utf-8") as fh:
        settings = json.load(fh)
    settings.pop("views_version")
    return TrunkStore(os.path.dirname(info["store"]), settings), info


def test_the_probes_features_come_back_from_the_cached_center_views(tmp_path):
    """The unfrozen layers in evaluation mode on the cached center view give the extraction's penultimate rows
    (within float16 rounding of the cut): the pass holds what the probe was fit on."""
    root = tmp_path / "images"
    write_tree(root, per_class=4)
    finetune(str(root), str(tmp_path / "run"), unfreeze=1, epochs=1, **VIEWS)
    store, info = _store_of(tmp_path / "run")
    reader = CacheReader(extract(str(root), backbone="resnet18", weights="none", resize=72, crop=64, workers=0).cache)
    model = load_backbone("resnet18", "none", 0).model.eval()
    _, rest = split_at(model, info["cut"], [*block_names(model), head_name(model)])
    seen = []
    model.get_submodule("fc").register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    rows = store.gather(store.locate([(str(d), "center") for d in reader.rows["digest"]]))
    with torch.no_grad():
        rest(torch.from_numpy(rows).float())
    got, want = seen[0].numpy(), reader.features()
    assert got.shape == want.shape and np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())


@pytest.mark.integration  # 6 s: two views passes
def test_a_changed_image_gets_new_views_and_only_it(tmp_path):
    root = tmp_path / "images"
    paths = write_tree(root, per_class=4)
    finetune(str(root), str(tmp_path / "a"), unfreeze=1, epochs=1, **VIEWS)
    store, info = _store_of(tmp_path / "a")
    assert info["computed_images"] == 12 and info["views"] == list(parse_views("center,flip,crops:2"))
    again = finetune(str(root), str(tmp_path / "b"), unfreeze=1, epochs=1, **VIEWS)
    assert json.loads((tmp_path / "b" / "views.json").read_text())["computed_images"] == 0  # all reused
    changed = root / paths[0]
    photo(500, (100, 84)).save(changed)
    finetune(str(root), str(tmp_path / "c"), unfreeze=1, epochs=1, **VIEWS)
    assert json.loads((tmp_path / "c" / "views.json").read_text())["computed_images"] == 1
    from embedder.inputs.decode import file_digest

    store.reload()
    model = load_backbone("resnet18", "none", 0).model.eval()
    trunk, _ = split_at(model, info["cut"], [*block_names(model), head_name(model)])
    prep = load_backbone("resnet18", "none", 0, resize=72, crop=64).preprocessing
    from PIL import Image

    views = ViewsTransform(prep, tuple(info["views"]))
    with torch.no_grad():
        want = trunk(prep.normalize(torch.as_tensor(views.to_array(Image.open(changed).convert("RGB"))))).numpy()
    digest = file_digest(str(changed))
    present = [i for i, v in enumerate(info["views"]) if (digest, v) in store]  # a validation image: center only
    assert 0 in present
    got = store.gather(store.locate([(digest, info["views"][i]) for i in present])).astype(np.float32)
    np.testing.assert_allclose(got, want[present], rtol=1e-2, atol=1e-2)
    assert again.history[1]["train_loss"] is not None


@pytest.mark.integration  # six fine-tunings; test_finetune checks resume in the fast tier
@pytest.mark.parametrize("augment", ["views", "pixels"])
def test_resume_follows_the_uninterrupted_trajectory_on_both_paths(tmp_path, augment):
    root = tmp_path / "images"
    write_tree(root, per_class=4)
    run = dict(epochs=3, unfreeze=2, augment=augment, **TINY)
    whole = finetune(str(root), str(tmp_path / "whole"), **run)

    def interrupt(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(str(root), str(tmp_path / "cut"), on_epoch_end=interrupt, **run)
    resumed = finetune(str(root), str(tmp_path / "cut"), resume=True, **run)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history) and len(whole.history) == 4
    assert ("views" in a["config"]) == (augment == "views")  # a pixel run's config is as older runs wrote it
    with pytest.raises(FeaturebankError, match="was started with augment"):
        finetune(
            str(root),
            str(tmp_path / "cut"),
            resume=True,
            **{**run, "augment": "pixels" if augment == "views" else "views"},
        )


def test_views_need_a_frozen_trunk(tmp_path):
    with pytest.raises(FeaturebankError, match="--augment views needs a frozen trunk"):
        finetune(str(tmp_path), str(tmp_path / "run"), unfreeze="all", **VIEWS)


@pytest.mark.integration
def test_kill_9_while_caching_keeps_the_finished_views(tmp_path):
    """Killed in the views pass, the next run computes only the images whose views were not committed, and ends
    with the rows of a run never killed."""
    root = tmp_path / "images"
    write_tree(root, per_class=8)  # 24 images: 18 training, 6 validation
    env = {**os.environ, "FEATUREBANK_CACHE_DIR": str(tmp_path / "cache")}

    def run(out, cache):
        args = [
            sys.executable,
            "-c",
            "import cli; cli.main()",
            "finetune",
            str(root),
            "-o",
            str(out),
            "-q",
            *FAST_ARGS,
            "--batch-size",
            "1",
            "--epochs",
            "1",
            "--val-split",
            "0.25",
            "--augment",
            "views",
            "--views",
            "center,flip,crops:2",
        ]
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env={**env, "FEATUREBANK_CACHE_DIR": str(cache)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    whole = run(tmp_path / "whole", tmp_path / "cache-whole")
    assert whole.wait(timeout=1500) == 0, whole.communicate()
    killed = run(tmp_path / "killed", tmp_path / "cache")
    deadline = time.time() + 600
    parts = lambda: sorted((tmp_path / "cache" / "trunk").glob("*/parts/*.json"))  # noqa: E731
    while time.time() < deadline and killed.poll() is None and len(parts()) < 4:
        time.sleep(0.01)
    assert killed.poll() is None, killed.communicate()
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    kept = len(parts())  # one image per committed part (batch size 1)
    assert 4 <= kept < 24
    done = run(tmp_path / "killed-2", tmp_path / "cache")
    assert done.wait(timeout=1500) == 0, done.communicate()
    info = json.loads((tmp_path / "killed-2" / "views.json").read_text())
    # killed in the center pass (24 centers, one part each, before the 18 training images' other views)
    assert info["phases"]["center"]["computed_images"] == 24 - kept
    assert info["phases"]["views"]["computed_images"] == 18
    a, _ = _store_of(tmp_path / "whole")
    b, _ = _store_of(tmp_path / "killed-2")
    keys = sorted(a.index)
    assert sorted(b.index) == keys and len(keys) == 18 * 4 + 6  # training images x 4 views, validation x center
    np.testing.assert_array_equal(a.gather(a.locate(keys)), b.gather(b.locate(keys)))
    assert not list((tmp_path / "cache" / "trunk").glob("*/parts/*.tmp"))


@pytest.mark.parametrize(
    "arch,crop,unfreeze,cut",
    [("timm:convnext_atto", 64, 2, "stages.3"), ("timm:vit_xsmall_patch16_clip_224", 32, 2, "blocks.9")],
)
def test_timm_layouts_split_and_train_like_the_whole_network(arch, crop, unfreeze, cut):
    """timm's stages.N (ConvNeXt) and blocks.N (ViT) layouts: the cut is before the first unfrozen block, the two
    halves compute the model's logits, and one step's loss and gradients are the whole network's."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = load_backbone(arch, "none", 0, resize=crop, crop=crop).model
    replace_head(model, 3)
    blocks = unfrozen_blocks(model, unfreeze)
    assert blocks[0] == cut
    freeze(model, blocks, "frozen")
    trunk, rest = split_at(model, blocks[0], [*block_names(model), head_name(model)])
    x, y = torch.randn(4, 3, crop, crop), torch.tensor([0, 1, 2, 0])
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def loss_and_grads(forward):
        model.zero_grad(set_to_none=True)
        set_train_mode(model, blocks, "frozen")
        loss = F.cross_entropy(forward(), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in trainable}

    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(rest(trunk(x)), model(x), rtol=1e-5, atol=1e-5)
        cut32 = trunk(x)
    full_loss, full_grads = loss_and_grads(lambda: model(x))
    loss, grads = loss_and_grads(lambda: rest(cut32))
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert any(n.startswith(cut + ".") for n in grads) and any(g.abs().sum() > 0 for g in grads.values())
    for n, g in full_grads.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6)


@pytest.mark.integration  # 7 s: two trainings from the command line
def test_the_command_line_trains_on_views_and_a_second_run_reuses_them(tmp_path, monkeypatch):
    """``featurebank finetune --augment views`` end to end on a tiny folder: the pass computes every image once
    (training images: 2 views, validation images: the center), the run's checkpoint records the views, the chosen
    epoch's numbers are the comparison's, and the same command into another folder computes nothing and follows
    the same trajectory; a bad --views is a usage error."""
    from click.testing import CliRunner

    import cli

    root = tmp_path / "images"
    write_tree(root, per_class=4)  # 12 images: 9 training, 3 validation
    args = [
        *("finetune", str(root), "-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64"),
        *("--batch-size", "4", "--workers", "0", "--epochs", "2", "--val-split", "0.25", "--patience", "5"),
        *("--augment", "views", "--views", "center,flip", "--json"),
    ]
    runner = CliRunner()
    first = runner.invoke(cli.main, [*args, "-o", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    run = json.loads(first.stdout)
    info = json.loads((tmp_path / "a" / "views.json").read_text())
    assert info["views"] == ["center", "flip"] and info["computed_images"] == 12 and info["cut"] == "layer4"
    store, _ = _store_of(tmp_path / "a")
    assert len(store.index) == 9 * 2 + 3 and store.shape == (256, 4, 4)  # resnet18's layer3 output at 64 px
    assert [h["epoch"] for h in run["history"]] == [0, 1, 2] and run["blocks"] == ["layer4"]
    best = run["history"][run["best_epoch"]]
    tuned = run["comparison"][1]
    assert tuned["val_accuracy"] == best["val_accuracy"] and tuned["val_log_loss"] == best["val_loss"]
    saved = torch.load(tmp_path / "a" / "best.pth", weights_only=True)["featurebank"]
    assert saved["augment"] == "views" and saved["views"] == "center,flip" and saved["epoch"] == run["best_epoch"]
    second = runner.invoke(cli.main, [*args, "-o", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "b" / "views.json").read_text())["computed_images"] == 0
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(json.loads(second.stdout)["history"]) == strip(run["history"])
    bad = runner.invoke(cli.main, [*args[:-1], "-o", str(tmp_path / "c"), "--views", "center,zoom"])
    assert (
        bad.exit_code == 2 and "'zoom' is not center, flip or crops:N" in bad.output and "Traceback" not in bad.output
    )
    pixels = runner.invoke(cli.main, [*args[:-5], "--epochs", "1", "--augment", "pixels", "-o", str(tmp_path / "d")])
    assert pixels.exit_code == 0, pixels.output
    config = torch.load(tmp_path / "d" / "last.pt", weights_only=True)["config"]
    assert config["augment"] == "flip" and "views" not in config and not (tmp_path / "d" / "views.json").exists()


def _written_keys(cache) -> list[tuple[str, str]]:
    """Every (digest, view) row ever written into the trunk stores under ``cache``, once per write."""
    keys = []
    for part in sorted(pathlib.Path(cache, "trunk").glob("*/parts/*.json")):
        keys += [tuple(k) for k in json.loads(part.read_text())]
    return keys


@pytest.mark.integration
def test_the_center_pass_gives_the_extractions_rows_and_the_same_probe(tmp_path):
    """``CenterEmbedding`` (the views path's embedding): the same rows as ``extract`` (paths, labels, digests),
    features within float16 rounding of the extraction's, so a probe fit on them predicts what a probe fit on the
    extraction predicts, on validation and test images; test images embedded after the model's head was replaced
    and its blocks changed (as training does) still get the loaded network's features; each center once."""
    root, test = tmp_path / "images", tmp_path / "test"
    write_tree(root, per_class=4)
    write_tree(test, per_class=2, start=40)
    loaded = load_backbone("resnet18", "none", 0, resize=72, crop=64)
    model = loaded.model.eval()
    embed = CenterEmbedding(
        model,
        unfrozen_blocks(model, 1),
        store_settings("resnet18", "none:seed=0", "fp32"),
        loaded.preprocessing,
        cache_dir=str(tmp_path / "cache"),
        device=torch.device("cpu"),
        precision="fp32",
        batch_size=4,
        workers=0,
        max_pixels=10**8,
    )
    got = {"DATA": embed(str(root), "DATA")}
    replace_head(model, 3)  # what training does to the model after the pass: the probe's features must not move
    with torch.no_grad():
        for p in model.layer4.parameters():
            p.mul_(-0.5)
    got["--test"] = embed(str(test), "--test")
    want = {
        part: Embedded.of_cache(
            CacheReader(
                extract(
                    str(folder),
                    backbone="resnet18",
                    weights="none",
                    resize=72,
                    crop=64,
                    workers=0,
                    cache_dir=str(tmp_path / "extracted"),
                ).cache
            )
        )
        for part, folder in (("DATA", root), ("--test", test))
    }
    for part in got:
        g, w = got[part], want[part]
        assert (g.source, g.paths, g.digests, g.groups) == (w.source, w.paths, w.digests, w.groups)
        assert g.labels.tolist() == w.labels.tolist() and len(g.paths) == (12 if part == "DATA" else 6)
        assert g.features.shape == w.features.shape == (len(g.paths), 512) and np.abs(w.features).max() > 0
        np.testing.assert_allclose(g.features, w.features, rtol=0, atol=2e-3 * np.abs(w.features).max())
    assert embed.skipped == [] and embed.phase.images == 12 and len(set(embed.phase.computed)) == 12
    # the probe: fit on the training rows of each, it predicts the same on the validation and the test images
    classes, views = labeled_part(got["DATA"])
    _, ref = labeled_part(want["DATA"])
    train, val = split_rows(ref.y, None, 0.25, 0, classes)
    probe_views, init_views = linear_probe(views.X[train], views.y[train], 3)
    probe_ref, init_ref = linear_probe(ref.X[train], ref.y[train], 3)
    np.testing.assert_allclose(init_views[0], init_ref[0], rtol=0, atol=0.05 * np.abs(init_ref[0]).max())
    test_views, test_ref = labeled_part(got["--test"], classes)[1], labeled_part(want["--test"], classes)[1]
    for a, b in ((views.X[val], ref.X[val]), (test_views.X, test_ref.X)):
        proba = np.sort(probe_ref.predict_proba(b), 1)
        clear = proba[:, -1] - proba[:, -2] > 0.02  # a near tie may go either way within the rounding
        assert clear.sum() >= len(b) / 2 and len(set(probe_ref.predict(b).tolist())) > 1
        assert probe_views.predict(a)[clear].tolist() == probe_ref.predict(b)[clear].tolist()
        np.testing.assert_allclose(probe_views.predict_proba(a), probe_ref.predict_proba(b), atol=1e-2)
    # each center computed once: a second pass computes nothing and gives the same rows
    again = embed(str(root), "DATA")
    np.testing.assert_array_equal(again.features, got["DATA"].features)
    keys = _written_keys(tmp_path / "cache")
    assert len(keys) == len(set(keys)) == 18 and {v for _, v in keys} == {"center"}


def _manifest_with_groups(root, path) -> None:
    """A manifest of every file under ``root``; two images of each class form a group, the others have none."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for p in sorted(root.rglob("*.*")):
            rel = p.relative_to(root).as_posix()
            pair = rel.endswith(("img00.jpg", "img01.png"))
            writer.writerow([f"{root.name}/{rel}", rel.split("/")[0], f"{rel.split('/')[0]}-pair" if pair else ""])


@pytest.mark.integration
def test_the_views_path_runs_no_extraction_and_splits_as_the_pixel_path(tmp_path):
    """The same grouped manifest with a bad file, a --test folder with a bad file and a byte copy of a training
    image (--drop-test-copies), on both paths: the same split.csv (train, val, test), the same skipped files and
    reasons, the probe's numbers within float16 rounding; the views path writes no extraction cache, computes
    each (image, view) once, and says so in views.json."""
    root, test = tmp_path / "images", tmp_path / "test"
    write_tree(root, per_class=4)
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _manifest_with_groups(root, tmp_path / "data.csv")
    write_tree(test, per_class=2, start=40)
    shutil.copy(root / "dogs" / "img01.png", test / "cats" / "copy.png")
    (test / "owls" / "empty.jpg").write_bytes(b"")
    run = dict(TINY, test=str(test), drop_test_copies=True, epochs=1, unfreeze=1)
    results = {
        augment: finetune(
            str(tmp_path / "data.csv"),
            str(tmp_path / augment),
            augment=augment,
            cache_dir=str(tmp_path / f"cache-{augment}"),
            **run,
        )
        for augment in ("pixels", "views")
    }
    pixels, views = results["pixels"], results["views"]
    split = (tmp_path / "views" / "split.csv").read_text()
    assert split == (tmp_path / "pixels" / "split.csv").read_text()
    rows = list(csv.DictReader(split.splitlines()))
    sides = {part: sum(r["part"] == part for r in rows) for part in ("train", "val", "test")}
    assert (
        sides["train"] + sides["val"] == 12
        and sides["test"] == 6
        and "groups kept on one side" in views.config["validation"]
    )
    assert [(s["path"], s["reason"], s["part"]) for s in views.skipped] == [
        (s["path"], s["reason"], s["part"]) for s in pixels.skipped
    ]
    assert {s["part"] for s in views.skipped} == {"DATA", "--test"} and len(views.skipped) == 2
    assert views.test_dropped == pixels.test_dropped == ["cats/copy.png"]
    probe = {name: r.comparison[0] for name, r in results.items()}
    start = {name: r.history[0] for name, r in results.items()}  # the head as the probe left it
    for (a, b), key, n in (
        ((probe["views"], probe["pixels"]), "val", sides["val"]),
        ((probe["views"], probe["pixels"]), "test", 6),
        ((start["views"], start["pixels"]), "val", sides["val"]),
    ):
        loss = "log_loss" if "test_accuracy" in a else "loss"
        assert a[f"{key}_{loss}"] == pytest.approx(b[f"{key}_{loss}"], rel=2e-2), key
        assert abs(a[f"{key}_accuracy"] - b[f"{key}_accuracy"]) <= 1 / n + 1e-9, key  # a near tie may flip
    assert list((tmp_path / "cache-pixels").rglob("*.h5")) and not list((tmp_path / "cache-views").rglob("*.h5"))
    keys = _written_keys(tmp_path / "cache-views")
    assert len(keys) == len(set(keys)) == sides["train"] * 4 + sides["val"] + 6  # the copy's center: there already
    info = json.loads((tmp_path / "views" / "views.json").read_text())
    assert info["probe_from"] == "views pass" and info["computed_images"] == 12
    assert info["phases"]["center"]["images"] == 13 and info["phases"]["center"]["computed_images"] == 12
    assert info["phases"]["views"]["computed_images"] == sides["train"]
    assert info["seconds"] == pytest.approx(
        info["phases"]["center"]["seconds"] + info["phases"]["views"]["seconds"], abs=0.02
    )


@pytest.mark.integration
def test_the_views_path_takes_val_data_and_trains_from_scratch_on_pixels(tmp_path):
    """``--val DATA`` on the views path: its images are embedded by the same pass (their centers stored once);
    ``--from-scratch`` trains on pixels beside it."""
    root, val = tmp_path / "images", tmp_path / "val"
    write_tree(root, per_class=3)
    write_tree(val, per_class=1, start=60)
    result = finetune(str(root), str(tmp_path / "run"), val=str(val), from_scratch=True, epochs=1, **VIEWS)
    split = list(csv.DictReader((tmp_path / "run" / "split.csv").read_text().splitlines()))
    assert sum(r["part"] == "val" for r in split) == 3 and all(
        r["path"].startswith(str(val)) for r in split if r["part"] == "val"
    )
    assert result.config["validation"] == f"--val {val}" and len(result.comparison) == 3
    assert result.comparison[2]["val_accuracy"] is not None
    scratch = torch.load(tmp_path / "run" / "scratch" / "last.pt", weights_only=True)["config"]
    assert scratch["augment"] == "flip" and not (tmp_path / "run" / "scratch" / "views.json").exists()
    keys = _written_keys(tmp_path / "cache")
    assert len(keys) == len(set(keys)) == 9 * 4 + 3
    info = json.loads((tmp_path / "run" / "views.json").read_text())
    assert info["phases"]["center"]["computed_images"] == 12 and info["phases"]["views"]["computed_images"] == 9


@pytest.mark.parametrize(
    "arch,crop",
    [("timm:convnext_atto", 64), ("timm:vit_xsmall_patch16_clip_224", 32), ("squeezenet1_1", 64), ("resnet18", 64)],
)
def test_the_heads_input_after_the_cut_is_the_penultimate_layer(arch, crop):
    """What ``CenterEmbedding`` reads (the head's input, after the cut, in a copy of the layers as loaded, pooled as
    ``extract`` pools) is ``extract``'s penultimate node, also for timm's heads and SqueezeNet's convolution."""
    from embedder.backbones.features import pool
    from embedder.backbones.registry import feature_body, resolve_layers, tokens

    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = load_backbone(arch, "none", 0, resize=crop, crop=crop).model.eval()
    trunk, rest = split_at(model, unfrozen_blocks(model, 1)[0], [*block_names(model), head_name(model)])
    rest = copy.deepcopy(rest).eval()
    seen = []
    rest.get_submodule(head_name(model)).register_forward_pre_hook(
        lambda m, args: seen.append(pool(args[0].float(), "avg", tokens(model)))
    )
    x = torch.randn(2, 3, crop, crop)
    with torch.no_grad():
        rest(trunk(x))
        layer = resolve_layers(model, ["penultimate"])[0]
        want = pool(feature_body(model, [layer])(x)[layer], "avg", tokens(model))
    assert want.abs().max() > 0.1
    torch.testing.assert_close(seen[0], want, rtol=1e-5, atol=1e-6)
