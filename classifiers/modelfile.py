"""The model file on disk: a format that cannot run code when it is loaded.

A model file is one zip archive holding two members:

- ``featurebank-model.json``: the format, its version and the settings and metadata (class names, layer,
  embedding settings, what it was trained on, library versions), plain JSON;
- ``pipeline.skops``: the fitted scikit-learn Pipeline written by ``skops.io``, which stores objects as a tree
  of type names and arrays (``numpy.save`` without pickles) instead of a pickle. It is loaded with an explicit
  list of trusted types: skops's own defaults (scikit-learn, numpy and scipy types) and the types listed in
  ``TRUSTED_TYPES`` (featurebank's classes and a few scikit-learn internals), nothing else. A file naming any
  other type is refused before anything in it is built.

Anything else is refused in one line before any of it is unpickled: the first bytes and the archive's
members are checked first. Old model files (joblib pickles) are read only when the caller says it trusts them
(``trust_pickle=True``: ``--trust-pickle``, or ``featurebank convert OLD NEW`` once), since unpickling a file runs
whatever code it names.
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import stat
import warnings
import zipfile
import zlib

import numpy as np

from embedder.kernel.destination import file_destination
from embedder.kernel.errors import FeaturebankError, FileProblem, InvalidValue, MissingFile

from .ensemble import ZooEnsemble
from .familiarity import REFERENCE as FAMILIARITY_ROWS
from .linear import TunedLogisticRegression
from .neighbours import CosineKNeighbors
from .registry import BlockedScaler, FewShotLDA, ReducedPCA
from .ridge import NystroemRidge, TunedRidge
from .scaling import ShrunkScaler

FORMAT = "featurebank-model"
VERSION = 4  # 4: the calibration's temperature may follow each row's margin (margin_power, a reader of 3 would ignore)
# 3: trained_on.calibration, a temperature that predict and export apply (a reader of 2 would ignore it)
READS = (2, 3, 4)  # a version 2 file (no calibration) gives its classifier's own output, as it did; 3 one temperature
EXTENSION = ".fbmodel"
META = "featurebank-model.json"
PIPELINE = "pipeline.skops"
SEEN = "training-images.npy"  # optional: the images fit on, by content (``fingerprints``); older readers skip it
REFERENCE = "training-rows.npy"  # optional: some training rows, unit float16 (``familiarity``); older readers skip it
MAX_REFERENCE_ROWS = 4 * FAMILIARITY_ROWS  # featurebank keeps 1,000: more is not a file it wrote (and n² to score)
MAX_SEEN_BYTES = 1 << 30  # 8 bytes an image: 134 million training images; a larger member is not ours
MAX_META_BYTES = 64 << 20  # settings and metadata are a few kilobytes; a larger member is not ours


# Trusted beyond skops's defaults (which already trust scikit-learn's estimators, numpy and scipy types). Each is a
# class whose loading only sets attributes: built with __new__, then __setstate__ or __dict__.update.
def _name(cls) -> str:
    """The name skops records for a class: where it is defined (not where it is re-exported from)."""
    return f"{cls.__module__}.{cls.__qualname__}"


TRUSTED_TYPES = [
    *(
        _name(cls)
        for cls in (
            ReducedPCA,
            BlockedScaler,
            ShrunkScaler,
            TunedLogisticRegression,
            TunedRidge,
            NystroemRidge,
            ZooEnsemble,
            CosineKNeighbors,
            FewShotLDA,
        )
    ),
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.tree._tree.Tree",
]

# The keys of the metadata, with the types they must have (a tuple: any of them).
SCHEMA: dict[str, type | tuple[type, ...]] = {
    "classes": list,
    "classifier": str,
    "layer": str,
    "settings": dict,
    "weights_file": (str, type(None)),
    "trained_on": dict,
    "versions": dict,
}

_PICKLE_MAGIC = (
    b"\x80",  # pickle protocol 2 and later (joblib without compression)
    b"\x78\x01",
    b"\x78\x5e",
    b"\x78\x9c",
    b"\x78\xda",  # zlib: joblib's compress=1..9
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ",
    b"\x5d\x00\x00",
    b"\x04\x22\x4d\x18",
    b"ZF",
)  # gzip bz2 xz lzma lz4
TRUST_HINT = (
    "if it is an old featurebank model file from a source you trust, load it with --trust-pickle, or "
    "convert it once: featurebank convert OLD NEW"
)


def trust_types(*names: str) -> None:
    """Trust more classes in model files (a classifier of your own, registered with ``register_classifier``):
    fully qualified names, ``"mypackage.models.MyClassifier"``. Only classes whose loading runs no code."""
    TRUSTED_TYPES.extend(n for n in names if n not in TRUSTED_TYPES)


def _jsonable(value):
    """Metadata as JSON values: numpy scalars and arrays as numbers and lists, anything else as its repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def fingerprints_of(digests) -> tuple[np.ndarray, np.ndarray]:
    """Each content digest (the cache's blake2b-128, hex) as a uint64, its first 8 bytes, in order; and which
    digests were one (a row without a digest, or with a damaged one, has none: 0 and False)."""
    values = np.zeros(len(digests), dtype=np.uint64)
    known = np.zeros(len(digests), dtype=bool)
    for i, d in enumerate(digests):
        text = str(d or "")[:16]
        if len(text) == 16:
            try:
                values[i], known[i] = int(text, 16), True
            except ValueError:
                pass
    return values, known


def fingerprints(digests) -> np.ndarray:
    """The images' ``fingerprints_of``, sorted and unique: 8 bytes an image, enough to tell a training image among
    held-out ones (a chance match 1 in 2^64 a pair). Rows without a digest are left out."""
    values, known = fingerprints_of(list(digests))
    return np.unique(values[known])


def model_destination(path: str, inputs=()) -> str:
    """``path``, where a model file is to be written, checked before any work (``file_destination``)."""
    return file_destination(path, inputs, "the model file", writes="model")


def write_model(
    path: str, meta: dict, pipeline, seen: np.ndarray | None = None, reference: np.ndarray | None = None
) -> str:
    """Write ``meta`` (the keys of ``SCHEMA``) and the fitted ``pipeline`` to ``path`` as one model file, through a
    temporary file in the same folder: an existing file is replaced only by a complete one. ``seen``: the
    ``fingerprints`` of the images fit on; ``reference``: training rows (``familiarity.reference_rows``); both
    with ``numpy.save``, no pickle."""
    import skops.io

    document = {"format": FORMAT, "version": VERSION, **_jsonable(meta)}
    missing = [k for k in SCHEMA if k not in document]
    if missing:
        raise ValueError(f"model metadata lacks {', '.join(missing)}")
    model_destination(path)
    blob = skops.io.dumps(pipeline, compression=zipfile.ZIP_DEFLATED)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(META, json.dumps(document, indent=1, allow_nan=True))
            archive.writestr(PIPELINE, blob)
            if seen is not None:
                buffer = io.BytesIO()
                np.save(buffer, np.asarray(seen, dtype=np.uint64), allow_pickle=False)
                archive.writestr(SEEN, buffer.getvalue())
            if reference is not None:
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(reference, dtype="<f2"), allow_pickle=False)
                archive.writestr(REFERENCE, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        os.replace(tmp, path)
    except OSError as exc:
        raise FileProblem(f"cannot write the model file {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def kind_of(path: str) -> str:
    """``"model"`` (this format, by its first bytes), ``"pickle"`` (a pickle or a compressed stream, as joblib writes
    them: an old model file or anything else) or ``"other"``; reads 8 bytes and unpickles nothing."""
    _check_file(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK\x03\x04"):
        return "model"
    return "pickle" if head.startswith(_PICKLE_MAGIC) else "other"


def _checkpoint_line(path: str) -> str:
    """What to do with a network's weights given where a model file goes (``finetune``'s ``best.pth``)."""
    quoted = shlex.quote(path)
    return (
        f"{path} is a PyTorch checkpoint, not a featurebank model file: a network from `featurebank finetune` "
        f"classifies with `featurebank predict --head -w {quoted} IMAGES` and becomes an ONNX file with "
        f"`featurebank export {quoted}` (its held-out scores come from training it with `finetune --test DIR`)"
    )


def _check_file(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise MissingFile(f"model file not found: {path}") from None
    if not stat.S_ISREG(mode):  # a folder, a FIFO (would block), a device: never opened
        raise FileProblem(f"{path} is not a featurebank model file (not a regular file)")


def read_model(path: str, *, trust_pickle: bool = False) -> tuple[dict, object]:
    """The metadata (checked against ``SCHEMA``) and the fitted pipeline of the model file at ``path``. A pickle is
    unpickled only with ``trust_pickle``; anything else that is not this format is a one-line error."""
    document, pipeline, _, _ = read_model_file(path, trust_pickle=trust_pickle)
    return document, pipeline


def read_model_file(
    path: str, *, trust_pickle: bool = False
) -> tuple[dict, object, np.ndarray | None, np.ndarray | None]:
    """``read_model``, and in the same reading of the archive the ``fingerprints`` of the images the pipeline was fit
    on (``SEEN``) and its reference rows (``REFERENCE``, float16, as many columns as the classifier takes), each
    None for a pickle or a file written before it was kept, read as ``_member_bytes`` says."""
    kind = kind_of(path)
    if kind == "pickle" and not trust_pickle and path.lower().endswith((".pth", ".pt")):  # torch.save's old format
        raise FileProblem(_checkpoint_line(path))
    if kind == "pickle":
        if not trust_pickle:
            raise FileProblem(
                f"{path} is a pickle, not a featurebank model file: it was not loaded, since "
                f"loading a pickle can run any code; {TRUST_HINT}"
            )
        return (*_read_pickle(path), None, None)
    if kind == "other":
        raise FileProblem(
            f"{path} is not a featurebank model file (`featurebank train` writes them)"
            + (f"; {TRUST_HINT}" if trust_pickle is False and _maybe_old_pickle(path) else "")
        )
    try:
        with zipfile.ZipFile(path) as archive:
            listed = archive.namelist()
            names = set(listed)
            twice = sorted(n for n in names if listed.count(n) > 1)
            if twice:  # zipfile reads the last copy, unzip -p shows the first: what is inspected must be what runs
                raise FileProblem(
                    f"{path} was refused: it holds {twice[0][:100]} twice (a model file holds each member once; "
                    f"a second copy would run instead of the one `unzip -p` shows)"
                )
            if META not in names and any(n.endswith("/data.pkl") for n in names):  # torch.save's zip
                raise FileProblem(_checkpoint_line(path))
            if META not in names or PIPELINE not in names:
                raise FileProblem(
                    f"{path} is a zip archive but not a featurebank model file (it lacks "
                    f"{META if META not in names else PIPELINE})"
                )
            if archive.getinfo(META).file_size > MAX_META_BYTES:
                raise FileProblem(f"{path} is not a featurebank model file ({META} is too large)")
            with archive.open(META) as fh:
                raw = fh.read(MAX_META_BYTES + 1)
            document = _document(path, raw)
            blob = archive.read(PIPELINE)
            seen = _member_bytes(path, archive, SEEN, MAX_SEEN_BYTES) if SEEN in names else None
            reference = (
                _member_bytes(path, archive, REFERENCE, _reference_bytes(document)) if REFERENCE in names else None
            )
    except FeaturebankError:  # our own refusals above are OSErrors too: they pass as they are
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise FileProblem(
            f"{path} is a damaged featurebank model file ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    pipeline = _load_pipeline(path, blob, document)
    check_consistent(path, document, pipeline)
    return (
        document,
        pipeline,
        None if seen is None else _fingerprint_array(path, seen),
        None if reference is None else _reference_array(path, reference, input_dimensions(pipeline), document),
    )


def _reference_bytes(document: dict) -> int:
    """The most bytes ``REFERENCE`` can hold: ``MAX_REFERENCE_ROWS`` float16 rows of the widest layer the metadata
    records (65,536 columns where it records none), and numpy's header."""
    dims = document["trained_on"].get("dimensions")
    widths = [v for v in dims.values() if isinstance(v, int) and v > 0] if isinstance(dims, dict) else []
    return MAX_REFERENCE_ROWS * 2 * min(max(widths, default=1 << 16), 1 << 16) + (64 << 10)


def _member_bytes(path: str, archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A ``numpy.save`` member's bytes, of a bounded size (``limit``): no member can make a reader hold more, however
    far it inflates; parsed by ``_npy_header`` against numpy's header, so no header can make it allocate more than
    the bytes it holds."""
    if archive.getinfo(name).file_size > limit:
        raise FileProblem(f"{path} is not a valid featurebank model file ({name} is too large)")
    try:
        with archive.open(name) as fh:
            raw = fh.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
        raise FileProblem(f"{path} is a damaged featurebank model file ({name}: {_first_line(exc)})") from None
    if len(raw) > limit:
        raise FileProblem(f"{path} is not a valid featurebank model file ({name} is too large)")
    return raw


def _npy_header(path: str, raw: bytes, name: str) -> tuple[tuple, bool, np.dtype, bytes]:
    """The shape, order and type ``numpy.save``'s header declares, and the bytes after it; nothing allocated."""
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f"npy format version {version}")
        shape, fortran, dtype = read[version](stream)  # the header alone (at most 10,000 bytes): nothing allocated
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise FileProblem(f"{path} is a damaged featurebank model file ({name}: {_first_line(exc)})") from None
    return shape, fortran, dtype, raw[stream.tell() :]


def _reference_array(path: str, raw: bytes, columns: int | None, document: dict) -> np.ndarray:
    """``REFERENCE``'s rows: float16, two or more rows, as many columns as the classifier takes, every value finite
    and every row of length 1 or 0 (``familiarity.unit_rows``); else one line."""
    shape, fortran, dtype, body = _npy_header(path, raw, REFERENCE)
    ok = dtype == np.dtype("<f2") and len(shape) == 2 and not fortran and 2 <= shape[0] <= MAX_REFERENCE_ROWS
    ok = ok and (columns is None or shape[1] == columns) and shape[0] * shape[1] * 2 == len(body)
    rows = np.frombuffer(body, dtype="<f2").reshape(shape) if ok else None
    if rows is not None:
        norms = np.linalg.norm(rows.astype(np.float32), axis=1)
        unit = np.abs(norms - 1) < 0.01
        ok = bool(unit.sum() >= 2 and (unit | (norms == 0)).all())  # NaN and inf fail both
        said = (document["trained_on"].get("familiarity") or {}).get("reference_rows", shape[0])
        ok = ok and said == shape[0]  # as many as the metadata says it kept
    if not ok or rows is None:
        raise FileProblem(
            f"{path} is not a valid featurebank model file ({REFERENCE} is not its training rows: 2 to "
            f"{MAX_REFERENCE_ROWS:,} float16 unit vectors, as wide as the classifier's input"
            + (f" ({columns})" if columns else "")
            + ")"
        )
    return rows.astype(np.float16)


def _fingerprint_array(path: str, raw: bytes) -> np.ndarray:
    """``numpy.save``'s bytes of a flat uint64 array, checked against its header before anything is allocated."""
    bad = FileProblem(f"{path} is not a valid featurebank model file ({SEEN} is not a list of fingerprints)")
    shape, fortran, dtype, body = _npy_header(path, raw, SEEN)
    if dtype != np.dtype("<u8") or len(shape) != 1 or fortran or shape[0] * 8 != len(body):
        raise bad
    return np.frombuffer(body, dtype="<u8").astype(np.uint64)


def input_dimensions(pipeline) -> int | None:
    """How many features the fitted pipeline takes (its first step that says), or None when none says."""
    for _, step in getattr(pipeline, "steps", [("clf", pipeline)]):
        n = getattr(step, "n_features_in_", None)
        if n is not None:
            return int(n)
    return None


def check_consistent(path: str, document: dict, pipeline) -> None:
    """The metadata and the classifier must tell one story before anything runs: the classifier fitted, predicting
    exactly the class indices 0..k-1 of the k names in ``classes``, and taking as many features as the file says
    its ``layer`` has (``trained_on``'s ``dimensions``, recorded since this check; and the layer among
    ``trained_on``'s ``layers``). Else one line naming what disagrees."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(pipeline)
        fitted_classes = np.asarray(pipeline.classes_)
    except (NotFittedError, AttributeError, TypeError):
        raise FileProblem(
            f"{path} was refused: its classifier was never fitted (train one with `featurebank train`)"
        ) from None
    k = len(document["classes"])
    if fitted_classes.shape != (k,) or not np.array_equal(fitted_classes, np.arange(k)):
        raise FileProblem(
            f"{path} was refused: its metadata names {k} classes but its classifier predicts "
            f"{len(fitted_classes) if fitted_classes.ndim == 1 else 'other'} "
            f"(classes {', '.join(map(str, fitted_classes.ravel()[:10]))})"
        )
    layer, trained_on = document["layer"], document["trained_on"]
    layers = trained_on.get("layers")
    if isinstance(layers, list) and layers and layer not in layers:
        raise FileProblem(
            f"{path} was refused: its layer {layer!r} is not one of the layers it was trained on ({', '.join(map(str, layers[:10]))})"
        )
    calibration = trained_on.get("calibration")
    if calibration is not None:
        t = calibration.get("temperature") if isinstance(calibration, dict) else None
        source = calibration.get("input", "missing") if isinstance(calibration, dict) else "missing"
        if not _positive(t) or source not in (None, "probability", "decision"):
            raise FileProblem(
                f"{path} was refused: its calibration is not one train writes (temperature {str(t)[:40]}, "
                f"input {str(source)[:40]}: a temperature above 0 on probabilities or decision scores)"
            )
        _check_margin(path, calibration)
    takes = input_dimensions(pipeline)
    dims = trained_on.get("dimensions")
    if isinstance(dims, dict) and takes is not None and dims.get(layer) != takes:
        raise FileProblem(
            f"{path} was refused: its layer {layer!r} has {dims.get(layer, 'unrecorded')} dimensions but its "
            f"classifier takes {takes}"
        )


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_margin(path: str, calibration: dict) -> None:
    """A margin temperature's terms (``classifiers.calibration.row_scale``): a finite power, a positive median and
    a range of two positive margins, low to high; none of them when the power is absent or 0."""
    q = calibration.get("margin_power")
    if q is None or q == 0:
        return
    span = calibration.get("margin_range")
    fine = (
        isinstance(q, (int, float))
        and not isinstance(q, bool)
        and math.isfinite(q)
        and _positive(calibration.get("margin_median"))
        and isinstance(span, list)
        and len(span) == 2
        and all(_positive(v) for v in span)
        and span[0] <= span[1]
    )
    if not fine:
        raise FileProblem(
            f"{path} was refused: its calibration is not one train writes (margin power {str(q)[:40]}, median "
            f"{str(calibration.get('margin_median'))[:40]}, range {str(span)[:60]}: a finite power, a median and a "
            f"range of margins above 0)"
        )


def _maybe_old_pickle(path: str) -> bool:
    """A protocol 0 or 1 pickle starts with an opcode and no magic: say how to load one, without loading it."""
    with open(path, "rb") as fh:
        return fh.read(1) in (b"(", b"c", b"}", b"]", b"I", b"N")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "unreadable"


def _document(path: str, raw: bytes) -> dict:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FileProblem(f"{path} is a damaged featurebank model file ({META}: {_first_line(exc)})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise FileProblem(f"{path} is not a featurebank model file ({META} does not say format {FORMAT!r})")
    if document.get("version") not in READS:
        raise FileProblem(
            f"{path} is a model file of format version {document.get('version')!r}; this "
            f"featurebank reads versions {', '.join(map(str, READS[:-1]))} and {READS[-1]}: train it again with `featurebank train`"
        )
    check_metadata(path, document)
    return document


def check_metadata(path: str, document: dict) -> None:
    """One line naming the first key that is missing or of the wrong type (never a KeyError later)."""
    for key, kind in SCHEMA.items():
        if key not in document:
            raise FileProblem(f"{path} is not a complete featurebank model file: it has no {key!r}")
        if not isinstance(document[key], kind):
            want = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise FileProblem(
                f"{path} is not a valid featurebank model file: {key!r} is a "
                f"{type(document[key]).__name__}, not a {want}"
            )
    classes = document["classes"]
    if len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise FileProblem(f"{path} is not a valid featurebank model file: 'classes' must be two or more names")
    weights = document["settings"].get("weights")
    if not isinstance(weights, str):
        raise FileProblem(f"{path} is not a valid featurebank model file: 'settings' has no 'weights' name")
    from embedder.kernel.settings import ExtractionSettings

    try:
        ExtractionSettings.from_dict(document["settings"])
    except FeaturebankError as exc:
        raise FileProblem(f"{path} is not a valid featurebank model file: 'settings': {exc}") from None


def _load_pipeline(path: str, blob: bytes, document: dict):
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipeline = skops.io.loads(blob, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        try:  # only to name them in the message: nothing is trusted from this list
            named = ", ".join(t for t in skops.io.get_untrusted_types(data=blob) if t not in TRUSTED_TYPES)[:300]
        except Exception:  # noqa: BLE001 - the refusal stands whatever the listing hits
            named = _first_line(exc)
        raise FileProblem(
            f"{path} was refused: its classifier names types featurebank does not trust ({named}); "
            f"a model file from `featurebank train` holds only scikit-learn, numpy, scipy and "
            f"featurebank classes"
        ) from None
    except (ModuleNotFoundError, ImportError, AttributeError) as exc:
        raise FileProblem(
            f"{path} was written by an incompatible version of featurebank or scikit-learn "
            f"({type(exc).__name__}: {_first_line(exc)}); train it again with "
            f"`featurebank train`"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a crafted or damaged archive: skops raises whatever the tree hits
        raise FileProblem(
            f"{path} is a damaged featurebank model file (its classifier: {type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if not hasattr(pipeline, "predict"):
        raise FileProblem(
            f"{path} is not a valid featurebank model file: its classifier is a "
            f"{type(pipeline).__name__}, which cannot predict"
        )
    for tree in _trees(pipeline):
        problem = _tree_problem(tree)
        if problem:
            raise FileProblem(f"{path} was refused: a decision tree in it is damaged or crafted ({problem})")
    if any("InconsistentVersion" in type(w.message).__name__ for w in caught):
        warnings.warn(
            f"{path} was trained with scikit-learn {document['versions'].get('scikit-learn')}; "
            f"predictions may differ with this version. Train it again to be sure.",
            stacklevel=3,
        )
    return pipeline


def _trees(obj, seen=None):
    """Every ``sklearn.tree._tree.Tree`` reachable from a loaded estimator (its attributes, lists, dicts)."""
    from sklearn.tree._tree import Tree

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Tree):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _trees(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _trees(v, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not isinstance(obj, np.ndarray):
        yield from _trees(vars(obj), seen)


def _tree_problem(tree) -> str | None:
    """Why scikit-learn could not walk this tree safely (it indexes nodes without bounds checks), or None: every
    child of a split lies after it and inside the tree (no loop, no read outside), leaves have no children, and a
    split's feature is one of the tree's features."""
    n = int(tree.node_count)
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    if not (len(left) == len(right) == len(feature) == n) or tree.value.shape[0] != n or n < 1:
        return "its arrays do not match its node count"
    index = np.arange(n)
    leaf = left == -1
    if np.any(leaf != (right == -1)):
        return "a node has one child"
    split = ~leaf
    if np.any(
        (left[split] <= index[split]) | (left[split] >= n) | (right[split] <= index[split]) | (right[split] >= n)
    ):
        return "a child index points outside the tree or backwards"
    if np.any((feature[split] < 0) | (feature[split] >= int(tree.n_features))):
        return "a split uses a feature the tree does not have"
    return None


def _read_pickle(path: str) -> tuple[dict, object]:
    """An old model file (a joblib pickle), for a caller who trusts it: this runs whatever code the file names."""
    import pickle

    import joblib

    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            data = joblib.load(path)
    except (ModuleNotFoundError, AttributeError, ImportError) as exc:
        raise FileProblem(
            f"{path} was written by an incompatible version of featurebank or scikit-learn "
            f"({type(exc).__name__}: {exc}); train it again with `featurebank train`"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, OSError) as exc:
        raise FileProblem(
            f"{path} is not a featurebank model file ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FileProblem(f"{path} is not a featurebank model file (`featurebank train` writes them)")
    if data.get("version") != 1:
        raise FileProblem(
            f"{path} is a pickled model file of format version {data.get('version')!r}; this "
            f"featurebank reads version 1 pickles: train it again with `featurebank train`"
        )
    check_metadata(path, data)
    if "pipeline" not in data or not hasattr(data["pipeline"], "predict"):
        raise FileProblem(f"{path} is not a complete featurebank model file: it has no fitted 'pipeline'")
    check_consistent(path, data, data["pipeline"])
    meta = {k: data[k] for k in SCHEMA}
    return json.loads(json.dumps(_jsonable(meta))), data["pipeline"]


def convert(old: str, new: str) -> dict:
    """Rewrite an old model file (a joblib pickle, unpickled: only for files you trust) in this format, checked by
    loading it back; ``new`` may not be ``old``. Returns what was written."""
    if os.path.exists(new) and os.path.exists(old) and os.path.samefile(old, new):
        raise InvalidValue(f"convert writes a new file: give NEW another path than {old}")
    model_destination(new)
    if kind_of(old) == "model":
        read_model(old)
        raise InvalidValue(f"{old} is already a featurebank model file of this format: nothing to convert")
    meta, pipeline = read_model(old, trust_pickle=True)
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        skops.io.loads(skops.io.dumps(pipeline), trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise FileProblem(
            f"{old} holds types a model file may not hold ({_first_line(exc)}): nothing written"
        ) from None
    write_model(new, meta, pipeline)
    read_model(new)
    return {"model": new, "from": old, "classifier": meta["classifier"], "classes": meta["classes"]}
