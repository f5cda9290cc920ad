"""Label issues: which images are probably labelled wrong, how many there are, and between which classes.

Confident learning (Northcutt, Jiang & Chuang, "Confident learning: estimating uncertainty in dataset labels",
JAIR 2021), written here with numpy alone, on the out-of-fold probabilities that ``cv`` already made:

- per class k, a threshold t_k: the mean probability of k over the images labelled k;
- the confident joint C[i, j]: images labelled i whose most probable class among those above their threshold is
  j; calibrated so that each row adds up to the number of images labelled i;
- its off-diagonal sum estimates how many labels are wrong, C[i, j] (i != j) how many images of j are labelled i;
- every image is ranked by a label-quality score (self-confidence p(label), or the normalized margin
  p(label) - max other p), lowest first;
- the estimated set (the images to review): per class pair (i, j), the C[i, j] images labelled i with the largest
  p(j) - p(i), less those whose most probable class is their label ("prune by noise rate", the paper's rule and
  cleanlab's default), or the first n of the ranking with n taken from such a set (see FLAG).

The probabilities are those of several zoo members averaged, mixed with a neighbour signal (Zhu, Dong & Liu,
"Detecting corrupted labels without training a model to predict", ICML 2022): the share of each class among an
image's k nearest neighbours in feature space, from the neighbour search ``cv`` makes anyway (the outliers').
Which mix ranks best was measured on injected noise (benchmarks/label_noise.py, docs/label-issues.md); the
defaults below are that measurement's choice. cleanlab (AGPL-3.0) is not used here: only the benchmark and a
test compare against it when it is installed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np

from .neighbours import NEIGHBOURS as NEIGHBOURS_SEARCHED

RANKINGS = ("self_confidence", "normalized_margin")
RANK_BY = "self_confidence"
FLAGS = ("rank", "pair", "one_model")
# The defaults: the best of the variants compared in benchmarks/label_noise.py on flowers with a draw of flips
# that the reported table does not use (docs/label-issues.md): logreg, lda and knn averaged, mixed 3:1 with the
# neighbour vote, which ranks flips better than one model. The estimated set: the first n of that ranking, n the
# size of the best member's own prune-by-noise-rate set ("one_model"). The combined probabilities are sharper, so
# their own set ("pair") is smaller and more precise but can miss flips that one model's set catches (recall 5.9
# points below cleanlab's at 2 % on the selection draw); at one model's size the better ranking holds at least as
# many flips, so recall and precision both follow (at least cleanlab's at every rate of that draw).
FLAG = "one_model"
MEMBERS = 3  # how many of the results with probabilities, best log-loss first, are averaged (0: all of them)
NEIGHBOURS = 10  # k of the neighbour signal
NEIGHBOUR_WEIGHT = 0.25  # its share of the mixed probabilities
EPS = 1e-6  # cleanlab's slack on the threshold comparison, so that a row exactly at the mean counts

# labelled images per class under which the estimate gets a caveat (label_issues_caveat): the smallest size it was
# measured at (MEASURED_ON); it had been 20, and at 20 correct labels per class (a select loop's 100) cv estimated 11
# wrong labels with no caveat
FEW_PER_CLASS = 120
MEASURED_ON = "245 and 2,569 images (hymenoptera and flowers, about 120 and 510 per class)"  # label_noise.py


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class k: the mean probability of k over the images labelled k (1.0 for a class without images: no
    image is confidently counted into it)."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_joint(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The confident joint C[given, true] (counts, not calibrated; each diagonal at least 1, as in cleanlab) and
    each row's confident class (-1 where no class reaches its threshold). Among several classes above their
    thresholds an image goes to the most probable one."""
    k = probs.shape[1]
    t = confident_thresholds(labels, probs) if thresholds is None else thresholds
    above = probs >= t - EPS
    guess = np.where(above, probs, -np.inf).argmax(axis=1)
    guess[~above.any(axis=1)] = -1
    sure = guess >= 0
    joint = np.bincount(labels[sure] * k + guess[sure], minlength=k * k).reshape(k, k)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    return joint, guess


def calibrate(joint: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each row of the confident joint rescaled to the number of images with that given label, rounded to whole
    images so that every row still adds up exactly (largest remainders get the leftover images)."""
    joint = joint.astype(np.float64)
    rows = joint.sum(axis=1, keepdims=True)
    scaled = np.where(rows > 0, joint / np.maximum(rows, 1e-12) * counts[:, None], 0.0)
    out = np.floor(scaled).astype(np.int64)
    for i in range(len(out)):
        short = int(counts[i] - out[i].sum()) if rows[i, 0] > 0 else 0
        if short > 0:
            out[i, np.argsort(-(scaled[i] - out[i]), kind="stable")[:short]] += 1
    return out


def label_quality(labels: np.ndarray, probs: np.ndarray, method: str = RANK_BY) -> np.ndarray:
    """Per image, 0 to 1, low = likely mislabelled. ``self_confidence``: p(label). ``normalized_margin``:
    (p(label) - the largest other p + 1) / 2."""
    rows = np.arange(len(labels))
    own = probs[rows, labels]
    if method == "self_confidence":
        return own.astype(np.float64)
    if method == "normalized_margin":
        other = probs.copy()
        other[rows, labels] = -np.inf
        return ((own - other.max(axis=1) + 1) / 2).astype(np.float64)
    raise ValueError(f"unknown ranking {method!r} (one of {', '.join(RANKINGS)})")


@dataclass(frozen=True)
class LabelIssues:
    """The outcome for one labelled dataset: per image a suggested class and a label quality, the images
    likely mislabelled best first, and the calibrated confident joint that says how many and between which
    classes."""

    labels: np.ndarray  # given class per image
    suggested: np.ndarray  # the most probable class per image
    quality: np.ndarray  # 0 to 1, low = likely mislabelled (see label_quality)
    joint: np.ndarray  # calibrated confident joint, counts [given, true]; each row adds up to its label count
    thresholds: np.ndarray
    order: np.ndarray  # the images whose suggested class is not their label, most likely mislabelled first
    flagged: np.ndarray  # bool per image: in the estimated set (always a subset of ``order``)
    rank_by: str

    @property
    def estimated(self) -> int:
        """How many labels are estimated wrong: the size of the estimated set (the images to review)."""
        return int(self.flagged.sum())

    @property
    def counted(self) -> int:
        """The calibrated confident joint's off-diagonal sum: confident learning's count on these probabilities
        (the pair rule's set is this, less the images whose most probable class is their label)."""
        return int(self.joint.sum() - np.trace(self.joint))

    def pairs(self) -> list[tuple[int, int, int]]:
        """(given, suggested, count) of the estimated set per class pair, largest first; the counts add up to
        ``estimated``."""
        k = len(self.joint)
        counts = np.bincount(self.labels[self.flagged] * k + self.suggested[self.flagged], minlength=k * k)
        out = [(int(c) // k, int(c) % k, int(counts[c])) for c in np.flatnonzero(counts)]
        return sorted(out, key=lambda p: (-p[2], p[0], p[1]))


def suggest(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The most probable class per image; a tie with the label keeps the label (as cleanlab's small nudge
    towards it does)."""
    rows = np.arange(len(labels))
    suggested = probs.argmax(axis=1)
    return np.where(probs[rows, labels] >= probs[rows, suggested], labels, suggested)


def prune_by_noise_rate(labels: np.ndarray, probs: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """The paper's estimated set (Northcutt et al. 2021, section 4, "prune by noise rate"): per class pair
    (i, j), i != j, the joint[i, j] images labelled i with the largest margin p(j) - p(i); less those whose most
    probable class is their label. A class with a single image is never pruned."""
    flagged = np.zeros(len(labels), dtype=bool)
    for i in range(probs.shape[1]):
        mine = np.flatnonzero(labels == i)
        if len(mine) <= 1:
            continue
        for j in np.flatnonzero(joint[i] > 0):
            if j != i:
                margin = probs[mine, j] - probs[mine, i]
                flagged[mine[np.argsort(-margin, kind="stable")[: joint[i, j]]]] = True
    return flagged & (suggest(labels, probs) != labels)


def find_label_issues(
    labels: np.ndarray,
    probs: np.ndarray,
    rank_by: str = RANK_BY,
    flag: str = FLAG,
    count: int | None = None,
    size_from: np.ndarray | None = None,
) -> LabelIssues:
    """Confident learning on ``probs`` (rows: images, columns: classes; out-of-fold, so no model saw the image
    it judges). ``flag``: how the estimated set is chosen: ``pair``, prune by noise rate on ``probs``;
    ``one_model``, the first n images of the ranked list, n the size of the pair rule's set on ``size_from``
    (another model's probabilities of the same images: the best single model's; default ``probs``); ``rank``,
    the first ``counted`` of the ranked list. ``count``: the first ``count`` of the ranked list instead."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(labels)} labels")
    if size_from is not None and np.shape(size_from) != probs.shape:
        raise ValueError(f"size_from of shape {np.shape(size_from)} for probabilities of shape {probs.shape}")
    if rank_by not in RANKINGS:
        raise ValueError(f"unknown ranking {rank_by!r} (one of {', '.join(RANKINGS)})")
    if flag not in FLAGS:
        raise ValueError(f"unknown flag {flag!r} (one of {', '.join(FLAGS)})")
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    joint = calibrate(confident_joint(labels, probs)[0], counts)
    quality = label_quality(labels, probs, rank_by)
    suggested = suggest(labels, probs)
    wrong = np.flatnonzero(suggested != labels)
    order = wrong[np.lexsort((wrong, quality[wrong]))]  # lowest quality first, then row order
    flagged = np.zeros(len(labels), dtype=bool)
    if count is None and flag == "one_model" and size_from is not None:
        other = np.asarray(size_from, dtype=np.float64)
        count = int(prune_by_noise_rate(labels, other, calibrate(confident_joint(labels, other)[0], counts)).sum())
    if count is None and flag == "rank":
        count = int(joint.sum() - np.trace(joint))
    if count is None and flag == "one_model":  # sized by its own pair rule
        count = int(prune_by_noise_rate(labels, probs, joint).sum())
    if count is not None:
        flagged[order[:count]] = True
    else:
        flagged = prune_by_noise_rate(labels, probs, joint)
    return LabelIssues(labels, suggested, quality, joint, confident_thresholds(labels, probs), order, flagged, rank_by)


def neighbour_probs(index: np.ndarray, labels: np.ndarray, n_classes: int, k: int = NEIGHBOURS) -> np.ndarray:
    """Per image, the share of each class among the labels of its ``k`` nearest neighbours (``index``: rows'
    neighbours, most similar first, from ``neighbours.nearest_neighbours``): the neighbour vote of Zhu et al."""
    near = index[:, :k]
    out = np.zeros((len(near), n_classes))
    for c in range(near.shape[1]):
        out[np.arange(len(near)), labels[near[:, c]]] += 1
    return out / near.shape[1]


def combine(
    members: list[np.ndarray], neighbours: np.ndarray | None = None, weight: float = NEIGHBOUR_WEIGHT
) -> np.ndarray:
    """The members' probabilities averaged, then mixed with the neighbour vote: (1 - weight) * mean + weight *
    vote (no vote: the mean alone)."""
    mean = np.mean([np.asarray(m, dtype=np.float64) for m in members], axis=0)
    if neighbours is None or weight <= 0:
        return mean
    return (1 - weight) * mean + weight * neighbours


@dataclass(frozen=True)
class Signals:
    """What a run's label issues were computed from, in words for the report."""

    members: list[str]
    neighbours: int
    weight: float
    layer: str | None
    flag: str = FLAG

    def describe(self) -> str:
        text = "mean out-of-fold probabilities of " + ", ".join(self.members)
        if self.neighbours and self.weight > 0:
            text += (
                f", mixed {1 - self.weight:g}:{self.weight:g} with the labels of each image's {self.neighbours} "
                f"nearest neighbours on {self.layer} (cosine)"
            )
        return text

    def estimate(self) -> str:
        """How the estimated set was chosen, in words."""
        if self.flag == "one_model":
            return (
                f"the first n of the ranked list, n the size of {self.members[0]}'s own confident-learning set "
                "(prune by noise rate on its calibrated confident joint)"
            )
        if self.flag == "pair":
            return "prune by noise rate on the calibrated confident joint of these probabilities"
        return "the first n of the ranked list, n the calibrated confident joint's off-diagonal sum"


def from_report(
    report,
    members: int = MEMBERS,
    neighbours: int = NEIGHBOURS,
    weight: float = NEIGHBOUR_WEIGHT,
    rank_by: str = RANK_BY,
    flag: str = FLAG,
) -> tuple[LabelIssues | None, Signals | None]:
    """Label issues of a cross-validation run from what it already has: the out-of-fold probabilities of its
    results (``members`` of them, best log-loss first; 0: all) and its neighbour search (``CVReport.neighbours``).
    (None, None) when no result has probabilities."""
    ranked = [r for r in report.leaderboard("log_loss") if r.proba is not None]
    if not ranked:
        return None, None
    chosen = ranked[:members] if members > 0 else ranked
    several = len(report.sources) > 1
    names = [(f"{r.backbone}: " if several else "") + f"{r.classifier} @ {r.layer}" for r in chosen]
    vote, layer = None, None
    if neighbours > 0 and weight > 0 and len(report.data.y) > neighbours:
        layer, index, _ = report.neighbours(max(neighbours, NEIGHBOURS_SEARCHED))
        vote = neighbour_probs(index, report.data.y, len(report.classes), neighbours)
    probs = combine([r.proba.mean(axis=0) for r in chosen], vote, weight)
    return (
        find_label_issues(report.data.y, probs, rank_by, flag, size_from=chosen[0].proba.mean(axis=0)),
        Signals(names, neighbours if vote is not None else 0, weight if vote is not None else 0.0, layer, flag),
    )


def report_entries(report) -> dict:
    """The ``report.json`` keys: ``label_issues`` (every image whose suggested class is not its label, most
    likely mislabelled first: path, given label, suggested label, score = 1 - label quality, and whether it is
    in the estimated set), ``label_issues_estimated`` (that set's size) and that set per class pair."""
    found, signals = from_report(report)
    if found is None or signals is None:
        return {
            "label_issues": [],
            "label_issues_estimated": None,
            "label_issues_counted": None,
            "label_issues_pairs": [],
            "label_issues_method": None,
        }
    classes, paths = report.classes, report.data.paths
    per_class = len(paths) / max(1, len(classes))
    return {
        "label_issues_caveat": (
            f"on {len(paths)} labelled images (about {per_class:.0f} per class) a classifier's own mistakes look "
            f"like label errors: read the list as images to look at, not the estimate as a count (it was measured "
            f"on {MEASURED_ON}: benchmarks/label_noise.py)"
            if per_class < FEW_PER_CLASS
            else None
        ),
        "label_issues": [
            {
                "path": str(paths[i]),
                "label": classes[found.labels[i]],
                "suggested": classes[found.suggested[i]],
                "score": round(1.0 - float(found.quality[i]), 4),
                "within_estimate": bool(found.flagged[i]),
            }
            for i in found.order
        ],
        "label_issues_estimated": found.estimated,
        # the combined probabilities' own confident-joint count: a second figure, from sharper probabilities
        "label_issues_counted": found.counted,
        "label_issues_pairs": [{"label": classes[i], "suggested": classes[j], "count": n} for i, j, n in found.pairs()],
        "label_issues_method": {
            "signals": signals.describe(),
            "members": signals.members,
            "neighbours": signals.neighbours,
            "neighbour_weight": signals.weight,
            "neighbour_layer": signals.layer,
            "rank_by": found.rank_by,
            "score": "1 - label quality (" + found.rank_by.replace("_", " ") + "), highest first",
            "estimate": signals.estimate(),
        },
    }


CSV_COLUMNS = ["rank", "path", "label", "suggested", "score", "within_estimate"]


def write_csv(d: dict, path: str) -> str:
    """``label_issues.csv``: the report's list, one image a row, most likely mislabelled first."""
    from embedder.kernel.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for rank, item in enumerate(d.get("label_issues") or [], 1):
            w.writerow(
                [
                    rank,
                    item["path"],
                    item["label"],
                    item["suggested"],
                    f"{item['score']:.4f}",
                    int(item["within_estimate"]),
                ]
            )
    return path


FLIPS_FOUND = "with labels flipped on purpose, 42 to 82 % of such a set were flips: docs/label-issues.md"
# what the estimated set is worth, measured (docs/label-issues.md, flip seeds other than the one that chose the method)


def summary_lines(d: dict, limit: int = 10) -> list[str]:
    """The terminal's and report.md's few lines: the estimate, the pairs, the first images."""
    if d.get("label_issues_estimated") is None:
        return []
    n = d["label_issues_estimated"]
    listed = f"{len(d['label_issues'])} image(s) whose suggested class is not their label"
    if n == 0:
        out = [f"no image to review first: confident learning estimates no wrong label (out of fold); {listed}"]
    else:
        out = [
            f"{n} image(s) to review first, confident learning's estimate of the wrong labels (the first {n} of the "
            f"list, out of fold; {FLIPS_FOUND}); {listed}"
        ]
    out += [f"  about {p['count']} {p['suggested']} labelled {p['label']}" for p in d["label_issues_pairs"][:limit]]
    if d.get("label_issues_caveat"):
        out.append(f"  note: {d['label_issues_caveat']}")
    return out


def read_table(path: str, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file a person hands over (a manifest, a corrections list): its header and rows as dicts, read as
    ``extract`` reads a manifest (a regular file only, UTF-8, no NUL byte) and checked row by row: a row with more
    or fewer fields than the header, or a field too long for a CSV reader, is one line naming its line."""
    import io

    from embedder.inputs.sources import read_text
    from embedder.kernel.errors import InvalidValue

    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] = []
    rows: list[dict[str, str]] = []
    try:
        for fields in reader:
            if not fields:  # a blank line
                continue
            if not header:
                header = fields
                continue
            if len(fields) != len(header):
                raise InvalidValue(
                    f"{path} line {reader.line_num}: {len(fields)} field(s), the header names {len(header)} "
                    f"({', '.join(header)}); is {what} a CSV file with one row per image?"
                )
            rows.append(dict(zip(header, fields)))
    except csv.Error as exc:
        reason = (
            f"a field of more than {csv.field_size_limit():,} characters"
            if "field larger than field limit" in str(exc)
            else f"not valid CSV ({exc})"
        )
        raise InvalidValue(f"{path} line {reader.line_num}: {reason}; is {what} a CSV file?") from None
    return header, rows


def relabel(manifest: str, corrections: str, out: str) -> dict:
    """A copy of the CSV ``manifest`` (path,label[,group]) with the labels of ``corrections`` applied, written to
    ``out``: ``label_issues.csv`` as the report wrote it, less the rows you do not accept (each remaining row
    takes its ``suggested`` label), or with a ``new_label`` column. An empty ``new_label`` (or ``suggested``) cell
    means "no change": such rows are counted and said (``left_empty``), never applied. A row whose ``label`` is no
    longer the manifest's (a stale list) is skipped and counted, never applied; a path the manifest does not list
    is an error, and so is one path twice with other labels. Paths are matched relative to the manifest's folder,
    or, as label_issues.csv names them, relative to the cache's root (read from the run's report.json beside it;
    without it, the one manifest path that ends so). Both files are read
    as ``extract`` reads a manifest (``read_table``); ``out`` is written whole or not at all, with ``\\n`` line ends."""
    import os

    from embedder.kernel.atomic import atomic_path
    from embedder.kernel.destination import check_destination, same_file
    from embedder.kernel.errors import FileProblem, InvalidValue

    if os.path.abspath(out) == os.path.abspath(manifest) or same_file(out, manifest):
        raise InvalidValue(f"-o {out} is the manifest itself: write the corrected manifest to a new file")
    check_destination(out, [manifest, corrections], "the corrected manifest")
    root = os.path.dirname(os.path.abspath(manifest))

    def key(path: str) -> str:
        path = path.strip()
        return (
            path
            if os.path.isabs(path)
            else os.path.relpath(os.path.normpath(os.path.join(root, path)), root).replace(os.sep, "/")
        )

    fields, rows = read_table(manifest, "the manifest")
    lower = {f.strip().lower(): f for f in fields}
    if "path" not in lower:
        raise InvalidValue(f"{manifest}: not a CSV manifest (its first line must name a 'path' column)")
    path_col = lower["path"]
    label_col = lower.get("label") or "label"
    if label_col not in fields:
        fields.append(label_col)
    where = {key(r[path_col]): i for i, r in enumerate(rows) if r[path_col].strip()}
    header, wanted_rows = read_table(corrections, "the corrections file")
    names = {f.strip().lower(): f for f in header}
    column = names.get("new_label") or names.get("suggested")
    if "path" not in names or column is None:
        raise InvalidValue(
            f"{corrections}: needs a 'path' column and a 'new_label' or 'suggested' column (as label_issues.csv has)"
        )
    wanted = []
    for line, r in enumerate(wanted_rows, start=2):
        new = r[column].strip()
        if "\n" in new or "\r" in new:
            raise InvalidValue(f"{corrections} line {line}: a line break in a label, which no class folder can hold")
        wanted.append((r[names["path"]], r[names["label"]].strip() if "label" in names else None, new))
    if any(key(p) not in where for p, _, _ in wanted):  # named as the cache names them: relative to its root
        under, ending = _under_cache_root(corrections, root, where), _by_suffix(where)
        wanted = [
            (p if key(p) in where else (under and under(p)) or ending(p) or p, given, new) for p, given, new in wanted
        ]
    seen: dict[str, str] = {}
    for p, _, new in wanted:
        if seen.setdefault(key(p), new) != new:
            raise InvalidValue(f"{corrections} names {p[:200]} twice with other labels ({seen[key(p)]!r}, {new!r})")
    unknown = [p for p, _, _ in wanted if key(p) not in where]
    if unknown:
        raise InvalidValue(
            f"{len(unknown)} path(s) of {corrections} are not in {manifest} (e.g. {unknown[0][:200]}): "
            f"give the manifest the cache was extracted from"
        )
    changed = stale = empty = 0
    for path, given, new in wanted:
        row = rows[where[key(path)]]
        current = (row.get(label_col) or "").strip()
        if not new:
            empty += 1
            continue
        if new == current:
            continue
        if given is not None and given != current:
            stale += 1
            continue
        row[label_col] = new
        changed += 1
    try:
        with atomic_path(out, named=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    except OSError as exc:
        raise FileProblem(f"cannot write {out}: {exc.strerror or exc}; {manifest} is unchanged") from None
    return {
        "manifest": out,
        "rows": len(rows),
        "changed": changed,
        "stale": stale,
        "left_empty": empty,
        "unchanged": len(wanted) - changed - stale - empty,
    }


__all__ = [
    "FLAG",
    "LabelIssues",
    "MEMBERS",
    "NEIGHBOURS",
    "NEIGHBOUR_WEIGHT",
    "RANK_BY",
    "Signals",
    "calibrate",
    "combine",
    "confident_joint",
    "confident_thresholds",
    "find_label_issues",
    "from_report",
    "label_quality",
    "neighbour_probs",
    "prune_by_noise_rate",
    "read_table",
    "relabel",
    "report_entries",
    "suggest",
    "summary_lines",
    "write_csv",
]


def _under_cache_root(corrections: str, root: str, where: dict):
    """A label_issues.csv's paths are relative to the cache's root folder (``photos/`` extracted as a folder names
    ``ants/1.jpg``), a manifest's to its own folder (``photos/ants/1.jpg``): with the run's report.json beside the
    corrections, the cache's root says where each path is; returns path → the manifest's key, or None."""
    import json
    import os

    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(corrections)), "report.json"), encoding="utf-8") as fh:
            cache_root = json.load(fh).get("root")
    except (OSError, ValueError):
        return None
    if not isinstance(cache_root, str) or not cache_root:
        return None

    def located(path: str) -> str | None:
        name = os.path.relpath(os.path.normpath(os.path.join(cache_root, path.strip())), root).replace(os.sep, "/")
        return name if name in where else None

    return located


def _by_suffix(where: dict):
    """Without the run's report.json: a path the manifest lists under one folder more (``photos/`` + ``ants/1.jpg``),
    when exactly one of its paths ends so; returns path → the manifest's key, or None."""
    ends: dict[str, list[str]] = {}
    for name in where:
        parts = name.split("/")
        for i in range(1, len(parts)):
            ends.setdefault("/".join(parts[i:]), []).append(name)

    def located(path: str) -> str | None:
        found = ends.get(path.strip().replace("\\", "/").removeprefix("./"), [])
        return found[0] if len(found) == 1 else None

    return located


def relabel_text(d: dict) -> list[str]:
    """``relabel``'s answer for a person."""
    return [
        f"wrote {d['manifest']}: {d['changed']} label(s) changed, {d['stale']} stale row(s) skipped, "
        f"{d['unchanged']} unchanged"
        + (
            f", {d['left_empty']} row(s) with an empty new_label left as they were (an empty cell means no change)"
            if d.get("left_empty")
            else ""
        )
    ]
