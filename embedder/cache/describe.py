"""How the embedder's results read: a cache described (``featurebank info``) and an extraction summed up
(``featurebank extract``), as data for ``--json`` and as lines for a person. Needs no torch."""

from __future__ import annotations

import os
import re
import shlex
from collections import Counter

from embedder.engines.cpu import CpuInfo

from .hdf5 import CacheReader

SHOWN_FAILURES = 20  # files listed by name; --json has them all


def describe_cache(path: str, verify: bool = False) -> dict:
    """Settings (an older cache's missing keys at their defaults), rows per class, layers, skipped files, pending
    parts, the recorded runs and whether features carry checksums; ``verify`` reads every row against them first."""
    reader = CacheReader(path)
    if verify:
        reader.verify()
    return {
        "cache": reader.path,
        "rows": len(reader),
        "classes": {k: v for k, v in Counter(reader.labels).items() if k} if reader.labels is not None else {},
        "unlabeled": len(reader) if reader.labels is None else int((reader.labels == "").sum()),
        "layers": reader.dims,
        "settings": reader.full_settings,
        "source": reader.attrs["source"],
        "root": reader.attrs["root"],
        "updated": reader.attrs["updated"],
        "failed": [{"path": p, "reason": r} for p, r in zip(reader.failures["path"], reader.failures["reason"])],
        "pending_parts": reader.pending_parts,
        "info": reader.info,
        "checksums": reader.checksums,
    }


def cache_text(d: dict) -> list[str]:
    """``describe_cache``'s answer for a person."""
    s, info = d["settings"], d["info"]
    p = s["preprocessing"]
    lines = [
        f"{d['cache']}: {d['rows']} rows, updated {d['updated']}",
        f"  input        {d['source']}",
        f"  backbone     {s['backbone']}  weights {s['weights']}"
        + (f" ({info.get('weights_file')})" if info.get("weights_file") else ""),
        f"  preprocess   resize {p['resize']} ({p['interpolation']}), crop {p['crop']}, mean {p['mean']}, "
        f"std {p['std']}, draft {p['draft']}; precision {s['precision']}; pooling {s['pooling']}"
        + (f"; tta {s['tta']}" if s.get("tta", "none") != "none" else ""),
        "  layers       " + ", ".join(f"{k} [{v}]" for k, v in d["layers"].items()),
    ]
    if d["classes"]:
        lines.append("  classes      " + ", ".join(f"{k} {v}" for k, v in d["classes"].items()))
    else:
        lines.append("  classes      none")
    if d.get("unlabeled"):
        lines.append(f"  unlabeled    {d['unlabeled']}")
    lines.append(f"  skipped      {len(d['failed'])} files")
    lines += [f"    {f['path']}: {f['reason']}" for f in d["failed"][:SHOWN_FAILURES]]
    if d["pending_parts"]:
        lines.append(
            f"  unfinished   {d['pending_parts']} batches of an interrupted run wait in {d['cache']}.parts; "
            f"run extract again to merge them"
        )
    runs = info.get("runs", [])
    if runs:
        last = runs[-1]
        e = last["engine"]
        lines.append(
            f"  engine       {e['name']} on {e.get('device', 'cpu')} ({e.get('threads', '?')} threads), last "
            f"run {last['time']}: {last['embedded']} images at {last['images_per_second']} images/s "
            f"({len(runs)} run(s) recorded)"
        )
        cpus = list({CpuInfo.from_dict(r["engine"]["cpu"]).describe(): None for r in runs if r["engine"].get("cpu")})
        for cpu in cpus[-3:]:
            lines.append(f"  cpu          {cpu}" + ("" if len(cpus) == 1 else " (runs of this cache differ in CPU)"))
    int8 = info.get("int8")
    if int8:
        calib = int8.get("calibration") or {}
        scheme = int8.get("scheme", "u8s8")
        for layer, c in int8["cosine_to_fp32"].items():
            lines.append(
                f"  int8         {layer}: cosine to fp32 mean {c['mean']:.4f}, worst {c['min']:.4f}, on the "
                f"{c['images']} calibration images ({scheme}, {calib.get('method', '?')}, seed {calib.get('seed', '?')})"
            )
        tried = (int8.get("choice") or {}).get("tried") or []
        if int8.get("cpu") or len(tried) > 1:
            made = CpuInfo.from_dict(int8["cpu"]).describe() if int8.get("cpu") else "a CPU not recorded"
            lines.append(
                f"  int8         calibrated on {made}"
                + (": tried " + ", ".join(_tried(t) for t in tried) if len(tried) > 1 else "")
            )
    refused = info.get("int8_refused")
    if refused and refused.get("note"):
        lines.append(f"  int8         not used: {refused['note']}")
    lines.append("  versions     " + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()))
    return lines


def extract_text(s: dict) -> list[str]:
    """An extraction's summary (``ExtractSummary.to_dict()``) for a person."""
    engine = f"{s['engine']['name']} on {s['device']}" if s["engine"] else s["device"]
    engine += f", {s['ranks']} ranks" if s["ranks"] > 1 else ""
    lines = [f"{s['rows']} rows in {s['cache']}"]
    lines += [f"  prepared: {step}" for step in s["prepared"]]
    lines.append(
        f"  embedded {s['embedded']} ({s['images_per_second']} images/s, {engine}), "
        f"kept {s['reused']}, removed {s['removed']}, failed {len(s['failed'])}, ignored {s['ignored']} "
        f"non-image files, {s['seconds']} s"
    )
    lines += [f"  skipped {f['path']}: {f['reason']}" for f in s["failed"][:SHOWN_FAILURES]]
    if len(s["failed"]) > SHOWN_FAILURES:
        lines.append(f"  ... and {len(s['failed']) - SHOWN_FAILURES} more (featurebank info --json)")
    if s.get("warnings"):  # Pillow's warnings (corrupt EXIF data): folded here, not on stderr
        w = s["warnings"][0]
        lines.append(
            f"  Pillow warned about {len(s['warnings'])} image(s), e.g. {w['path']}: {w['warning']}"
            + (" (--json lists all)" if len(s["warnings"]) > 1 else "")
        )
    lines += next_steps(s)
    return lines


def next_steps(s: dict) -> list[str]:
    """What to run after an extraction: ``select`` for a cache with unlabeled rows (the labelling loop's start),
    ``cv`` where some are labelled."""
    if not s["rows"]:
        return []
    cache, unlabeled = shlex.quote(s["cache"]), s["rows"] - s.get("labelled", s["rows"])
    select = f"featurebank select {cache} --budget N -o to_label.csv"
    if unlabeled == s["rows"]:
        return [f"next: {select} (which N images to label first; no row has a label)"]
    if unlabeled:
        return [
            f"next: featurebank cv {cache} ({s['labelled']} labelled rows), or {select} (of the {unlabeled} without)"
        ]
    if HELD_OUT_WORDS & set(re.split(r"[^a-z]+", os.path.basename(s["cache"]).lower())):
        return [
            f"next: featurebank evaluate MODEL {cache} (its name says held-out images: score a model trained on "
            f"another cache here, once; cross-validate that training cache, not this one)"
        ]
    return [f"next: featurebank cv {cache} (keep a separate test cache for featurebank evaluate MODEL)"]


HELD_OUT_WORDS = {"val", "valid", "validation", "test", "holdout", "heldout"}  # a cache named for a test split


def _tried(t: dict) -> str:
    """A scheme the guard tried: its mean cosine to fp32 (and worst image's, recorded since the guard checks it)."""
    return f"{t['scheme']} {t['cosine']:.4f}" + (f" / {t['worst']:.4f}" if "worst" in t else "")
