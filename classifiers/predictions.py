"""Per-image answers as files: evaluate's predictions CSV (path, label, predicted) and predict's output, CSV (one
row per image, its top classes side by side and its familiarity; on a cache, the pseudo-labels as
``path,label,confidence,fit_on,familiarity``) or JSON."""

from __future__ import annotations

import csv
import io
import json
import math

from embedder.kernel.atomic import atomic_path


def write_evaluation_csv(result: dict, path: str) -> str:
    """``path,label,predicted`` per image an evaluation scored (``bundle.evaluate``: not the images the model was
    fit on, which it leaves out), then the model's probability of the predicted class and of the label (``p``,
    ``p_label``: calibrated where the model is) where it gives probabilities, and ``familiarity`` where it keeps
    training rows; returns ``path``."""
    rows = result["predictions"]
    with atomic_path(path, named=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        probable = bool(rows) and "p" in rows[0]
        familiar = bool(rows) and "familiarity" in rows[0]
        fields = ["path", "label", "predicted", *(["p", "p_label"] if probable else [])]
        fields += ["familiarity"] if familiar else []
        writer = csv.DictWriter(fh, fields, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    **r,
                    **({"p": f"{r['p']:.4f}", "p_label": f"{r['p_label']:.4f}"} if probable else {}),
                    **({"familiarity": familiarity_text(r["familiarity"])} if familiar else {}),
                }
            )
    return path


def predictions_text(result: dict, fmt: str = "csv") -> str:
    """A prediction (``bundle.predict``) as JSON, or as CSV: path, label (when known), predicted class and its score,
    then class and score of the next ones, ``fit_on`` (1: an image the model was fit on, its scores in-sample; the
    column only when some are), the image's familiarity (``classifiers.familiarity``, from a model file
    that keeps training rows) and the error of an image that could not be classified."""
    if fmt == "json":
        return json.dumps(result, indent=1) + "\n"
    if result.get("pseudo"):  # pseudo-labels of a cache (bundle.pseudo_labels): a manifest to review
        return pseudo_label_csv(result["rows"])
    rows = result["rows"]
    top = max([len(r["top"]) for r in rows if "top" in r] or [1])  # no more columns than classes
    labeled = any("label" in r for r in rows)
    familiar = "familiarity" in result  # the model keeps training rows (classifiers.familiarity)
    fit_on = any(r.get("fit_on") for r in rows)  # some were fit on: their scores are in-sample, marked 1
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    score = "p" if result["score"] == "probability" else "score"
    writer.writerow(
        [
            "path",
            *(["label"] if labeled else []),
            "predicted",
            score,
            *[f"{name}{i}" for i in range(2, top + 1) for name in ("class", score)],
            *(["fit_on"] if fit_on else []),
            *(["familiarity"] if familiar else []),
            "error",
        ]
    )
    for r in rows:
        rest = [v for t in r.get("top", [])[1:] for v in (t["class"], f"{t['score']:.4f}")]
        rest += [""] * (2 * (top - 1) - len(rest))
        writer.writerow(
            [
                r["path"],
                *([r.get("label", "")] if labeled else []),
                r.get("predicted", ""),
                f"{r['score']:.4f}" if "score" in r else "",
                *rest,
                *([("1" if r.get("fit_on") else "0") if "error" not in r else ""] if fit_on else []),
                *([familiarity_text(r["familiarity"]) if "familiarity" in r else ""] if familiar else []),
                r.get("error", ""),
            ]
        )
    return buffer.getvalue()


def pseudo_label_csv(rows: list[dict]) -> str:
    """``path,label,confidence`` per row, in the rows' order, "\n" line endings; and ``fit_on`` (1: an image the
    model was fit on, its confidence in-sample) where the model file lists its training images; ``familiarity``
    where it keeps training rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    listed = bool(rows) and "fit_on" in rows[0]
    familiar = bool(rows) and "familiarity" in rows[0]
    writer.writerow(
        ["path", "label", "confidence", *(["fit_on"] if listed else []), *(["familiarity"] if familiar else [])]
    )
    writer.writerows(
        [
            r["path"],
            r["label"],
            confidence_text(r["confidence"]),
            *([int(r["fit_on"])] if listed else []),
            *([familiarity_text(r["familiarity"])] if familiar else []),
        ]
        for r in rows
    )
    return buffer.getvalue()


def familiarity_text(value: float) -> str:
    """A familiarity with 4 significant digits: 0.009990 (under 0.01, flagged) is never printed as 0.0100."""
    return f"{value:.4g}"


def confidence_text(value: float) -> str:
    """A confidence with 4 decimals, more where it is within 0.0001 of 1: two significant digits of its distance
    to 1 (0.99999871, not 1.0000), so that the rows a review starts from stay told apart; at most 12 decimals."""
    doubt = 1.0 - value
    if doubt >= 1e-4 or value > 1.0 or doubt <= 0.0:
        return f"{value:.4f}"
    return f"{value:.{min(12, int(math.ceil(-math.log10(doubt))) + 1)}f}"


def write_predictions(result: dict, path: str, fmt: str = "csv") -> str:
    """``predictions_text`` as the whole of ``path``; returns ``path``."""
    with atomic_path(path, named=True) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(predictions_text(result, fmt))
    return path


def pseudo_label_notes(result: dict, out: str | None) -> list[str]:
    """What ``predict MODEL CACHE`` says on stderr: how many pseudo-labels, in what order, where, and the notes."""
    where = f" to {out}" if out else ""
    skipped = result["labelled_rows_skipped"]
    return [
        f"{len(result['rows'])} pseudo-label(s) of {result['cache']}{where}, {result['sort']} ({result['model']} on "
        f"{result['layer']}, confidence: its {'calibrated ' if result.get('calibrated') else 'uncalibrated '}"
        f"{result['score']}); {skipped} labelled row(s) skipped"
        + (f" (with {result['labels']})" if result.get("labels") else ""),
        *(f"note: {n}" for n in result.get("notes", [])),
        *([f"note: {result['familiarity']['note']}"] if "note" in result.get("familiarity", {}) else []),
    ]


def predict_notes(result: dict) -> list[str]:
    """What ``predict MODEL IMAGES`` says on stderr besides its cache: what its scores are, and the images the
    model was fit on (their scores in-sample), each a line."""
    rows = result["rows"]
    scored = "probabilities" if result["score"] == "probability" else "decision scores"
    lines = [
        f"scores: {result['model']}'s {'calibrated ' if result.get('calibrated') else 'uncalibrated '}{scored}"
        + (
            ""
            if result.get("calibrated")
            else " (a model trained with --no-calibrate, or by a featurebank version before calibration)"
        )
    ]
    fit_on = [r["path"] for r in rows if r.get("fit_on")]
    if fit_on:
        lines.append(
            f"note: {len(fit_on)} of the {len(rows)} image(s) are images the model was fit on (e.g. {fit_on[0]}): "
            f"their scores are in-sample, surer than a new image of the same class would get (--json marks them "
            f"fit_on)"
        )
    return lines


def cache_note(result: dict) -> str:
    """The line that names the cache a prediction embedded its images into (stderr: stdout is the CSV or JSON)."""
    return (
        f"cache: {result['cache']} ({result['embedded']} image(s) embedded now; given again in the same way, the same "
        f"folder or files, they are read from it, not embedded again; --cache chooses the file, "
        f"FEATUREBANK_CACHE_DIR the folder)"
    )
