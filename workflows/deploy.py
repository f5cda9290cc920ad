"""A trained model → one ONNX file: uint8 images (``N x crop x crop x 3``) in, class scores and class index out.

The file is three graphs joined with ``onnx.compose``: the layout (NHWC → NCHW, one Transpose), the backbone as
the onnxruntime engine runs it (the engine folder's fp32 or int8 file, with normalization, the layer and pooling
inside: the same file ``extract`` uses, made or reused the same way) and the head. Linear heads (logistic
regression, ridge, linear SVM, LDA, with the pipeline's L2 normalization, scaler and PCA) fold into one
MatMul + Add; other classifiers go through skl2onnx; a fine-tuned checkpoint's own logits are softmaxed. Every
head is compared with scikit-learn on the training rows before anything is written: a conversion that disagrees
is refused, never shipped. The head stays fp32 in an int8 file.

Receives the scikit-learn objects it converts; never imports ``classifiers``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from embedder import __version__
from embedder.atomic import atomic_path
from embedder.backbones import file_metadata, head_classes, load_backbone, output_node
from embedder.batches import ImageDataset, ThreadBatches
from embedder.cache import CacheReader
from embedder.decode import DEFAULT_MAX_PIXELS
from embedder.destination import check_destination
from embedder.engines import OnnxEngine, open_engine, prepare_int8, settings_fp32
from embedder.errors import InvalidValue, MissingFile, first_line
from embedder.job import calibration_batches, int8_settings
from embedder.resolve import Request, resolve
from embedder.settings import ONNX_PRECISIONS, ExtractionSettings, Int8
from embedder.sources import Item, Listing, list_inputs
from embedder.store import EngineStore, engine_dir_for

INPUT, SCORES, LABEL = "images", "scores", "label"
ML_OPSET = 3
# what exports, by scikit-learn class: folded into one affine map, or converted by skl2onnx (and checked)
FOLDED = (
    "LogisticRegression",
    "TunedLogisticRegression",
    "RidgeClassifier",
    "TunedRidge",
    "LinearSVC",
    "LinearDiscriminantAnalysis",
    "FewShotLDA",
)
CONVERTED = ("SVC", "RandomForestClassifier", "KNeighborsClassifier", "CosineKNeighbors")


class NotExportable(InvalidValue):
    """A head this version cannot write as ONNX; ``classifier`` is the scikit-learn class name."""

    def __init__(self, classifier: str, reason: str):
        super().__init__(reason)
        self.classifier = classifier


@dataclass
class Head:
    """What turns the backbone's vector into class scores: a fitted scikit-learn pipeline (steps ``l2``, ``scale``,
    ``pca``, ``clf`` or any of Normalizer / StandardScaler / PCA then a classifier), or None for the backbone's
    own head (its logits, softmaxed, as ``predict --head`` does)."""

    classes: list[str]
    pipeline: Any = None  # a fitted scikit-learn pipeline
    name: str = ""
    samples: np.ndarray | None = None  # feature rows to check the converted head on (the training rows)

    @property
    def output(self) -> str:
        """``probability`` or ``decision``: what ``Bundle.scores`` returns for this pipeline."""
        if self.pipeline is None or hasattr(self.pipeline, "predict_proba"):
            return "probability"
        return "decision"


@dataclass
class Exported:
    path: str
    bytes: int
    precision: str
    output: str  # probability or decision
    head: str  # how the head was written: folded, skl2onnx, softmax
    metadata: dict = field(default_factory=dict)
    accuracy: dict | None = None  # int8: fp32 and int8 accuracy on the labelled images, and their agreement
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# -- the graph builder --------------------------------------------------------------------------------------------
class _Graph:
    """A small ONNX graph under construction: nodes and constants with unique names."""

    nodes: list[onnx.NodeProto]
    inits: list[onnx.TensorProto]

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.inits, self.n = prefix, [], [], 0

    def name(self, what: str) -> str:
        self.n += 1
        return f"{self.prefix}{what}_{self.n}"

    def const(self, value, what: str = "c") -> str:
        name = self.name(what)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.name(op_type), **attrs))
        return output

    def model(self, inputs, outputs, opset: int, ir_version: int) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.prefix.strip("/") or "graph", inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = ir_version
        return m


def _float_input(name: str, width) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])


# -- heads ----------------------------------------------------------------------------------------------------------
class _Affine:
    """x → x @ A + b, composed in float64 and written as one MatMul + Add. ``A`` is None (the identity so far), a
    vector (a diagonal: a scaler, kept as a vector until a matrix comes) or a matrix."""

    def __init__(self):
        self.A, self.b = None, None

    def then(self, A, b) -> None:
        A, b = np.asarray(A, np.float64), np.asarray(b, np.float64).reshape(-1)
        if self.A is None:
            self.A, self.b = A, b
        else:
            self.A = (self.A[:, None] * A) if self.A.ndim == 1 else self.A @ A
            self.b = self.b @ A + b

    def then_scale(self, scale, shift) -> None:
        """x → x * scale + shift, elementwise."""
        scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
        if self.A is None:
            self.A, self.b = scale, shift
        else:
            self.A, self.b = self.A * scale, self.b * scale + shift

    def write(self, g: _Graph, x: str) -> str:
        if self.A is None:
            return x
        y = g.op("Mul" if self.A.ndim == 1 else "MatMul", [x, g.const(self.A.astype(np.float32), "A")])
        y = g.op("Add", [y, g.const(self.b.astype(np.float32), "b")])
        self.A, self.b = None, None
        return y


def _l2(g: _Graph, x: str) -> str:
    """Row L2 normalization as scikit-learn's ``normalize`` does it: a norm under 10 float32 epsilons counts as 1."""
    norm = g.op(
        "Sqrt", [g.op("ReduceSum", [g.op("Mul", [x, x]), g.const(np.array([1], np.int64), "axes")], keepdims=1)]
    )
    small = g.op("Less", [norm, g.const(np.float32(10 * np.finfo(np.float32).eps), "eps")])
    safe = g.op("Where", [small, g.const(np.float32(1.0), "one"), norm])
    return g.op("Div", [x, safe])


def _transform_steps(pipeline) -> tuple[list, Any]:
    """The pipeline's transformers (passthrough steps dropped) and its final classifier."""
    steps = getattr(pipeline, "steps", None)
    if steps is None:
        return [], pipeline
    transforms = [s for _, s in steps[:-1] if s is not None and s != "passthrough"]
    return transforms, steps[-1][1]


def _write_transforms(g: _Graph, x: str, transforms: list) -> tuple[str, _Affine]:
    """L2 normalization, standardization and PCA; affine ones compose and are written when a non-affine one
    comes (returned unwritten, for a linear classifier to join)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer, StandardScaler

    affine = _Affine()
    for step in transforms:
        pca = step if isinstance(step, PCA) else getattr(step, "pca_", None)  # the zoo's ReducedPCA wraps one
        if isinstance(step, Normalizer) and step.norm == "l2":
            x = _l2(g, affine.write(g, x))
        elif isinstance(step, StandardScaler):
            mean = step.mean_ if step.with_mean else 0.0
            scale = step.scale_ if step.with_std else 1.0
            n = step.n_features_in_
            affine.then_scale(
                np.broadcast_to(1.0 / np.asarray(scale, np.float64), (n,)),
                np.broadcast_to(-np.asarray(mean, np.float64) / scale, (n,)),
            )
        elif isinstance(pca, PCA):
            A = pca.components_.T.astype(np.float64)
            b = -pca.mean_.astype(np.float64) @ A
            if pca.whiten:
                scale = np.sqrt(pca.explained_variance_.astype(np.float64))
                scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
                A, b = A / scale, b / scale
            affine.then(A, b)
        else:
            raise NotExportable(
                type(step).__name__,
                f"the pipeline step {type(step).__name__} cannot be exported "
                f"(L2 Normalizer, StandardScaler and PCA can)",
            )
    return x, affine


def _probabilities_or_scores(g: _Graph, d: str, n_classes: int, probability: bool) -> str:
    """Linear decision values → what ``Bundle.scores`` returns: logistic regression and LDA give softmax over the
    classes (the sigmoid of the one value for two classes); ridge and linear SVM give the decision values, two
    classes as ``[-d, d]``."""
    if n_classes > 2:
        return g.op("Softmax", [d], axis=1) if probability else d
    if probability:
        p = g.op("Sigmoid", [d])
        return g.op("Concat", [g.op("Sub", [g.const(np.float32(1.0), "one"), p]), p], axis=1)
    return g.op("Concat", [g.op("Neg", [d]), d], axis=1)


def refusal(pipeline) -> NotExportable | None:
    """Why a pipeline cannot be exported (before any work is done), or None when it can be tried."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer, StandardScaler

    transforms, clf = _transform_steps(pipeline)
    for step in transforms:
        ok = (
            (isinstance(step, Normalizer) and step.norm == "l2")
            or isinstance(step, (StandardScaler, PCA))
            or isinstance(getattr(step, "pca_", None), PCA)
            or type(step).__name__ == "ReducedPCA"
        )  # the zoo's
        if not ok:
            return NotExportable(
                type(clf).__name__,
                f"its pipeline step {type(step).__name__} has no export (L2 Normalizer, StandardScaler and PCA have)",
            )
    kind = type(clf).__name__
    if hasattr(clf, "member_pipelines"):  # the zoo's ensemble (classifiers.ensemble)
        return NotExportable(
            kind,
            "an ensemble's head has no ONNX export yet (its members' calibration and "
            "combination are not written); export one of its members' models instead",
        )
    if kind not in FOLDED + CONVERTED:
        return NotExportable(
            kind,
            f"{kind} has no export (linear models fold into one matrix product; "
            f"{', '.join(CONVERTED)} go through skl2onnx)",
        )
    if kind in ("KNeighborsClassifier", "CosineKNeighbors") and clf.weights != "uniform":
        return NotExportable(
            kind,
            f"skl2onnx ignores the distances of weights={clf.weights!r} (it weighs every "
            f"neighbour alike: other probabilities than scikit-learn's)",
        )
    return None


def head_model(head: Head, width: int, opset: int, ir_version: int) -> tuple[onnx.ModelProto, str]:
    """The head as an ONNX model from ``features`` (float32 ``N x width``) to ``scores`` and ``label``; and how
    it was written (``folded``, ``skl2onnx`` or ``softmax``)."""
    g = _Graph("head/")
    k = len(head.classes)
    inputs = [_float_input("features", width)]
    if head.pipeline is None:
        scores = g.op("Softmax", ["features"], axis=1)
        return g.model(inputs, _finish(g, scores, k), opset, ir_version), "softmax"
    refused = refusal(head.pipeline)
    if refused is not None:
        raise refused
    transforms, clf = _transform_steps(head.pipeline)
    kind = type(clf).__name__
    x, affine = _write_transforms(g, "features", transforms)
    if kind in FOLDED:
        coef = np.atleast_2d(clf.coef_)
        affine.then(coef.T, np.broadcast_to(clf.intercept_, (coef.shape[0],)))
        scores = _probabilities_or_scores(g, affine.write(g, x), k, head.output == "probability")
        return g.model(inputs, _finish(g, scores, k), opset, ir_version), "folded"
    return _converted(g, affine.write(g, x), clf, head, width, opset, ir_version), "skl2onnx"


def _finish(g: _Graph, scores: str, k: int) -> list:
    """``scores`` and their arg-max, ``label``: the graph's outputs."""
    g.op("Identity", [scores], SCORES)
    g.op("ArgMax", [SCORES], LABEL, axis=1, keepdims=0)
    return [
        helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["batch", k]),
        helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch"]),
    ]


def _converted(g: _Graph, x: str, clf, head: Head, width: int, opset: int, ir_version: int) -> onnx.ModelProto:
    """A classifier skl2onnx converts, between our transforms and our outputs."""
    kind = type(clf).__name__
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    except ImportError as exc:
        raise NotExportable(
            kind, f"{kind} exports through skl2onnx, which is not installed ({exc}): pip install skl2onnx"
        ) from None
    dims = _width_after(head.pipeline, width)
    if kind == "CosineKNeighbors":  # the zoo's blocked search: scikit-learn's brute-force cosine kNN, which converts
        from sklearn.neighbors import KNeighborsClassifier

        clf = KNeighborsClassifier(
            n_neighbors=clf.n_neighbors, weights=clf.weights, metric="cosine", algorithm="brute"
        ).fit(clf.X_, clf.classes_[clf.y_])
    # trees compare in double as scikit-learn does (float32 features, float64 thresholds); the rest in float
    double = kind == "RandomForestClassifier"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            tensor = (DoubleTensorType if double else FloatTensorType)([None, dims])
            converted = convert_sklearn(
                clf,
                initial_types=[("x", tensor)],
                target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
                options={id(clf): {"zipmap": False}},
            )
    except Exception as exc:
        first = first_line(exc, 200)
        raise NotExportable(kind, f"skl2onnx cannot convert {kind} ({first})") from None
    converted = compose.add_prefix(_at_opset(converted, opset, ir_version), "clf/")
    clf_in = converted.graph.input[0]
    probabilities = next(o for o in converted.graph.output if o.name.endswith("probabilities"))
    g.op("Cast" if double else "Identity", [x], clf_in.name, **({"to": TensorProto.DOUBLE} if double else {}))
    pre = g.model([_float_input("features", width)], [clf_in], opset, ir_version)
    post = _Graph("head/post/")
    s = post.op("Cast", [probabilities.name], to=TensorProto.FLOAT)
    if kind == "SVC" and len(head.classes) == 2 and not hasattr(clf, "predict_proba"):
        s = post.op("Neg", [s])  # skl2onnx writes a binary SVC's decision as [d, -d]; Bundle.scores as [-d, d]
    tail = post.model([probabilities], _finish(post, s, len(head.classes)), opset, ir_version)
    pre.graph.ClearField("output")
    pre.graph.output.extend([clf_in])
    joined = compose.merge_models(pre, converted, io_map=[(clf_in.name, clf_in.name)], outputs=[probabilities.name])
    return _used_opsets(compose.merge_models(joined, tail, io_map=[(probabilities.name, probabilities.name)]))


def _width_after(pipeline, width: int) -> int:
    """The vector length that reaches the classifier (PCA shortens it)."""
    transforms, _ = _transform_steps(pipeline)
    for step in transforms:
        pca = getattr(step, "pca_", step)
        if hasattr(pca, "components_"):
            width = int(pca.components_.shape[0])
    return width


def _at_opset(model: onnx.ModelProto, opset: int, ir_version: int) -> onnx.ModelProto:
    """A converted model at the backbone's default-domain opset and IR version, so that they can be merged."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current != opset:
        from onnx import version_converter

        ml = [o for o in model.opset_import if o.domain == "ai.onnx.ml"]
        model = version_converter.convert_version(model, opset)
        del model.opset_import[:]
        model.opset_import.extend([helper.make_opsetid("", opset), *ml])
    model.ir_version = ir_version
    return model


def check_head(model: onnx.ModelProto, head: Head, width: int) -> dict:
    """Run the head on ``head.samples`` (the training rows) and compare with scikit-learn's scores. Refuses a head
    whose scores differ (beyond float32 rounding) on more than 1 % of the rows."""
    if head.pipeline is None:
        return {}
    import onnxruntime as ort

    X = head.samples
    if X is None or not len(X):
        X = np.random.default_rng(0).normal(size=(64, width))
    X = np.ascontiguousarray(X[:512], dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([SCORES], {"features": X})[0].astype(np.float64)
    if hasattr(head.pipeline, "predict_proba"):
        ref = head.pipeline.predict_proba(X)
    else:
        ref = head.pipeline.decision_function(X)
        ref = np.column_stack([-ref, ref]) if ref.ndim == 1 else ref
    if got.shape != ref.shape:
        raise NotExportable(
            type(_transform_steps(head.pipeline)[1]).__name__,
            f"the exported head gives {got.shape[1]} scores per image, scikit-learn {ref.shape[1]}",
        )
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    diff = np.abs(got - ref).max(axis=1)
    bad = int((diff > tol).sum())
    if bad > 0.01 * len(X):
        kind = type(_transform_steps(head.pipeline)[1]).__name__
        raise NotExportable(
            kind,
            f"the ONNX conversion of {kind} disagrees with scikit-learn on {bad} of {len(X)} "
            f"training rows (largest difference {diff.max():.3g})",
        )
    return {"rows": int(len(X)), "max_difference": float(diff.max())}


# -- the whole file -------------------------------------------------------------------------------------------------
def _layout(crop: int, opset: int, ir_version: int) -> onnx.ModelProto:
    g = _Graph("layout/")
    g.op("Transpose", [INPUT], "layout/nchw", perm=[0, 3, 1, 2])
    return g.model(
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", crop, crop, 3])],
        [helper.make_tensor_value_info("layout/nchw", TensorProto.UINT8, ["batch", 3, crop, crop])],
        opset,
        ir_version,
    )


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _width(backbone: onnx.ModelProto, layer: str, head: Head) -> int:
    """Length of the backbone's vector: from the graph, else what the head was fitted on."""
    out = next(o for o in backbone.graph.output if o.name == layer)
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].dim_value:
        return int(dims[1].dim_value)
    return int(getattr(head.pipeline, "n_features_in_", 0) or len(head.classes))


def assemble(backbone: onnx.ModelProto, layer: str, head_onnx: onnx.ModelProto, crop: int) -> onnx.ModelProto:
    """layout → backbone → head, as one model (the backbone's names prefixed with ``backbone/``)."""
    opset, ir = _default_opset(backbone), backbone.ir_version
    body = compose.add_prefix(_used_opsets(backbone), "backbone/")
    model = compose.merge_models(
        _layout(crop, opset, ir), body, io_map=[("layout/nchw", f"backbone/{INPUT}")], outputs=[f"backbone/{layer}"]
    )
    model = compose.merge_models(model, head_onnx, io_map=[(f"backbone/{layer}", "features")], outputs=[SCORES, LABEL])
    model.producer_name, model.producer_version = "featurebank", __version__
    return _used_opsets(model)


def _used_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Only the operator sets the graph uses, each once (ONNX Runtime's quantizer declares a dozen domains, among
    them another ``ai.onnx.ml`` version than skl2onnx's, and two models that disagree on one cannot be merged)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    kept: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if domain in used:
            kept[domain] = max(kept.get(domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in kept.items())
    return model


def metadata(settings: ExtractionSettings, head: Head, precision: str, how: str, extra: dict) -> dict:
    """The file's ``metadata_props`` (values are JSON): what a program needs to feed it and read it."""
    prep = settings.preprocessing
    return {
        "classes": list(head.classes),
        "preprocessing": {
            "resize": prep.resize,
            "crop": prep.crop,
            "interpolation": prep.interpolation,
            "draft": prep.draft,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "note": "shorter side to resize, center crop; mean/std are applied inside the graph",
        },
        "input": {
            "name": INPUT,
            "layout": "NHWC",
            "dtype": "uint8",
            "shape": ["batch", prep.crop, prep.crop, 3],
            "channels": "RGB",
        },
        "output": {SCORES: head.output, LABEL: "index into classes", "head": how},
        "precision": precision,
        "settings": settings.to_dict(),
        "featurebank_version": __version__,
        **extra,
    }


def _save(model: onnx.ModelProto, meta: dict, out: str) -> int:
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    with atomic_path(out) as tmp:
        onnx.save(model, tmp)
    return os.path.getsize(out)


def export(
    settings: ExtractionSettings,
    build_model,
    head: Head,
    out: str,
    *,
    store: EngineStore,
    precision: str = "fp32",
    calibration: Listing | None = None,
    int8: Int8 | None = None,
    labelled: list[tuple[str, str]] | None = None,
    extra: dict | None = None,
    max_pixels: int | None = None,
    threads: int | None = None,
) -> Exported:
    """Write ``head`` on the backbone of ``settings`` as one ONNX file ``out``.

    ``build_model()`` returns the torch backbone (called only when the engine folder lacks its ONNX file).
    ``precision="int8"``: the backbone is the int8 engine of ``settings`` when they are int8 already (a model
    trained on int8 features), else it is calibrated as ``extract --precision int8`` would on ``calibration``
    (the model's training images; ``int8`` says how many and the seed); then fp32 and int8 files are both run on
    ``labelled`` (path, class) images and their accuracies are returned."""

    started = time.perf_counter()
    if precision not in ONNX_PRECISIONS:
        raise InvalidValue(f"an export is fp32 or int8, not {precision}")
    refused = refusal(head.pipeline) if head.pipeline is not None else None
    if refused is not None:
        raise refused
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    layer = settings.layers[0]
    fp32_settings = settings_fp32(settings)
    crop = settings.preprocessing.crop
    fp32_engine = open_engine(fp32_settings, store, build_model, engine="onnxruntime", device="cpu")
    assert isinstance(fp32_engine, OnnxEngine)
    fp32_backbone = onnx.load(fp32_engine.path)
    head_onnx, how = head_model(
        head, _width(fp32_backbone, layer, head), _default_opset(fp32_backbone), fp32_backbone.ir_version
    )
    checked = check_head(head_onnx, head, _width(fp32_backbone, layer, head))
    fp32_model = assemble(fp32_backbone, layer, head_onnx, crop)
    info = {**(extra or {}), "head_check": checked}
    if precision == "fp32":
        meta = metadata(fp32_settings, head, "fp32", how, info)
        size = _save(fp32_model, meta, out)
        return Exported(
            os.path.abspath(out), size, "fp32", head.output, how, meta, seconds=round(time.perf_counter() - started, 2)
        )

    q_settings, calibration_fn = _int8_plan(settings, calibration, int8, max_pixels, threads)
    if q_settings.int8.scheme == "auto":  # int8 asked for a file: this CPU's scheme, kept (compare() says the cost)
        q_settings = prepare_int8(q_settings, store, build_model, calibration_fn, force=True).settings
    q_engine = open_engine(
        q_settings, store, build_model, engine="onnxruntime", device="cpu", calibration=calibration_fn
    )
    assert isinstance(q_engine, OnnxEngine)
    q_backbone = onnx.load(q_engine.path)
    if (_default_opset(q_backbone), q_backbone.ir_version) != (_default_opset(fp32_backbone), fp32_backbone.ir_version):
        head_onnx, _ = head_model(
            head, _width(fp32_backbone, layer, head), _default_opset(q_backbone), q_backbone.ir_version
        )
    q_model = assemble(q_backbone, layer, head_onnx, crop)
    accuracy = compare(fp32_model, q_model, labelled or [], head.classes, settings.preprocessing, max_pixels, threads)
    accuracy["source"] = calibration.source if calibration is not None else None
    meta = metadata(
        q_settings,
        head,
        "int8",
        how,
        {
            **info,
            "int8": {
                "calibration": q_engine.meta.get("calibration"),
                "cosine_to_fp32": q_engine.meta.get("cosine_to_fp32"),
                "accuracy": accuracy,
            },
        },
    )
    size = _save(q_model, meta, out)
    return Exported(
        os.path.abspath(out), size, "int8", head.output, how, meta, accuracy, round(time.perf_counter() - started, 2)
    )


def _int8_plan(settings: ExtractionSettings, calibration: Listing | None, int8: Int8 | None, max_pixels, threads):
    """The int8 settings and the calibration to make their engine with: a model trained on int8 features names
    its engine (found in the engine folder, never drawn again); else a draw from ``calibration`` exactly as
    ``extract --precision int8`` draws from its input."""

    if settings.precision == "int8":
        return settings, None
    if calibration is None or not calibration.items:
        raise InvalidValue(
            "int8 needs images to calibrate on: give --images DATA (labelled images, such as the training folder)"
        )
    q, files = int8_settings(replace(settings, precision="int8", int8=int8 or Int8()), calibration, None)

    def batches():
        return calibration_batches(files, q, max_pixels, threads)

    return q, batches


def compare(
    fp32_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    labelled: list[tuple[str, str]],
    classes: list[str],
    prep,
    max_pixels: int,
    threads: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Both files on the same decoded images: accuracy of each, and how often they name the same class."""
    import onnxruntime as ort

    index = {c: i for i, c in enumerate(classes)}
    labelled = [(p, index[c]) for p, c in labelled if c in index]
    if not labelled:
        raise InvalidValue("no labelled images to measure int8 against fp32 on: give --images DATA")
    sessions = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (fp32_model, int8_model)
    ]
    dataset = ImageDataset([p for p, _ in labelled], prep, max_pixels)
    y = np.array([c for _, c in labelled])
    preds: list[list[np.ndarray]] = [[], []]
    kept: list[int] = []
    first_failure = None
    for batch in ThreadBatches(dataset, batch_size, threads):
        if batch.failures and first_failure is None:
            i, reason, _ = batch.failures[0]
            first_failure = f"{labelled[i][0]}: {reason}"
        if not batch.indices:
            continue
        x = np.ascontiguousarray(batch.images.transpose(0, 2, 3, 1))
        for session, out in zip(sessions, preds):
            out.append(session.run([LABEL], {INPUT: x})[0])
        kept.extend(batch.indices)
    if not kept:
        raise InvalidValue(
            f"none of the {len(labelled)} labelled images could be read ({first_failure}): give --images DATA"
        )
    a, b, truth = np.concatenate(preds[0]), np.concatenate(preds[1]), y[kept]
    return {
        "images": int(len(kept)),
        "unreadable": int(len(labelled) - len(kept)),
        "fp32": round(float((a == truth).mean()), 6),
        "int8": round(float((b == truth).mean()), 6),
        "agreement": round(float((a == b).mean()), 6),
    }


# -- inputs -------------------------------------------------------------------------------------------------------
def cache_listing(cache_path: str) -> Listing:
    """The input of a cache as the cache knows it (rows with their labels, then files that failed), so that int8
    draws its calibration images exactly as ``extract --precision int8`` draws them from that input."""

    reader = CacheReader(cache_path)
    rows, fails = reader.rows, reader.failures
    items = [
        Item(str(p), str(label), str(gr), int(s), int(m))
        for p, label, gr, s, m in zip(rows["path"], rows["label"], rows["group"], rows["size"], rows["mtime_ns"])
    ]
    items += [Item(str(p), "", "", int(s), int(m)) for p, s, m in zip(fails["path"], fails["size"], fails["mtime_ns"])]
    return Listing(reader.attrs["root"], "cache", reader.attrs["source"], items)


def labelled_images(listing: Listing) -> list[tuple[str, str]]:
    return [(listing.full_path(i), i.label) for i in listing.items if i.label and not i.error]


def export_checkpoint(
    path: str,
    out: str,
    *,
    backbone: str | None = None,
    precision: str = "fp32",
    images=None,
    int8: Int8 | None = None,
    store: EngineStore | None = None,
    threads: int | None = None,
) -> Exported:
    """A checkpoint with its own head (``finetune``'s ``best.pth``, or an ImageNet checkpoint) as one ONNX file:
    the backbone's logits, softmaxed, as ``predict --head`` gives them. int8 calibrates on ``images``."""

    if not os.path.isfile(path):
        raise MissingFile(f"checkpoint not found: {path}")
    check_destination(out, [path], "the ONNX file")
    backbone = backbone or (file_metadata(path).get("featurebank") or {}).get("backbone")
    if not backbone:
        raise InvalidValue(f"{path} does not say its backbone: give -b BACKBONE")
    store = store or EngineStore(engine_dir_for())
    resolved = resolve(Request(backbone, path, layers=(output_node(backbone),)), store)
    classes = head_classes(backbone, path)
    listing = list_inputs([images] if isinstance(images, (str, os.PathLike)) else images) if images else None
    model_cache = {}

    def build_model():
        if "model" not in model_cache:
            model_cache["model"] = load_backbone(backbone, path).model
        return model_cache["model"]

    head = Head(classes, None, f"{backbone} head")
    extra = {
        "model": {
            "kind": "checkpoint",
            "file": os.path.basename(path),
            "backbone": backbone,
            "layer": resolved.settings.layers[0],
        }
    }
    return export(
        resolved.settings,
        build_model,
        head,
        out,
        store=store,
        precision=precision,
        calibration=listing,
        int8=int8,
        labelled=labelled_images(listing) if listing else None,
        extra=extra,
        threads=threads,
    )
