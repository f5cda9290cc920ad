"""Fine-tuning: unfreeze the last blocks of a pretrained backbone and train them with a new head, end to end,
and score it fairly against the frozen linear probe (and, on request, the same network trained from scratch).

The images are first embedded into the cache like any ``extract`` (penultimate layer, the weights'
preprocessing). That gives, at no extra decoding cost later: the list of good images (bad files are skipped
and reported there), the linear-probe baseline on the same validation images, and the head's initialization
(the probe's weights, standardization folded in). Training then decodes images again, since every epoch
sees another random crop.

Every epoch writes ``last.pt`` (model, optimizer, scheduler, history: ``--resume`` continues from it on the same
trajectory) and, when validation improves, ``best.pth``: a state dict with the class names and preprocessing,
which ``extract --weights`` and ``predict --head`` take like any checkpoint.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .augment import POLICIES, Augmentation
from .backbones import head_name, load_backbone, resolve_weights
from .batches import ImageDataset, collate, default_workers
from .cache import CacheReader
from .decode import DEFAULT_MAX_PIXELS
from .errors import FeaturebankError
from .features import autocast_for, resolve_device
from .job import extract, library_versions

BN_POLICIES = ("frozen", "train")
CONTAINERS = ("features", "classifier", "trunk_output", "blocks")  # top-level sequences whose items are blocks
BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)


# -- which parameters train -------------------------------------------------------------------------------------
def block_names(model: nn.Module) -> list[str]:
    """The backbone's blocks in forward order, head excluded: ``layer1``..``layer4`` for a ResNet (its stages),
    ``features.0``..``features.18`` for MobileNetV2, ``features.N`` stages for EfficientNet and ConvNeXt,
    ``Mixed_*`` for Inception. ``--unfreeze N`` trains the last N of them."""
    head = head_name(model)
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or name == head or name.startswith(head + ".") or not any(True for _ in module.parameters(recurse=False)):
            continue
        parts = name.split(".")
        depth = 2 if parts[0] in CONTAINERS and len(parts) > 1 else 1
        if parts[0] == "encoder" and len(parts) > 2 and parts[1] == "layers":  # ViT: encoder.layers.encoder_layer_N
            depth = 3
        block = ".".join(parts[:depth])
        if block not in names:
            names.append(block)
    return names


def unfrozen_blocks(model: nn.Module, unfreeze: int | str) -> list[str]:
    blocks = block_names(model)
    if unfreeze == "all":
        return blocks
    n = int(unfreeze)
    if n < 0:
        raise FeaturebankError("--unfreeze takes 0 (head only), a number of blocks, or all")
    return blocks[len(blocks) - min(n, len(blocks)):] if n else []


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(model: nn.Module, blocks: list[str], bn: str) -> None:
    """Gradients for the head and ``blocks`` only; with ``bn="frozen"`` no BatchNorm parameter trains either."""
    if bn not in BN_POLICIES:
        raise FeaturebankError(f"unknown --bn {bn!r}: choose frozen or train")
    head = head_name(model)
    everything = blocks == block_names(model)  # then parameters of the model itself (a ViT's class token) train too
    for name, param in model.named_parameters():
        param.requires_grad_(_in(name, [head, *blocks]) or ("." not in name and everything))
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, BATCHNORMS):
                module.requires_grad_(False)


def set_train_mode(model: nn.Module, blocks: list[str], bn: str) -> None:
    """``train()`` for the head and the unfrozen blocks only; frozen parts stay in eval mode (their dropout off,
    their BatchNorm statistics fixed), and with ``bn="frozen"`` every BatchNorm does, as ``model.train()``
    alone would move running statistics of layers that are meant to be frozen."""
    model.eval()
    head = head_name(model)
    for name in [*blocks, head]:
        model.get_submodule(name).train()
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, BATCHNORMS):
                module.eval()


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float, weight_decay: float) -> list[dict]:
    """Two learning rates: ``lr`` for the new head, ``lr * backbone_lr_scale`` for the pretrained layers."""
    head = head_name(model)
    groups = {"head": [], "backbone": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["head" if _in(name, [head]) else "backbone"].append(param)
    rates = {"head": lr, "backbone": lr * backbone_lr_scale}
    return [{"name": g, "params": p, "lr": rates[g], "weight_decay": weight_decay} for g, p in groups.items() if p]


def replace_head(model: nn.Module, n_classes: int, probe: tuple[np.ndarray, np.ndarray] | None = None) -> nn.Module:
    """A new head for ``n_classes``; a Linear head starts from the probe's weights and biases when given."""
    name = head_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, n_classes)
        if probe is not None:
            with torch.no_grad():
                new.weight.copy_(torch.as_tensor(probe[0], dtype=torch.float32))
                new.bias.copy_(torch.as_tensor(probe[1], dtype=torch.float32))
    else:  # SqueezeNet's 1x1 convolution (followed by ReLU and pooling, so a linear probe does not map onto it)
        new = nn.Conv2d(old.in_channels, n_classes, kernel_size=old.kernel_size)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return new


def add_head_dropout(model: nn.Module, p: float):
    """Dropout on the head's input while training, as a hook: the state dict keeps the architecture's own keys."""
    if p <= 0:
        return None
    return model.get_submodule(head_name(model)).register_forward_pre_hook(
        lambda module, args: (F.dropout(args[0], p, module.training), *args[1:]))


# -- the linear probe -------------------------------------------------------------------------------------------
def linear_probe(X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0):
    """The frozen baseline: standardize, then multinomial logistic regression (the zoo's ``logreg``). Returns the
    pipeline and its decision function as one Linear layer on raw features: ``W x + b``."""
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed)).fit(X, y)
    scaler, lr = pipe[0], pipe[1]
    W = lr.coef_ / scaler.scale_
    b = lr.intercept_ - W @ scaler.mean_
    if len(lr.classes_) == 2 and W.shape[0] == 1:  # binary: logit of class 1 against 0
        W, b = np.vstack([-W / 2, W / 2]), np.array([-b[0] / 2, b[0] / 2])
    full_W, full_b = np.zeros((n_classes, X.shape[1])), np.full(n_classes, -1e4)
    full_W[lr.classes_], full_b[lr.classes_] = W, b
    return pipe, (full_W, full_b)


def _scores(y: np.ndarray, pred: np.ndarray) -> dict:
    return {"accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0))}


# -- data ---------------------------------------------------------------------------------------------------------
@dataclass
class Split:
    classes: list[str]
    train_paths: list[str]
    train_y: np.ndarray
    val_paths: list[str]
    val_y: np.ndarray
    train_X: np.ndarray  # frozen penultimate features (the probe's input)
    val_X: np.ndarray
    skipped: list[dict] = field(default_factory=list)  # files without a row, with reasons
    caches: list[str] = field(default_factory=list)
    embed_seconds: float = 0.0  # embedding in this run (0 when the caches were there already)


def _labeled_rows(reader: CacheReader, classes: list[str] | None = None):
    labels = reader.labels
    if labels is None:
        raise FeaturebankError(f"{reader.attrs['source']} has no labels: fine-tuning needs class folders or a manifest")
    keep = np.flatnonzero(labels != "")
    classes = classes or sorted(set(labels[keep].tolist()))
    unknown = sorted(set(labels[keep].tolist()) - set(classes))
    if unknown:
        raise FeaturebankError(f"validation classes not in the training data: {', '.join(unknown[:10])}")
    index = {c: i for i, c in enumerate(classes)}
    full = reader.full_paths()
    return classes, [full[i] for i in keep], np.array([index[labels[i]] for i in keep]), reader.features()[keep]


def prepare_data(train, val, val_split: float, seed: int, embed: dict) -> Split:
    """Embed the training (and validation) images once into the cache, then split."""
    skipped, caches, seconds = [], [], []

    def embedded(source):
        summary = extract(source, **embed)
        seconds.append(summary.seconds if summary.embedded else 0.0)
        skipped.extend({"path": f["path"], "reason": f["reason"]} for f in summary.failed)
        caches.append(summary.cache)
        return CacheReader(summary.cache)

    classes, paths, y, X = _labeled_rows(embedded(train))
    if len(classes) < 2:
        raise FeaturebankError(f"only one class ({classes[0]}): fine-tuning needs at least two")
    if val is not None:
        _, val_paths, val_y, val_X = _labeled_rows(embedded(val), classes)
        return Split(classes, paths, y, val_paths, val_y, X, val_X, skipped, caches, sum(seconds))
    if not 0 < val_split < 1:
        raise FeaturebankError("--val-split must be between 0 and 1 (or give --val DATA)")
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < 2:
        raise FeaturebankError(f"class {classes[int(counts.argmin())]!r} has {counts.min()} image(s): a stratified "
                               f"--val-split needs at least 2 per class (or give --val DATA)")
    idx_train, idx_val = train_test_split(np.arange(len(y)), test_size=val_split, stratify=y, random_state=seed)
    idx_train, idx_val = np.sort(idx_train), np.sort(idx_val)
    return Split(classes, [paths[i] for i in idx_train], y[idx_train], [paths[i] for i in idx_val], y[idx_val],
                 X[idx_train], X[idx_val], skipped, caches, sum(seconds))


# -- training -----------------------------------------------------------------------------------------------------
def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out[0]  # Inception/GoogLeNet in train mode: (logits, aux)


def _loader(paths, transform, batch_size, workers, max_pixels):
    return DataLoader(ImageDataset(paths, transform, max_pixels), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate, prefetch_factor=4 if workers else None)


@torch.no_grad()
def evaluate_images(model, paths, y, prep, device, precision, batch_size, workers, max_pixels=DEFAULT_MAX_PIXELS):
    """Loss and scores on images with the evaluation preprocessing; files that fail are left out (and returned)."""
    model.eval()
    logits, targets, failed = [], [], []
    for batch in _loader(paths, prep, batch_size, workers, max_pixels):
        failed += [(paths[i], r) for i, r, _ in batch.failures]
        if batch.indices:
            with autocast_for(device, precision):
                logits.append(_forward(model, prep.normalize(torch.as_tensor(batch.images).to(device))).float().cpu())
            targets.append(torch.as_tensor(y[batch.indices]))
    if not logits:
        raise FeaturebankError(f"none of the {len(paths)} validation images could be read now "
                               f"(first: {failed[0][0]}: {failed[0][1]})")
    logits, targets = torch.cat(logits), torch.cat(targets)
    pred = logits.argmax(1).numpy()
    return {"loss": float(F.cross_entropy(logits, targets)), **_scores(targets.numpy(), pred)}, failed


def _save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_weights(model: nn.Module, path: str, classes: list[str], prep, meta: dict) -> str:
    """A checkpoint ``extract --weights`` and ``predict --head`` accept: the state dict plus class names and the
    preprocessing it was trained with."""
    _save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "classes": list(classes),
           "preprocessing": prep.to_dict(), "featurebank": meta}, path)
    return path


def train_loop(model: nn.Module, blocks: list[str], data: Split, prep, out: str, config: dict, *, device, resume: bool,
               progress: bool, on_epoch_end=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Train ``model`` (head and ``blocks``) for ``config["epochs"]`` with early stopping on validation accuracy.
    Epoch 0 is the untrained start: ``best.pth`` stays the start when no epoch beats it. Everything random is
    seeded from (seed, epoch), so a resumed run follows the uninterrupted trajectory."""
    os.makedirs(out, exist_ok=True)
    bn, seed = config["bn"], config["seed"]
    freeze(model, blocks, bn)
    hook = add_head_dropout(model, config["dropout"])
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, config["lr"], config["backbone_lr_scale"], config["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["epochs"])
    fp16 = config["precision"] == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    augmentation = Augmentation(prep, config["augment"])
    workers = default_workers(device.type) if config["workers"] is None else config["workers"]
    last, best_path = os.path.join(out, "last.pt"), os.path.join(out, "best.pth")
    state = {"epoch": 0, "history": [], "best_epoch": 0, "best": None, "seconds": 0.0, "failed": {}}
    if os.path.exists(last):
        if not resume:
            raise FeaturebankError(f"{out} holds a run already: add --resume to continue it, or choose another --out")
        saved = torch.load(last, map_location="cpu", weights_only=True)
        differ = [k for k in config if k not in ("patience", "workers") and saved["config"].get(k) != config[k]]
        if differ:
            key = differ[0]
            raise FeaturebankError(f"--resume: {out} was started with {key}={saved['config'].get(key)!r}, not "
                                   f"{config[key]!r}; use the same options, or another --out")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        state = saved["state"]
    y_train = torch.as_tensor(data.train_y)
    any_bn_training = bn == "train" and any(isinstance(m, BATCHNORMS) for b in blocks
                                            for m in model.get_submodule(b).modules())
    if not state["history"]:  # epoch 0: the starting point (the probe's head); training must beat it to count
        started = time.perf_counter()
        val, failed = evaluate_images(model, data.val_paths, data.val_y, prep, device, config["precision"],
                                      config["batch_size"], workers, max_pixels)
        state["failed"].update(dict(failed))
        state["seconds"] += time.perf_counter() - started
        state["history"].append({"epoch": 0, "train_loss": None, "train_accuracy": None,
                                 **{f"val_{k}": v for k, v in val.items()},
                                 **{f"lr_{g['name']}": 0.0 for g in optimizer.param_groups},
                                 "seconds": round(state["seconds"], 2)})
        state["best"], state["best_epoch"] = val, 0
        export_weights(model, best_path, data.classes, prep, {**config, "epoch": 0, "val": val})
    first = config["epochs"] + 1 if state.get("stopped_early") else state["epoch"] + 1
    for epoch in range(first, config["epochs"] + 1):
        started = time.perf_counter()
        torch.manual_seed(seed * 100_003 + epoch)  # augmentation and dropout of this epoch
        order = np.random.default_rng([seed, epoch]).permutation(len(data.train_paths))
        set_train_mode(model, blocks, bn)
        total_loss = correct = seen = 0
        loader = _loader([data.train_paths[i] for i in order], augmentation, config["batch_size"], workers, max_pixels)
        with tqdm(total=len(order), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                  desc=f"{os.path.basename(out)} epoch {epoch}/{config['epochs']}") as bar:
            for batch in loader:
                for i, reason, _ in batch.failures:
                    state["failed"][data.train_paths[order[i]]] = reason
                bar.update(len(batch.indices) + len(batch.failures))
                if not batch.indices or (any_bn_training and len(batch.indices) < 2):
                    continue  # BatchNorm cannot train on a single image
                x = prep.normalize(torch.as_tensor(batch.images).to(device))
                target = y_train[order[batch.indices]].to(device)
                with autocast_for(device, config["precision"]):
                    logits = _forward(model, x)
                    loss = F.cross_entropy(logits.float(), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total_loss += float(loss.detach()) * len(target)
                correct += int((logits.argmax(1) == target).sum())
                seen += len(target)
        rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
        scheduler.step()
        val, failed = evaluate_images(model, data.val_paths, data.val_y, prep, device, config["precision"],
                                      config["batch_size"], workers, max_pixels)
        state["failed"].update(dict(failed))
        state["seconds"] += time.perf_counter() - started
        row = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               **{f"val_{k}": v for k, v in val.items()}, **{f"lr_{k}": v for k, v in rates.items()},
               "seconds": round(state["seconds"], 2)}
        state["history"].append(row)
        best = state["best"]
        if best is None or (val["accuracy"], -val["loss"]) > (best["accuracy"], -best["loss"]):
            state["best"], state["best_epoch"] = val, epoch
            export_weights(model, best_path, data.classes, prep, {**config, "epoch": epoch, "val": val})
        state["epoch"] = epoch
        stopped = epoch - state["best_epoch"] >= config["patience"]
        state["stopped_early"] = stopped and epoch < config["epochs"]
        _save({"config": config, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": state}, last)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if stopped:
            break
    if hook is not None:
        hook.remove()
    return state


# -- a whole run ----------------------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    out: str
    classes: list[str]
    blocks: list[str]  # unfrozen blocks
    trainable_parameters: int
    best_epoch: int
    history: list[dict]
    comparison: list[dict]  # linear probe, fine-tuned, from scratch: the same validation images
    checkpoint: str  # best.pth: --weights for extract, predict --head
    skipped: list[dict]
    files: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    scratch_history: list[dict] = field(default_factory=list)  # with --from-scratch

    def to_dict(self) -> dict:
        return asdict(self)


def finetune(train, out: str = "runs/finetune", *, val=None, val_split: float = 0.2, backbone: str = "resnet50",
             weights: str | None = "DEFAULT", resize: int | None = None, crop: int | None = None, draft: bool = True,
             unfreeze: int | str = 1, epochs: int = 10, lr: float = 1e-3, backbone_lr_scale: float = 0.1,
             weight_decay: float = 1e-4, batch_size: int = 32, dropout: float = 0.2, bn: str = "frozen",
             augment: str = "flip", probe_init: bool = True, patience: int = 3, seed: int = 0, device: str = "auto",
             precision: str = "fp32", workers: int | None = None, resume: bool = False, from_scratch: bool = False,
             max_pixels: int = DEFAULT_MAX_PIXELS, cache_dir: str | None = None, progress: bool = False,
             on_epoch_end=None) -> FinetuneResult:
    """Fine-tune ``backbone`` on the labelled images of ``train`` and write the run into ``out``."""
    if epochs < 1 or batch_size < 1 or lr <= 0 or not 0 <= dropout < 1 or backbone_lr_scale < 0:
        raise FeaturebankError("--epochs and --batch-size must be at least 1, --lr positive, --dropout in [0, 1), "
                               "--backbone-lr-scale at least 0")
    if augment not in POLICIES:
        raise FeaturebankError(f"unknown augmentation {augment!r}: choose one of {', '.join(POLICIES)}")
    dev = resolve_device(device)
    autocast_for(dev, precision)
    spec = resolve_weights(backbone, weights, seed)
    embed = dict(backbone=backbone, weights=spec.path if spec.kind == "file" else weights, seed=seed, resize=resize,
                 crop=crop, draft=draft, layers=["penultimate"], device=device, batch_size=batch_size, workers=workers,
                 max_pixels=max_pixels, cache_dir=cache_dir, progress=progress)
    data = prepare_data(train, val, val_split, seed, embed)
    k = len(data.classes)
    config = {"backbone": backbone, "weights": spec.identity, "unfreeze": unfreeze, "epochs": epochs, "lr": lr,
              "backbone_lr_scale": backbone_lr_scale, "weight_decay": weight_decay, "batch_size": batch_size,
              "dropout": dropout, "bn": bn, "augment": augment, "probe_init": probe_init, "patience": patience,
              "seed": seed, "precision": precision, "workers": workers, "classes": data.classes,
              "train_images": len(data.train_paths), "val_images": len(data.val_paths)}

    started = time.perf_counter()
    probe, head_init = linear_probe(data.train_X, data.train_y, k, seed)
    probe_seconds = time.perf_counter() - started
    comparison = [{"model": "frozen linear probe", "trained": "logistic regression on the cached features",
                   **_scores(data.val_y, probe.predict(data.val_X)),
                   "seconds": round(probe_seconds + data.embed_seconds, 2)}]  # embedding included when done now

    backbone_model = load_backbone(backbone, spec, resize=resize, crop=crop, draft=draft)
    prep = backbone_model.preprocessing
    model = backbone_model.model
    blocks = unfrozen_blocks(model, unfreeze)
    replace_head(model, k, head_init if probe_init else None)
    state = train_loop(model, blocks, data, prep, out, config, device=dev, resume=resume, progress=progress,
                       on_epoch_end=on_epoch_end, max_pixels=max_pixels)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    comparison.append(_row(f"fine-tuned (last {len(blocks)} block(s) + head)" if unfreeze != "all"
                           else "fine-tuned (all layers)", state))
    scratch_state = {"history": []}
    if from_scratch:
        scratch = load_backbone(backbone, "none", seed, resize=resize, crop=crop, draft=draft).model
        replace_head(scratch, k)
        scratch_config = {**config, "weights": f"none:seed={seed}", "unfreeze": "all", "bn": "train",
                          "backbone_lr_scale": 1.0, "probe_init": False}
        scratch_state = train_loop(scratch, block_names(scratch), data, prep, os.path.join(out, "scratch"),
                                   scratch_config, device=dev, resume=resume, progress=progress,
                                   max_pixels=max_pixels)
        comparison.append(_row("from scratch (same architecture, random init)", scratch_state))
    skipped = data.skipped + [{"path": p, "reason": r} for p, r in state["failed"].items()]
    result = FinetuneResult(os.path.abspath(out), data.classes, blocks, trainable, state["best_epoch"],
                            state["history"], comparison, os.path.abspath(os.path.join(out, "best.pth")), skipped,
                            config=config, scratch_history=scratch_state["history"])
    result.files = write_run_report(result, prep)
    return result


def _row(name: str, state: dict) -> dict:
    best = state["best"]
    epochs, best_epoch = len(state["history"]) - 1, state["best_epoch"]
    trained = (f"{epochs} epoch(s), best at epoch {best_epoch}" if best_epoch else
               f"{epochs} epoch(s), none better than the start (epoch 0 kept)")
    return {"model": name, "trained": trained,
            **{k: best[k] for k in ("accuracy", "balanced_accuracy", "f1_macro")}, "seconds": round(state["seconds"], 2)}


def write_run_report(result: FinetuneResult, prep) -> dict[str, str]:
    """log.csv and log.json per epoch, curves.png, report.json and report.md in the run folder."""
    out = result.out
    files = {"log_csv": os.path.join(out, "log.csv"), "log_json": os.path.join(out, "log.json"),
             "report_json": os.path.join(out, "report.json"), "report_md": os.path.join(out, "report.md"),
             "curves_png": os.path.join(out, "curves.png"), "checkpoint": result.checkpoint}
    write_log(result.history, out)
    if result.scratch_history:
        write_log(result.scratch_history, os.path.join(out, "scratch"))
    with open(files["report_json"], "w", encoding="utf-8") as fh:
        json.dump({**result.to_dict(), "preprocessing": prep.to_dict(), "versions": library_versions()}, fh, indent=1)
    lines = [f"# Fine-tuning {result.config['backbone']} ({result.config['weights']})", "",
             f"{result.config['train_images']} training and {result.config['val_images']} validation images, "
             f"{len(result.classes)} classes; unfrozen: {', '.join(result.blocks) or 'head only'} "
             f"({result.trainable_parameters:,} trainable parameters); BatchNorm {result.config['bn']}.", "",
             "| model | trained | val accuracy % | balanced acc. % | macro-F1 % | seconds |", "|---|---|--:|--:|--:|--:|"]
    lines += [f"| {r['model']} | {r['trained']} | {100 * r['accuracy']:.2f} | {100 * r['balanced_accuracy']:.2f} | "
              f"{100 * r['f1_macro']:.2f} | {r['seconds']:.1f} |" for r in result.comparison]
    lines += ["", "| epoch | train loss | train acc. % | val loss | val acc. % |", "|--:|--:|--:|--:|--:|"]
    lines += [f"| {h['epoch']} | " + (f"{h['train_loss']:.4f} | {100 * h['train_accuracy']:.1f}" if h["epoch"] else "– | –")
              + f" | {h['val_loss']:.4f} | {100 * h['val_accuracy']:.1f} |" for h in result.history]
    if result.skipped:
        lines += ["", "Skipped files:", ""] + [f"- `{s['path']}`: {s['reason']}" for s in result.skipped[:50]]
    with open(files["report_md"], "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return files


def write_log(history: list[dict], folder: str) -> None:
    """log.csv, log.json and curves.png of one training run."""
    with open(os.path.join(folder, "log.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    with open(os.path.join(folder, "log.json"), "w", encoding="utf-8") as fh:
        json.dump(history, fh, indent=1)
    _curves_png(history, os.path.join(folder, "curves.png"))


def _curves_png(history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    nan = float("nan")
    history = [{k: (nan if v is None else v) for k, v in h.items()} for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    left.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    left.set_title("cross-entropy loss")
    right.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train (augmented)")
    right.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation")
    right.set_title("accuracy")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
