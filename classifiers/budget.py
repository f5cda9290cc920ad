"""What a ``cv`` run without ``-c`` fits in its time budget: the report's own work after the folds (the neighbour
search, the map) first, then each entry's estimated seconds over every (cache, layer, fold) from its cost model
(``cost``); in the zoo's order (the linear probe first) each entry that still fits the rest of the budget is in,
unless it would crowd out later entries that cost less than half of it (``CROWD``: at 200,000 rows the linear SVM,
about 10 minutes, would otherwise take the place of ridge and LDA, 2.5 and 5 minutes, whenever the machine measured
a few percent faster); then, with what the exact entries left, an exact entry that did not fit gives way to its
approximate stand-in (``rbf-svm~nystroem`` for ``rbf-svm``) when that one fits: an exact entry comes before an approximation. An explicit
list is never cut: it is run whole, with a warning when its estimate is over the budget. Either way the plan says in
one line what it left out, what stands in, and why."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from . import cost, solver
from .cost import Shape, duration
from .options import SEMI_INNER_FOLDS, SEMI_INNER_REPEATS, SEMI_ROUNDS, CVOptions
from .parallel import within_memory
from .registry import default_classifiers, get_spec, list_classifiers, make_classifier, parse_spec, search_grid
from .rows import BY_INDEX_COST, by_index

CROWD = 0.5  # an entry is not taken where it would leave out later entries that cost less than this share of it


def extras_estimate(
    n: int,
    d: int,
    neighbours: bool = True,
    drawn_map: bool = False,
    reference: int = 20_000,
    approximate: int | None = -1,
) -> float:
    """Seconds (on the calibration machine) of what the report adds after the folds, charged to the same budget:
    the neighbour search of the outliers and label issues (exact among ``n`` rows: ``n²·d/2``; beyond
    ``approximate`` rows (-1: the switch, ``neighbours.APPROXIMATE``), the approximate index, ``n·d``, and its recall
    measured on a few hundred exact queries, ``queries·n·d``; with ``approximate=None``, beyond ``reference`` rows
    the exact search among a sample of that many, ``n·reference·d``) and, with ``--out``, the map (t-SNE of at
    most 2,000 rows: about a constant). Pass False for what is kept beside the cache already (``extras.kept``)."""
    from . import neighbours as nb

    switch = nb.APPROXIMATE if approximate == -1 else approximate
    seconds = 0.0
    if neighbours:
        if switch is not None and n > switch:
            seconds += cost.INDEX * n * d + cost.NEIGHBOURS * nb.RECALL_QUERIES * n * d
        else:
            seconds += cost.NEIGHBOURS * n * d * (n / 2 if n <= reference else reference)
    if drawn_map:
        seconds += cost.MAP
    return seconds


def fold_speed(speed: float | Callable[..., float], jobs: int, share: float = 1.0) -> float:
    """The speed of a fold with ``share`` of its time in BLAS, ``jobs`` folds at a time: each part at its own
    (``speed``: a number, or ``cost.machine_speed`` or a function of the same ``jobs`` and ``threads``)."""
    if not callable(speed):
        return float(speed)
    if share >= 1.0:
        return speed(jobs=jobs, threads=True)
    return share * speed(jobs=jobs, threads=True) + (1.0 - share) * speed(jobs=jobs, threads=False)


def blas_share(spec: str, shape: Shape) -> float:
    """The share of a fold's time that BLAS's threads share (``ClassifierSpec.threads``), from 0 to 1."""
    name, params = parse_spec(spec)
    threads = get_spec(name).threads
    return min(max(float(threads(shape, params) if callable(threads) else threads), 0.0), 1.0)


def estimate(spec: str, shape: Shape, search: bool = False, inner_folds: int = 3) -> float | None:
    """Seconds of one fold of ``spec`` (a zoo spec string) on the calibration machine; None when the entry has no
    cost model. ``search``: a nested grid search, ``inner_folds`` fits per candidate plus the refit."""
    name, params = parse_spec(spec)
    model = get_spec(name).cost
    if model is None:
        return None
    seconds = model(shape, params)
    if (
        not search
        and get_spec(name).memory_by_index is not None
        and by_index(make_classifier(spec), int(shape.n), int(shape.d))
    ):
        seconds *= BY_INDEX_COST  # cv fits this fold from the layer's rows by index: it reads the whole span
    grid = search_grid(spec) if search else {}
    if grid:
        candidates = 1
        for values in grid.values():
            candidates *= len(values)
        inner = Shape(shape.n * (inner_folds - 1) / inner_folds, shape.n / inner_folds, shape.d, shape.k)
        seconds += candidates * inner_folds * model(inner, params)
    return seconds


@dataclass(frozen=True)
class Extra:
    """What a cv run fits beyond each entry's plain folds, charged to the same budget: ``unlabeled`` rows that join
    a second fit of every fold (``"<spec> +unlabeled"``, label spreading or self-training in ``mode``, with the
    switch-off rule's inner folds), and the learning curve's ``draws`` fits of each number of ``shots`` per class
    (of the plain entry and, with unlabeled rows, of its variant too)."""

    unlabeled: int = 0
    mode: str = CVOptions.unlabeled_mode
    shots: tuple[int, ...] = ()
    draws: int = 0
    inner: bool = True  # the switch-off rule's inner fits (False: --unlabeled-rule always, none)


def semi_estimate(
    spec: str, shape: Shape, free: int, mode: str = CVOptions.unlabeled_mode, inner: bool = True
) -> float | None:
    """Seconds of one fold of ``spec`` with ``free`` unlabeled rows joining its ``shape.n`` labelled ones
    (``semi.SemiSupervised``): the switch-off rule's inner fits (``SEMI_INNER_REPEATS`` x ``SEMI_INNER_FOLDS``), the labels
    of the unlabeled rows (``spread``: the exact k-nearest-neighbour graph of every row; ``self-train``: a fit a
    round on a growing share of them, the inner folds' included) and the final fit on every row (as if used).
    ``inner`` False (``--unlabeled-rule always``): no inner fits."""

    def fit(n: float, t: float = shape.t) -> float | None:
        return estimate(spec, Shape(n, t, shape.d, shape.k))

    inner_n = shape.n * (SEMI_INNER_FOLDS - 1) / SEMI_INNER_FOLDS
    every = shape.n + free

    def self_train(n: float) -> list[float | None]:  # each round predicts the unlabeled rows; then the final fit
        rounds = [fit(n + free * r / SEMI_ROUNDS, free) for r in range(SEMI_ROUNDS)]
        return rounds + [fit(n + free)]

    repeats = SEMI_INNER_REPEATS * SEMI_INNER_FOLDS if inner else 0
    if mode == "spread":
        parts = [cost.NEIGHBOURS * every * every * shape.d, fit(every)]
        parts += [fit(inner_n)] * repeats
    else:
        parts = self_train(shape.n) + (self_train(inner_n) + [fit(inner_n)]) * repeats
    return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


def fold_estimate(
    spec: str, shape: Shape, search: bool = False, inner_folds: int = 3, extra: Extra = Extra()
) -> float | None:
    """``estimate`` of one fold, with what ``extra`` adds to it (None when any part has no cost model)."""
    parts = [estimate(spec, shape, search, inner_folds)]
    if extra.unlabeled:
        parts.append(semi_estimate(spec, shape, extra.unlabeled, extra.mode, extra.inner))
    for shots in extra.shots if extra.draws else ():
        few = Shape(min(shots * shape.k, shape.n), shape.t, shape.d, shape.k)  # the curve runs entries as they are
        parts += [estimate(spec, few)] * extra.draws
        if extra.unlabeled:  # the fold's other training rows join the unlabeled ones
            free = int(extra.unlabeled + shape.n - few.n)
            parts += [semi_estimate(spec, few, free, extra.mode, extra.inner)] * extra.draws
    return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


@dataclass
class Plan:
    """The entries to run and why the others are not: ``seconds`` per entry (the run's estimate, scaled by the
    machine's speed; None: no cost model), ``left_out`` (entry → its estimate), ``stand_ins`` (approximate →
    exact), ``budget`` (None: no limit) and ``message``, the one line a run prints."""

    classifiers: list[str]
    seconds: dict[str, float | None]
    budget: float | None
    speed: float
    explicit: bool
    left_out: dict[str, float] = field(default_factory=dict)
    stand_ins: dict[str, str] = field(default_factory=dict)
    extras: float = 0.0  # the report's neighbour search and map, estimated (scaled), out of the same budget
    over_memory: dict[str, float] = field(default_factory=dict)  # entry → its fold's estimated peak bytes
    memory_limit: float | None = None  # cost.memory_bound of the largest layer (None: not checked)
    skipped: dict[str, str] = field(default_factory=dict)  # entry → why it could not fit the data (found by fitting)
    extra: Extra = Extra()  # the unlabeled rows' and the learning curve's fits, in ``seconds``
    jobs: dict[str, int] = field(default_factory=dict)  # entry → its folds fitted side by side (absent: one at a time)

    @property
    def total(self) -> float:
        return sum(self.seconds[c] or 0.0 for c in self.classifiers)

    @property
    def worth_saying(self) -> bool:
        """A run without ``-c`` says its plan (the budget, what it left out); an explicit list only when it is over."""
        return not self.explicit or (self.budget is not None and self.total + self.extras > self.budget)

    @property
    def message(self) -> str:
        limit = f"--budget {duration(self.budget)}" if self.budget is not None else "no --budget"
        head = f"cv: {len(self.classifiers)} classifier(s), about {duration(self.total)} of fitting estimated"
        at_once = sorted({self.jobs.get(c, 1) for c in self.classifiers})
        if at_once != [1]:
            head += f" ({' or '.join(map(str, at_once))} folds at a time)"
        counted = [f"{self.extra.unlabeled:,} unlabeled rows"] if self.extra.unlabeled else []
        if self.extra.shots and self.extra.draws:
            counted.append(f"the learning curve's {len(self.extra.shots)} x {self.extra.draws} draws")
        if counted:
            head += f" ({' and '.join(counted)} included)"
        if self.extras >= 1:
            head += f" and {duration(self.extras)} for the report's neighbour search and map"
        head += f" ({limit})"
        if self.explicit:
            if self.budget is not None and self.total + self.extras > self.budget:
                return f"warning: {head}, over the budget; running every -c entry as asked"
            return head
        said = []
        if self.over_memory:
            said.append(
                f"left out, over the memory bound ({gb(self.memory_limit)}): "
                + ", ".join(f"{n} (about {gb(b)})" for n, b in self.over_memory.items())
            )
        if self.left_out:
            said.append(
                "left out, over the budget: "
                + ", ".join(f"{n} (about {duration(s)})" for n, s in self.left_out.items())
            )
        if self.budget is not None and self.total + self.extras > self.budget:
            said.append(f"nothing fits: running the cheapest, {self.classifiers[0]}")
        said += [f"{a} stands in for {e} (approximate, named as such)" for a, e in self.stand_ins.items()]
        unknown = [c for c in self.classifiers if self.seconds[c] is None]
        if unknown:
            said.append(f"no estimate for {', '.join(unknown)}")
        said += [f"{c} left out: it cannot fit these data ({why})" for c, why in self.skipped.items()]
        return (
            head
            + ("; " + "; ".join(said) if said else "")
            + ("; --budget none runs every entry" if self.left_out or self.over_memory else "")
        )

    def to_dict(self) -> dict:
        return {
            "budget_seconds": self.budget,
            "estimated_seconds": {k: None if v is None else round(v, 1) for k, v in self.seconds.items()},
            "extras_estimated_seconds": round(self.extras, 1),
            "classifiers": self.classifiers,
            "left_out": {k: round(v, 1) for k, v in self.left_out.items()},
            "stand_ins": self.stand_ins,
            "over_memory_bytes": {k: round(v) for k, v in self.over_memory.items()},
            "memory_limit_bytes": None if self.memory_limit is None else round(self.memory_limit),
            "skipped": dict(self.skipped),
            "estimates_include": {
                "unlabeled_rows": self.extra.unlabeled,
                "unlabeled_mode": self.extra.mode if self.extra.unlabeled else None,
                "shots": list(self.extra.shots),
                "draws": self.extra.draws,
            },
            "machine_speed": round(self.speed, 3),
            "folds_at_once": {c: self.jobs.get(c, 1) for c in self.classifiers},
            "message": self.message,
        }


def gb(size: float | None) -> str:
    return "no bound" if size is None else f"{size / 1e9:.1f} GB"


def plan(
    classifiers,
    shapes: list[Shape],
    budget: float | None,
    speed: float | Callable[..., float] = 1.0,
    search: bool = False,
    inner_folds: int = 3,
    extras: float = 0.0,
    layer_bytes: float = 0.0,
    extra: Extra = Extra(),
    jobs: int = 1,
    folds: int = 1,
    fixed_jobs: bool = False,
) -> Plan:
    """The entries to run and why the others are not: ``classifiers``: an explicit list (kept whole) or None (the
    default entries, cut to what the budget leaves after ``extras``, the report's work: ``extras_estimate``, and to
    those whose fold fits ``cost.memory_bound`` of the largest layer, ``layer_bytes``); ``shapes``: one per (cache,
    layer, fold) the run fits, ``folds`` of them per (cache, layer); ``speed``: ``cost.machine_speed``, a number or
    a function of ``jobs`` (the folds fitted side by side) and ``threads`` (for a fold's BLAS part, or not: an
    entry's ``blas_share`` weighs the two); ``extra``: the unlabeled rows' and the learning curve's fits, in
    each entry's estimate. ``jobs``: the most folds an entry fits side by side (``parallel.fold_jobs``); unless
    ``fixed_jobs`` (asked for with ``-j``), fewer for an entry whose folds side by side would go over the memory
    bound, down to one."""
    explicit = bool(classifiers)
    wanted = list(classifiers) if explicit else default_classifiers()
    candidates = wanted if explicit else wanted + [n for n in list_classifiers() if n not in wanted]
    limit = cost.memory_bound(layer_bytes) if layer_bytes else None
    indexed = not search and not extra.unlabeled  # a search's folds and the unlabeled rows' fits copy their rows
    peaks = {spec: peak(spec, shapes, layer_bytes, indexed) for spec in candidates} if layer_bytes else {}
    free_bytes = 4.0 * extra.unlabeled * max((s.d for s in shapes), default=0)  # joined to each fold's rows

    widest = max(shapes, key=lambda s: s.n * s.d, default=None)

    def side_by_side(spec: str) -> int:
        """The folds of ``spec`` fitted at once: ``jobs``, or as many as the memory bound holds; one at a time where
        the probe's solver would run on a CUDA device (it takes the device in turn, and a fold that found it full
        would run on the CPU instead: the same run twice could differ)."""
        if jobs > 1 and widest is not None and parse_spec(spec)[0] == "logreg":
            n, d = int(widest.n), int(widest.d)
            if solver.device_for(n, d, 4.0 * n * d) is not None:
                return 1
        if jobs == 1 or fixed_jobs or limit is None:
            return jobs
        shared = cost.PROCESS + layer_bytes
        return within_memory(jobs, shared, max(peaks[spec] - shared, 0.0) + free_bytes, limit)

    at_once = {spec: side_by_side(spec) for spec in candidates}

    def total(spec: str) -> float | None:
        parts = [fold_estimate(spec, s, search, inner_folds, extra) for s in shapes]
        known = [p for p in parts if p is not None]
        if len(known) < len(parts):
            return None
        j = at_once[spec]
        rounds = math.ceil(folds / j) / folds if folds > 1 else 1.0  # folds fitted j at a time: the longest lane
        return sum(p * fold_speed(speed, j, blas_share(spec, s)) for p, s in zip(known, shapes)) * rounds

    seconds = {spec: total(spec) for spec in candidates}
    run_speed = fold_speed(speed, max(at_once[c] for c in wanted))
    extras *= fold_speed(speed, 1)
    jobs_of = {c: at_once[c] for c in candidates if at_once[c] > 1}
    if explicit or budget is None:
        return Plan(
            wanted, {c: seconds[c] for c in wanted}, budget, run_speed, explicit, extras=extras, extra=extra,
            jobs={c: j for c, j in jobs_of.items() if c in wanted},
        )  # fmt: skip
    stand_in = {get_spec(n).stands_in_for: n for n in candidates if get_spec(n).stands_in_for}
    heavy = {c: peaks[c] for c in wanted if limit is not None and peaks[c] > limit}
    if len(heavy) == len(wanted):
        heavy = {}  # nothing fits in memory either: the time alone decides
    chosen, left_out, stand_ins, spent = [], {}, {}, extras
    waiting: list[str] = []  # exact entries left out that have an approximate stand-in

    def kept_for(later: list[str], s: float) -> float:
        """The seconds of the later entries under ``CROWD`` of ``s`` that fit in what is left, in order."""
        need = 0.0
        for other in later:
            t = seconds[other] or 0.0
            if other not in heavy and t < CROWD * s and spent + need + t <= budget:
                need += t
        return need

    for i, spec in enumerate(wanted):  # in the zoo's order, the linear probe first; no estimate: kept
        s = seconds[spec] or 0.0
        if spec not in heavy and spent + s + kept_for(wanted[i + 1 :], s) <= budget:
            chosen.append(spec)
            spent += s
            continue
        if spec not in heavy:
            left_out[spec] = s
        if stand_in.get(spec) is not None:
            waiting.append(spec)
    for spec in waiting:  # then the approximate stand-ins, in the zoo's order, with what the exact entries left
        other = stand_in[spec]
        if spent + (seconds[other] or 0.0) <= budget and (limit is None or peaks[other] <= limit):
            chosen.append(other)
            stand_ins[other] = spec
            spent += seconds[other] or 0.0
    if not chosen:  # nothing fits: the cheapest entry rather than no run
        cheapest = min((c for c in wanted if c not in heavy), key=lambda c: seconds[c] or 0.0)
        chosen.append(cheapest)
        left_out.pop(cheapest, None)
        stand_ins.clear()
    order = {c: i for i, c in enumerate(wanted)}
    chosen.sort(key=lambda c: order.get(c, order.get(stand_ins.get(c, ""), len(order))))
    the_plan = Plan(chosen, {c: seconds[c] for c in chosen}, budget, run_speed, False, left_out, stand_ins, extras)
    the_plan.extra = extra
    the_plan.jobs = {c: j for c, j in jobs_of.items() if c in chosen}
    the_plan.over_memory, the_plan.memory_limit = heavy, limit
    return the_plan


def peak(spec: str, shapes: list[Shape], layer_bytes: float, indexed: bool = True) -> float:
    """The largest fold's peak bytes of ``spec``: the layer, the fold's rows and the entry's own memory model (an
    entry without one: its rows only); with ``indexed``, a fold that ``cv`` fits by index (``rows.by_index``) without
    its rows, by the entry's ``memory_by_index``."""
    name, params = parse_spec(spec)
    zoo = get_spec(name)
    model, by_rows = zoo.memory, zoo.memory_by_index
    pipe = make_classifier(spec) if indexed and by_rows is not None else None

    def one(s: Shape) -> float:
        if pipe is not None and by_rows is not None and by_index(pipe, int(s.n), int(s.d)):
            return cost.peak_bytes(layer_bytes, s, by_rows(s, params), rows=False)
        return cost.peak_bytes(layer_bytes, s, model(s, params) if model else 0.0)

    return max(one(s) for s in shapes)


__all__ = ["Extra", "Plan", "estimate", "extras_estimate", "fold_estimate", "plan", "semi_estimate"]
