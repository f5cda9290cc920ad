"""One ``extract`` run: list the input, work out the settings, find what the cache lacks, embed only that, commit.

Re-running on the same input embeds only new or changed files and continues an interrupted run; files that
left the input leave the cache. A rerun with nothing to do loads no weights, decodes no image and (once its
settings were resolved before) imports no torch.

The loop: decoding threads prepare the next batches while the engine runs on this one; each finished batch
goes to a background thread that writes it as a part of the cache (``CacheWriter.write_batch``), so neither
decoding nor the engine waits for the disk.

Under torchrun (``WORLD_SIZE`` > 1) every rank lists the input and plans alike, embeds its shard (every
``WORLD_SIZE``-th batch of the plan) on its own device and writes its own parts; rank 0 holds the cache's lock,
prepares the engine before the others load it, and merges once all are done (``embedder.distributed``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from embedder.cache.hdf5 import CacheReader, CacheWriter, settings_key, stored_input
from embedder.engines.engine import Calibration, Engine, Prepared, open_engine, resolve_device_name
from embedder.inputs.decode import DEFAULT_MAX_PIXELS, file_digest, fits_now, max_file_bytes
from embedder.inputs.shards import list_input
from embedder.inputs.sources import Listing, note_case_twins, rebased, same_files
from embedder.kernel.errors import FeaturebankError, IncompatibleSettings, InvalidValue
from embedder.kernel.settings import POOLINGS, TTAS, ExtractionSettings, Int8
from embedder.kernel.store import EngineStore, engine_dir_for
from embedder.kernel.versions import library_versions

from .distributed import Rank, join
from .engines import cpu as host
from .options import ExtractOptions, with_overrides
from .resolve import Request, Resolved, resolve

DEFAULT_CACHE_DIR = "cache"
KEEP_RUNS = 20  # run records kept in the cache's info


@dataclass
class ExtractSummary:
    cache: str
    rows: int  # rows in the cache after the run
    embedded: int  # images pushed through the model by this run
    reused: int  # rows kept from earlier runs
    removed: int  # rows dropped because their file left the input
    failed: list[dict] = field(default_factory=list)  # every file without a row: {path, reason}
    new_failures: int = 0
    ignored: int = 0  # non-image, hidden and system files
    classes: list[str] = field(default_factory=list)
    labelled: int = 0  # rows with a label (0: an unlabeled cache, the start of the labelling loop)
    layers: dict[str, int] = field(default_factory=dict)  # layer → vector length
    device: str = ""
    engine: dict = field(default_factory=dict)  # the engine of this run (empty when nothing was embedded)
    prepared_seconds: float = 0.0  # one-time work for these settings: export, calibration, measuring
    prepared: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # a fallback, also said on stderr when it happened
    warnings: list[dict] = field(default_factory=list)  # Pillow's warnings of the files decoded: {path, warning}
    seconds: float = 0.0
    images_per_second: float = 0.0
    settings: dict = field(default_factory=dict)
    ranks: int = 1  # processes that embedded (torchrun); the counts and the rate are of all of them

    def to_dict(self) -> dict:
        return asdict(self)


def default_cache_path(listing: Listing, settings: dict, backbone: str, cache_dir: str | None = None) -> str:
    """``cache/<input>-<backbone>-<hash of settings and input>.h5``: other settings, another file."""
    folder = cache_dir or os.environ.get("FEATUREBANK_CACHE_DIR") or DEFAULT_CACHE_DIR
    named = listing.source.split(":", 1)[1]
    if listing.kind in ("csv", "list"):
        named = os.path.splitext(named)[0]
    stem = "-".join(p for p in named.rstrip("/").split("/")[-2:] if p)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "input"
    key = settings_key({**settings, "source": listing.source})[:8]
    backbone = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone)  # timm:NAME.TAG
    return os.path.join(folder, f"{stem}-{backbone}-{key}.h5")


@dataclass(frozen=True)
class Execution:
    """How the vectors are computed, where nothing changes them beyond float rounding: recorded per run (the
    cache's ``info``), never in the settings. ``device`` is as given (``auto``) until a rank picks its own. Made
    from ``ExtractOptions`` by name (``from_options``); its defaults are the options'."""

    device: str = ExtractOptions.device
    engine: str = ExtractOptions.engine  # auto, torch or onnxruntime
    batch_size: int = ExtractOptions.batch_size
    workers: int | None = ExtractOptions.workers  # decoding processes
    threads: int | None = ExtractOptions.threads  # decoding threads
    max_pixels: int = ExtractOptions.max_pixels
    progress: bool = False

    def __post_init__(self):
        if self.batch_size < 1:
            raise InvalidValue("--batch-size must be at least 1")

    @classmethod
    def from_options(cls, options: ExtractOptions, progress: bool = False) -> Execution:
        return cls(**_named(cls, options, "progress"), progress=progress)


def _named(cls, options: ExtractOptions, *leave: str) -> dict:
    """The fields of ``cls`` that ``options`` has by the same name (``leave`` aside), with the options' values."""
    given = {f.name for f in fields(options)}
    return {f.name: getattr(options, f.name) for f in fields(cls) if f.name in given and f.name not in leave}


def request_of(options: ExtractOptions) -> Request:
    """What the vectors depend on, as given: the options of ``Request``'s names, and the int8 engine asked for
    (``options.int8``: an exact one; else the calibration options) with precision int8 only."""
    int8 = None
    if options.precision == "int8":
        int8 = options.int8 or Int8(
            options.calibration_images, options.seed, options.calibration, scheme=options.int8_scheme
        )
    return Request(**_named(Request, options, "int8", "layers"), layers=options.layers or None, int8=int8)


@dataclass(frozen=True)
class ExtractJob:
    """One ``extract``, as asked: this input into this cache, with these options, run so. Built (and checked)
    once by ``extract``; every step of the run reads it from here: ``options`` as given, ``request`` (what the
    vectors depend on, resolved into ``ExtractionSettings``) and ``execution`` made from them."""

    source: object  # a folder, manifest or list file, or a Listing
    cache: str | None  # None: a file named after the input and settings under options.cache_dir
    options: ExtractOptions
    request: Request
    execution: Execution
    notes: tuple[str, ...] = ()  # what the job decided before the run (an int8 calibration that was refused)

    def __post_init__(self):
        if self.request.pooling not in POOLINGS:
            raise InvalidValue(f"unknown pooling {self.request.pooling!r}: choose one of {', '.join(POOLINGS)}")
        if self.options.tta not in TTAS:
            raise InvalidValue(f"unknown test-time augmentation {self.options.tta!r}: choose one of {', '.join(TTAS)}")

    @classmethod
    def of(cls, source, cache: str | None, options: ExtractOptions, progress: bool = False) -> ExtractJob:
        notes: tuple[str, ...] = ()
        if options.calibration_from and options.int8 is None:  # that cache's int8 engine, in its engine folder
            try:
                int8, engine_dir = int8_of_cache(options.calibration_from, options.backbone)
                options = replace(options, int8=int8, engine_dir=options.engine_dir or engine_dir)
            except Int8Refused as refused:  # its rows are fp32: these follow, so both come from one engine
                options = replace(
                    options, precision="fp32", calibration_from=None, int8_scheme="auto", force_int8=False
                )
                notes = (str(refused),)
        return cls(source, cache, options, request_of(options), Execution.from_options(options, progress), notes)


# ExtractionSettings' fields that are options but not resolved from the request: applied to the resolved settings
# (tta). A new option of that kind that changes the vectors is a field of ExtractionSettings of the same name.
APPLIED = tuple(
    f.name
    for f in fields(ExtractionSettings)
    if f.name in ExtractOptions.__dataclass_fields__ and f.name not in Request.__dataclass_fields__
)


def extract(
    source,
    cache: str | None = None,
    options: ExtractOptions | None = None,
    *,
    progress: bool = False,
    **overrides,
) -> ExtractSummary:
    """Embed every image of ``source`` (a folder, manifest, list file, WebDataset tar shards or Parquet files
    (a folder of them, one, a glob, a list), or a :class:`Listing`) into the HDF5 cache ``cache`` (default: under
    ``options.cache_dir``, else ``cache/``), with ``options`` (an :class:`embedder.options.ExtractOptions`, default
    ``ExtractOptions()``) and ``overrides``: any of its fields by name (``backbone="resnet18", batch_size=64``; the
    shard options too: ``label_key="json:label"``); another name is a TypeError naming the fields there are.

    ``engine``: ``auto`` (ONNX Runtime on the CPU where it measured faster, torch on GPUs), ``torch`` or
    ``onnxruntime``. ``precision="int8"`` calibrates on images of the input (``calibration_images``,
    ``calibration``, ``seed``); ``int8`` (an :class:`Int8`) asks for that exact engine, as a model bundle does, and
    ``calibration_from`` for that cache's. Its scheme ``auto`` (the default) is the CPU's first scheme whose cosine
    to fp32 on the calibration images reaches the bound, else fp32, said in one line (``force_int8``: int8 anyway;
    ``embedder.engines.engine.prepare_int8``). ``progress``: a progress bar on stderr.

    Under torchrun each rank calls this with the same arguments (``cli extract`` does); every rank returns the
    job's summary; only rank 0 shows progress."""
    started = time.perf_counter()
    job = ExtractJob.of(source, cache, with_overrides(ExtractOptions, options, overrides), progress)
    with join(Rank.from_env()) as group:
        return _extract(group, started, job)


def _extract(group, started: float, job: ExtractJob) -> ExtractSummary:
    """``extract`` as one rank of ``group`` (a ``Solo`` process, or a torchrun job): each step every rank takes
    is a ``group.step``, so that a failure on one rank stops all of them with its message."""
    rank, request, asked, o = group.rank, job.request, job.execution, job.options
    with group.step("choosing the device"):
        if request.precision == "int8" and asked.device == "auto":
            dev = "cpu"
        else:
            dev = rank.device(resolve_device_name(asked.device))
        if request.precision == "fp16" and dev == "cpu":
            raise InvalidValue("fp16 needs a GPU; on the CPU use fp32, or int8 (--precision int8)")
        listing = (
            job.source if isinstance(job.source, Listing) else list_input(job.source, o.layout, o.shards, o.confine)
        )
        if rank.leader:
            note_case_twins(listing)
    # this rank's device; only rank 0 shows progress
    execution = replace(asked, device=dev, progress=asked.progress and rank.leader)
    store = EngineStore(o.engine_dir or engine_dir_for(job.cache, o.cache_dir))
    resolved = group.leader_first("resolving the settings", lambda: resolve(request, store))
    # tta="flip": a setting of its own (rows, engine, file name), as every name of APPLIED
    settings = replace(resolved.settings, **{name: getattr(o, name) for name in APPLIED})
    calibration_files: list[str] = []
    fixed_calibration = bool(request.int8 is not None and request.int8.calibration_set)
    named = replace(settings, int8=replace(settings.int8, calibration_set="")) if settings.int8 else settings
    path = os.path.abspath(job.cache or default_cache_path(listing, named.to_dict(), named.backbone, o.cache_dir))
    with group.step("drawing the int8 calibration images"):
        if settings.precision == "int8":
            settings, calibration_files = int8_settings(settings, listing, path)
    run = Run(settings, resolved, store, execution)
    for note in job.notes if rank.leader else ():
        sys.stderr.write(f"featurebank: {note}\n")
        run.notes.append(note)
    if settings.int8 is not None and (settings.int8.scheme == "auto" or not fixed_calibration):
        # before the cache (it names the rows); a scheme named is built as asked, with a note if under the bound
        choice = group.leader_first(
            "choosing the int8 scheme", lambda: run.choose_int8(calibration_files, fixed_calibration, o.force_int8)
        )
        settings = run.settings = choice.settings
        if not choice.int8 and job.cache is None:  # fp32 instead: the fp32 cache of this input, rows shared
            path = os.path.abspath(default_cache_path(listing, settings.to_dict(), settings.backbone, o.cache_dir))
    base_info = {"weights_file": resolved.weights_file, "input_kind": listing.kind}
    stored = stored_input(path)
    if stored and stored[0] != listing.source and same_files(*stored, listing.source, stored[1]):
        # a manifest of the files of this cache's folder (or the other way round): its rows, by their names there
        listing = rebased(listing, stored[1]) or listing

    writer = CacheWriter(
        path, settings.to_dict(), listing.source, listing.root, base_info, rank=rank.rank, lock=rank.leader
    )
    with ExitStack() as held:  # rank 0 takes the lock and cleans up; then the others read the cache
        group.leader_first("opening the cache", lambda: held.enter_context(writer))
        with group.step("planning"):
            todo = _plan(listing, writer, asked.max_pixels)
        _same_plan(group, todo)
        listed, planned = {item.path for item in listing.items}, {item.path for item in todo}
        removed = sum(1 for p, e in writer.entries.items() if p not in listed and e.reason is None)
        reused = sum(
            1
            for item in listing.items
            if not item.error and item.path not in planned and writer.entries[item.path].reason is None
        )
        new_failures = sum(1 for item in listing.items if item.error)
        run.cpu_note(writer.previous_info)
        shard = rank.shard(todo, execution.batch_size)

        def open_engine():
            run.open(calibration_files, fixed_calibration)

        if todo and group.distributed:  # rank 0 exports, measures or calibrates; the others then load its engine
            group.leader_first("preparing the engine", lambda: open_engine() if shard else None)
        failures = 0
        with group.step("embedding"):
            if shard:
                try:
                    failures = run.embed(shard, listing, writer, (lambda: None) if group.distributed else open_engine)
                except KeyboardInterrupt as exc:
                    if not group.distributed:  # one process: what it kept is what it counted
                        exc.kept = kept_after_interrupt(run.embedded, len(shard))  # type: ignore[attr-defined]
                    raise
        if group.distributed:
            failures = run.combine(group.gather(run.tally(failures)))
        new_failures += failures
        with group.step("merging"):
            if rank.leader:
                writer.adopt_parts()
                writer.info = lambda: _info(
                    {**base_info, "versions": library_versions()}, writer.previous_info, run, path, rank.world_size
                )
                if writer.dims is None:  # nothing was ever embedded: the sizes come from the architecture
                    writer.dims = {layer: int(resolved.dims[layer]) for layer in settings.layers}
                writer.commit(
                    [(i.path, i.label, i.group) for i in listing.items],
                    {i.path: (i.size, i.mtime_ns, i.error) for i in listing.items if i.error},
                )

    summary = None
    with group.step("reading the merged cache"):
        if rank.leader:
            summary = _summary(
                path,
                run,
                listing,
                started,
                reused=reused,
                removed=removed,
                new_failures=new_failures,
                ranks=rank.world_size,
            )
    summary = group.broadcast(summary)
    failed = summary.failed
    if o.strict and failed:
        first = "; ".join(f"{f['path']}: {f['reason']}" for f in failed[:3])
        raise FeaturebankError(
            f"{len(failed)} file(s) could not be embedded (--strict): {first}"
            f"{' ...' if len(failed) > 3 else ''}; the {summary.rows} good rows are saved in {path}"
        )
    return summary


def kept_after_interrupt(embedded: int, planned: int) -> str:
    """What an interrupted extraction kept, for its one line: the images this run finished (each batch is committed
    as it completes), of those it had to embed."""
    if embedded == 0:
        return f"no image of the {planned} to embed was finished, the cache is as it was; run the same command again"
    return (
        f"the {embedded} of {planned} images embedded so far are kept; run the same command again to continue from them"
    )


def _same_plan(group, todo: list) -> None:
    """Every rank must have planned the same images, or shards would overlap or miss some: a file that changed
    while the ranks listed the input is refused (running again plans anew)."""
    if not group.distributed:
        return
    import hashlib

    digest = hashlib.blake2b(repr([(i.path, i.size, i.mtime_ns) for i in todo]).encode(), digest_size=16).hexdigest()
    plans = group.gather(digest)
    if len(set(plans)) > 1:
        raise FeaturebankError(
            "the ranks planned different images (did the input change while they listed it?); "
            "run the same command again"
        )


def _summary(
    path: str, run: Run, listing: Listing, started: float, *, reused: int, removed: int, new_failures: int, ranks: int
) -> ExtractSummary:
    reader = CacheReader(path)
    failed = [{"path": p, "reason": r} for p, r in zip(reader.failures["path"], reader.failures["reason"])]
    summary = ExtractSummary(
        cache=path,
        rows=len(reader),
        embedded=run.embedded,
        reused=reused,
        removed=removed,
        failed=failed,
        new_failures=new_failures,
        ignored=listing.ignored,
        classes=reader.classes,
        labelled=0 if reader.labels is None else int(np.count_nonzero(reader.labels != "")),
        layers=reader.dims,
        device=run.execution.device,
        engine=run.engine.describe() if run.engine else {},
        prepared_seconds=round(run.prepared.seconds, 3),
        prepared=run.prepared.steps,
        notes=run.notes,
        warnings=run.warned,
        seconds=round(time.perf_counter() - started, 3),
        images_per_second=run.rate,
        settings=run.settings.to_dict(),
        ranks=ranks,
    )
    return summary


class Int8Refused(InvalidValue):
    """``--calibration-from`` a cache whose int8 was refused on its CPU (its rows are fp32)."""


def int8_of_cache(path: str, backbone: str | None = None) -> tuple[Int8, str]:
    """The int8 calibration of an int8 cache and the engine folder it lives in: to embed other images (a
    validation set) with exactly that engine, of ``backbone`` when given (another network's is refused). A cache
    where int8 was asked and refused is ``Int8Refused``."""
    reader = CacheReader(path)
    settings = ExtractionSettings.from_dict(reader.settings)
    if backbone and settings.backbone.partition(".")[0] != backbone.partition(".")[0]:  # without a timm tag:
        raise IncompatibleSettings(  # timm:ARCH given, timm:ARCH.TAG recorded
            f"--calibration-from {path} was embedded with {settings.backbone}, not {backbone}: its int8 engine is "
            f"of that network (give -b {settings.backbone}, or calibrate anew)"
        )
    if settings.int8 is None:
        if (reader.info or {}).get("int8_refused"):
            raise Int8Refused(
                f"--calibration-from {path}: int8 was refused there (its CPU's check) and its rows are fp32, so "
                f"these are fp32 too, from the same engine (--force-int8 on both keeps int8)"
            )
        raise InvalidValue(f"{path} is not an int8 cache (precision {settings.precision})")
    return settings.int8, engine_dir_for(path)


def int8_settings(settings: ExtractionSettings, listing: Listing, path: str | None):
    """Fill in the calibration set: the one asked for (a bundle's, another cache's), the one this cache was made
    with (so reruns keep their engine whatever changed in the input), or a reproducible draw from the input.
    Returns the settings and the draw's files (what a missing engine is rebuilt from, if they are unchanged)."""
    from embedder.cache.hdf5 import stored_settings
    from embedder.engines.quantize import calibration_set_id, draw_calibration

    wanted = settings.int8
    if wanted is None:  # the caller fills it in for --precision int8
        raise ValueError("int8_settings needs the settings' int8 request")
    recorded = stored_settings(path) if path else None
    if not wanted.calibration_set and recorded:
        stored = ExtractionSettings.from_dict(recorded)
        if stored.int8 and same_request(stored.int8, wanted):
            wanted = stored.int8
    if hasattr(listing, "where"):  # samples of shards have no file to calibrate from
        if not wanted.calibration_set:
            raise InvalidValue(
                "int8 from shards needs a calibration made on image files: extract some of "
                "them with --precision int8, then use --calibration-from that cache"
            )
        return replace(settings, int8=wanted), []
    candidates = [(listing.full_path(i), i.path) for i in listing.items if not i.error]
    chosen = draw_calibration(candidates, wanted)[: wanted.images]
    if not wanted.calibration_set:
        if not chosen:
            raise InvalidValue("int8 needs calibration images, and the input has none")
        digests = []
        for p in chosen:
            try:
                digests.append(file_digest(p))
            except OSError:
                digests.append("")  # as the decoder records an unreadable file
        wanted = replace(wanted, calibration_set=calibration_set_id(digests))
    return replace(settings, int8=wanted), chosen


def same_request(stored: Int8, wanted: Int8 | None) -> bool:
    """Whether the int8 of a cache is what ``wanted`` asks for (its calibration set aside; any scheme for
    ``auto``: the one chosen when the cache was made is kept, whatever this CPU would choose now)."""
    if wanted is None:
        return False
    if wanted.scheme == "auto":
        stored = replace(stored, scheme="auto", fp32_layers=0)
    return replace(stored, calibration_set="") == wanted


def _info(base: dict, previous: dict, run: Run, path: str, ranks: int = 1) -> dict:
    """The cache's ``info``: versions and weights file, the last runs' engines, int8's measured agreement."""
    runs = list(previous.get("runs", []))
    if run.engine is not None:
        runs.append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "embedded": run.embedded,
                "engine": run.engine.describe(),
                "batch_size": run.execution.batch_size,
                "images_per_second": run.rate,
                "prepared_seconds": round(run.prepared.seconds, 3),
                **({"ranks": ranks} if ranks > 1 else {}),
            }
        )
    info = {**base, "runs": runs[-KEEP_RUNS:]}
    refused = run.int8_refused or previous.get("int8_refused")
    if refused and run.settings.precision != "int8":  # int8 was asked for these rows and refused: why, kept
        info["int8_refused"] = refused
    engine_meta = getattr(run.engine, "meta", None)  # an ONNX Runtime engine's (int8's measurements)
    int8 = (
        engine_meta.get("cosine_to_fp32") if engine_meta is not None else previous.get("int8", {}).get("cosine_to_fp32")
    )
    if run.settings.precision == "int8" and int8:
        meta = engine_meta if engine_meta is not None else previous["int8"]
        info["int8"] = {
            "cosine_to_fp32": int8,
            "calibration": meta.get("calibration"),
            "scheme": meta.get("scheme", run.settings.int8.name if run.settings.int8 is not None else None),
            "cpu": meta.get("cpu"),  # where it was calibrated and measured (absent: before CPUs were recorded)
            "choice": meta.get("int8_choice", meta.get("choice")),  # the schemes tried on that CPU, with their cosines
        }
    return info


def _plan(listing: Listing, writer: CacheWriter, max_pixels: int = DEFAULT_MAX_PIXELS) -> list:
    """The items the cache has no up-to-date entry for. Same size and mtime: up to date; same size and
    another mtime: compared by content digest (a touched or copied file is not embedded again). A file refused
    for its size is tried again once ``max_pixels`` allows it (the advice its reason gives)."""
    todo = []
    if hasattr(listing, "item_digest"):  # a sample of a shard: as bounded as a file

        def digest(item):
            return listing.item_digest(item, max_pixels)

    else:

        def digest(item):
            return file_digest(listing.full_path(item), max_file_bytes(max_pixels))

    for item in listing.items:
        if item.error:
            continue
        entry = writer.entries.get(item.path)
        if entry is not None and entry.reason is not None and fits_now(entry.reason, item.size, max_pixels):
            todo.append(item)
            continue
        if entry is not None and entry.size == item.size:
            if entry.mtime_ns == item.mtime_ns:
                continue
            try:
                same = entry.digest and digest(item) == entry.digest
            except OSError:
                same = False
            if same:
                writer.touch(item.path, item.size, item.mtime_ns)
                continue
        todo.append(item)
    return todo


class Run:
    """The embedding part of one extract run: the engine, the loop, what it did."""

    def __init__(self, settings: ExtractionSettings, resolved: Resolved, store: EngineStore, execution: Execution):
        """``execution``: with this rank's device (not ``auto``)."""
        self.settings, self.resolved, self.store, self.execution = settings, resolved, store, execution
        self.engine: Engine | None = None
        self.prepared = Prepared()
        self.embedded = 0
        self.warned: list[dict] = []  # Pillow's warnings: {path, warning}
        self.processed = 0  # images pushed through decoding (embedded or failed)
        self.loop_seconds = 0.0
        self._model = None
        self.notes: list[str] = []  # fallbacks and warnings, each said once on stderr
        self.int8_refused: dict | None = None  # int8 was asked, the guard chose fp32: why (recorded in the cache)

    def tally(self, failures: int) -> tuple:
        return self.embedded, failures, self.processed, self.loop_seconds

    def combine(self, tallies: list[tuple]) -> int:
        """The job's counts from every rank's ``tally``: images summed, the loop as long as the slowest rank's.
        Returns the failures of all ranks."""
        self.embedded = sum(t[0] for t in tallies)
        self.processed = sum(t[2] for t in tallies)
        self.loop_seconds = max(t[3] for t in tallies)
        return sum(t[1] for t in tallies)

    @property
    def rate(self) -> float:
        """Images (embedded or failed) per second of the loop."""
        return round(self.processed / self.loop_seconds, 2) if self.processed else 0.0

    def build_model(self):
        """The torch backbone (imports torch, loads the weights): only when an engine needs it."""
        if self._model is None:
            from embedder.backbones.registry import load_backbone

            p = self.settings.preprocessing
            r = self.resolved
            self._model = load_backbone(self.settings.backbone, r.weights_arg, r.seed, p.resize, p.crop, p.draft).model
        return self._model

    def calibration(self, calibration_files: list[str], fixed: bool = False) -> Calibration:
        return Calibration(
            lambda: calibration_batches(
                calibration_files, self.settings, self.execution.max_pixels, self.execution.threads
            ),
            fixed,  # an int8 engine named by a bundle or another cache: found, never redrawn
        )

    def choose_int8(self, calibration_files: list[str], fixed: bool, force: bool):
        """The int8 scheme (or fp32) this CPU keeps for these settings (``engines.prepare_int8``)."""
        from embedder.engines.engine import prepare_int8

        choice = prepare_int8(
            self.settings,
            self.store,
            self.build_model,
            self.calibration(calibration_files, fixed),
            self.prepared,
            batch_size=self.execution.batch_size,
            force=force,
        )
        if not choice.int8:
            self.int8_refused = {"note": choice.note, "tried": choice.tried, "cpu": host.current_cpu().to_dict()}
        if self.prepared.note:
            sys.stderr.write(f"featurebank: {self.prepared.note}\n")
            self.notes.append(self.prepared.note)
            self.prepared.note = None
        return choice

    def cpu_note(self, previous: dict) -> None:
        """An int8 cache extended on another kind of CPU than the one that made its rows: one line, not an error
        (the same int8 file computes other vectors where VNNI is missing or present)."""
        if self.settings.precision != "int8":
            return
        made = (previous.get("int8") or {}).get("cpu") or next(
            (r["engine"].get("cpu") for r in reversed(previous.get("runs", [])) if r["engine"].get("cpu")), None
        )
        here = host.current_cpu()
        if made and not host.same_kind(made, here):
            note = (
                f"this int8 cache was made on another kind of CPU ({made.get('model')}, int8 kind "
                f"{made.get('int8_kind')}) than this one ({here.model}, {here.int8_kind}): its new rows may differ "
                f"from the old beyond rounding (featurebank info shows both CPUs)"
            )
            sys.stderr.write(f"featurebank: {note}\n")
            self.notes.append(note)

    def open(self, calibration_files: list[str], fixed: bool = False) -> None:
        calibration = self.calibration(calibration_files, fixed)

        how = self.execution
        self.engine = open_engine(
            self.settings,
            self.store,
            self.build_model,
            engine=how.engine,
            device=how.device,
            batch_size=how.batch_size,
            calibration=calibration,
            prepared=self.prepared,
        )
        if self.prepared.note:
            sys.stderr.write(f"featurebank: {self.prepared.note}\n")
            self.notes.append(self.prepared.note)

    def embed(self, todo, listing: Listing, writer: CacheWriter, open_engine) -> int:
        """Push ``todo`` through the engine (``open_engine()`` loads it while the first batches decode); each
        finished batch is committed to the cache (in a background thread) as it completes. Returns how many
        images failed."""
        from concurrent.futures import ThreadPoolExecutor  # what only embedding needs, imported only then: a

        from tqdm import tqdm  # rerun with nothing to do stays a fraction of a second

        from embedder.engines.guard import BatchRunner
        from embedder.inputs.batches import ImageDataset, batches

        dims, how = self.resolved.dims, self.execution
        if hasattr(listing, "dataset"):  # samples of shards: their bytes come from the shards
            dataset = listing.dataset(todo, self.settings.preprocessing, how.max_pixels)
        else:
            dataset = ImageDataset(
                [listing.full_path(item) for item in todo], self.settings.preprocessing, how.max_pixels
            )
        started, prepared_before = time.perf_counter(), self.prepared.seconds
        stream = batches(
            dataset,
            how.batch_size,
            how.workers,
            pin_memory=how.device.startswith("cuda"),
            device_type=how.device.split(":")[0],
            threads=how.threads,
        )
        try:
            open_engine()
        except BaseException:
            getattr(stream, "close", lambda: None)()
            raise
        runner = BatchRunner(self.engine)
        runner.chunk = self.prepared.max_batch  # measuring the engines ran out of memory: start at what fitted
        failures = 0
        in_flight: deque = deque()
        with (
            ThreadPoolExecutor(1, thread_name_prefix="featurebank-write") as write,
            tqdm(
                total=len(todo),
                unit="img",
                disable=not how.progress,
                file=sys.stderr,
                dynamic_ncols=True,
                desc=f"{self.settings.backbone} → {os.path.basename(writer.path)}",
            ) as bar,
        ):
            try:
                for batch in stream:
                    if batch.indices:
                        features = runner(batch.images)
                    else:
                        features = {
                            layer: np.empty((0, int(dims[layer])), np.float32) for layer in self.settings.layers
                        }
                    good = [todo[i] for i in batch.indices]
                    bad = [todo[i] for i, _, _ in batch.failures]
                    self.warned += [{"path": todo[i].path, "warning": w} for i, w in getattr(batch, "notes", ())]
                    in_flight.append(
                        write.submit(
                            writer.write_batch,
                            rows={
                                "path": [i.path for i in good],
                                "label": [i.label for i in good],
                                "group": [i.group for i in good],
                                "size": [i.size for i in good],
                                "mtime_ns": [i.mtime_ns for i in good],
                                "digest": batch.digests,
                            },
                            features=features,
                            failures={
                                "path": [i.path for i in bad],
                                "reason": [r for _, r, _ in batch.failures],
                                "digest": [d for _, _, d in batch.failures],
                                "size": [i.size for i in bad],
                                "mtime_ns": [i.mtime_ns for i in bad],
                            },
                        )
                    )
                    while len(in_flight) > 2:  # bounded: at most two batches wait for the disk
                        in_flight.popleft().result()
                    self.embedded, failures = self.embedded + len(good), failures + len(bad)
                    bar.update(len(good) + len(bad))
            finally:  # whatever stopped the loop, batches already handed to the writer are finished
                getattr(stream, "close", lambda: None)()
                while in_flight:
                    in_flight.popleft().result()
        # the loop: from the first decode to the last batch handed over; the engine's loading (which overlaps
        # decoding) is in it, one-time preparation (export, measuring, calibration) is not
        self.loop_seconds = max(1e-9, time.perf_counter() - started - (self.prepared.seconds - prepared_before))
        self.processed = len(todo)
        return failures


def calibration_batches(files: list[str], settings: ExtractionSettings, max_pixels: int, threads) -> list[np.ndarray]:
    """The calibration images, decoded like any input (bad files skipped), in batches of 16. They must be the ones
    the settings name: an int8 engine rebuilt from other images would put other vectors under the same settings."""
    from embedder.engines.quantize import calibration_set_id
    from embedder.inputs.batches import ImageDataset, batches

    dataset = ImageDataset(files, settings.preprocessing, max_pixels)
    decoded = list(batches(dataset, 16, 0, threads=threads))
    digests = [d for b in decoded for d in b.digests] + [d for b in decoded for _, _, d in b.failures]
    if settings.int8 is None or calibration_set_id(digests) != settings.int8.calibration_set:
        raise FeaturebankError(
            "the int8 engine of this cache is gone from its engine folder, and the calibration "
            "images it was made from have changed since: its rows cannot be reproduced; extract "
            "into a new cache (or delete this one) to calibrate anew"
        )
    return [b.images for b in decoded if b.indices]
