"""A fitted scikit-learn head → an ONNX graph from ``features`` to ``scores`` and ``label``.

Linear heads (logistic regression, ridge, linear SVM, LDA, with the pipeline's L2 normalization, scaler and PCA)
fold into one MatMul + Add; other classifiers go through skl2onnx; a checkpoint's own logits are softmaxed. Every
head is compared with scikit-learn on the training rows (``check_head``) before anything is written: a conversion
that disagrees is refused, never shipped.

Receives the scikit-learn objects it converts; never imports ``classifiers``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from embedder.kernel.errors import InvalidValue, first_line

INPUT, SCORES, LABEL, FAMILIARITY = "images", "scores", "label", "familiarity"
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
CONVERTED = ("SVC", "RandomForestClassifier", "ExtraTreesClassifier", "KNeighborsClassifier", "CosineKNeighbors")


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
    # the model file's calibration (``input``: probability or decision, ``temperature``), None for none
    calibration: dict | None = None
    reference: Any = None  # rows → (scores, kind) as ``Bundle.scores``: what the exported head must give
    # the model file's kept training rows (``classifiers.familiarity.Familiarity``: ``reference``, ``calibration``,
    # ``k``, ``p_values``), None where it keeps none: the graph's ``familiarity`` output
    familiarity: Any = None
    takes: int | None = None  # the vector length the classifier was fit on (None: not known); the backbone must give it

    @property
    def raw_output(self) -> str:
        """``probability`` or ``decision``: what the pipeline itself gives."""
        if self.pipeline is None or hasattr(self.pipeline, "predict_proba"):
            return "probability"
        return "decision"

    @property
    def output(self) -> str:
        """``probability`` or ``decision``: what ``Bundle.scores`` returns for this head (calibrated: probabilities)."""
        return "probability" if self.calibration is not None else self.raw_output


def _calibrated(g: Graph, s: str, head: Head) -> str:
    """The model file's calibration on the raw scores, as ``classifiers.calibration.apply_calibration``:
    ``softmax(z * beta)`` with ``z = log(p + 1e-12)`` for probabilities, the decision scores otherwise, and ``beta``
    ``1 / T``, times ``(clip(margin, low, high) / median) ** q`` for a margin temperature (the margin: the row's
    largest ``z`` minus its second, from TopK)."""
    cal = head.calibration
    if cal is None:
        return s
    z = g.op("Log", [g.op("Add", [s, g.const(np.float32(1e-12), "eps")])]) if cal["input"] == "probability" else s
    beta = g.const(np.float32(1.0 / float(cal["temperature"])), "beta")
    q = float(cal.get("margin_power") or 0.0)
    if q:
        top, index = g.name("top2"), g.name("top2_index")
        g.nodes.append(
            helper.make_node("TopK", [z, g.const(np.array([2], np.int64), "k")], [top, index], name=g.name("TopK"))
        )
        margin = g.op("MatMul", [top, g.const(np.array([[1.0], [-1.0]], np.float32), "difference")])
        low, high = (np.float32(v) for v in cal["margin_range"])
        margin = g.op("Max", [g.op("Min", [margin, g.const(high, "high")]), g.const(low, "low")])
        ratio = g.op("Div", [margin, g.const(np.float32(cal["margin_median"]), "median")])
        power = g.op("Exp", [g.op("Mul", [g.op("Log", [ratio]), g.const(np.float32(q), "power")])])
        beta = g.op("Mul", [power, beta])
    return g.op("Softmax", [g.op("Mul", [z, beta])], axis=1)


# -- the graph builder --------------------------------------------------------------------------------------------
class Graph:
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

    def write(self, g: Graph, x: str) -> str:
        if self.A is None:
            return x
        y = g.op("Mul" if self.A.ndim == 1 else "MatMul", [x, g.const(self.A.astype(np.float32), "A")])
        y = g.op("Add", [y, g.const(self.b.astype(np.float32), "b")])
        self.A, self.b = None, None
        return y


def _l2(g: Graph, x: str) -> str:
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


def _write_transforms(g: Graph, x: str, transforms: list) -> tuple[str, _Affine]:
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


def _probabilities_or_scores(g: Graph, d: str, n_classes: int, probability: bool) -> str:
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
    g = Graph("head/")
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
        raw = _probabilities_or_scores(g, affine.write(g, x), k, head.raw_output == "probability")
        model = g.model(inputs, _finish(g, _calibrated(g, raw, head), k, raw), opset, ir_version)
        return _with_familiarity(model, head), "folded"
    return _with_familiarity(_converted(g, affine.write(g, x), clf, head, width, opset, ir_version), head), "skl2onnx"


def _with_familiarity(model: onnx.ModelProto, head: Head) -> onnx.ModelProto:
    """``model`` with a third output, ``familiarity``, from the same ``features``: what
    ``classifiers.familiarity.Familiarity.p_values`` gives (the cosine distance to the ``k``-th nearest kept training
    row, placed among the kept rows' own distances: ``(1 + those at least as far) / (n + 1)``), so that a deployed
    model flags images unlike its training images as ``predict`` does. The kept rows travel in float16, as in the
    model file (2.5 MB at 1,000 rows of 1,280), and are made unit length again inside."""
    fam = head.familiarity
    if fam is None:
        return model
    g = Graph("familiarity/")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    tiny = g.const(np.float32(np.finfo(np.float32).tiny), "tiny")

    def unit(x: str, axis: int) -> str:
        """Rows (axis 1) or columns of length 1, as ``familiarity.unit_rows`` makes them: divided by their largest
        magnitude first, so that squares of 1e20 or 1e-24 neither overflow nor vanish in float32; zeros stay zeros."""
        axes = g.const(np.array([axis], np.int64), "axes")
        magnitude = g.op("Abs", [x])
        top = (  # ReduceMax takes its axes as an input from opset 18, as an attribute before
            g.op("ReduceMax", [magnitude, axes], keepdims=1)
            if opset >= 18
            else g.op("ReduceMax", [magnitude], axes=[axis], keepdims=1)
        )
        x = g.op("Div", [x, g.op("Max", [top, tiny])])
        norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [x, x]), axes], keepdims=1)])
        return g.op("Div", [x, g.op("Max", [norm, tiny])])

    rows = g.op("Cast", [g.const(np.asarray(fam.reference, np.float16).T, "kept_rows")], to=TensorProto.FLOAT)
    similarity = g.op("MatMul", [unit("features", 1), unit(rows, 0)])  # N x kept rows
    k = int(fam.k)
    top, index = g.name("top"), g.name("top_index")
    g.nodes.append(
        helper.make_node("TopK", [similarity, g.const(np.array([k], np.int64), "k")], [top, index], name=g.name("TopK"))
    )
    kth = g.op(
        "Slice",
        [
            top,
            g.const(np.array([k - 1], np.int64), "start"),
            g.const(np.array([k], np.int64), "end"),
            g.const(np.array([1], np.int64), "axis"),
        ],
    )
    distance = g.op("Sub", [g.const(np.float32(1.0), "one"), kth])  # N x 1
    # a row with NaN or inf (a backbone that overflowed): as far as can be, the least familiarity, as featurebank
    distance = g.op("Where", [g.op("IsNaN", [distance]), g.const(np.float32(np.inf), "far"), distance])
    calibration = np.asarray(fam.calibration, np.float32).reshape(1, -1)  # the kept rows' own, sorted
    at_least = g.op("Not", [g.op("Less", [g.const(calibration, "kept_distances"), distance])])
    count = g.op(
        "ReduceSum",
        [g.op("Cast", [at_least], to=TensorProto.FLOAT), g.const(np.array([1], np.int64), "axes")],
        keepdims=0,
    )
    n = calibration.shape[1]
    g.op("Div", [g.op("Add", [count, g.const(np.float32(1.0), "one")]), g.const(np.float32(n + 1), "n")], FAMILIARITY)
    model.graph.node.extend(g.nodes)
    model.graph.initializer.extend(g.inits)
    model.graph.output.append(helper.make_tensor_value_info(FAMILIARITY, TensorProto.FLOAT, ["batch"]))
    return model


def _finish(g: Graph, scores: str, k: int, raw: str | None = None) -> list:
    """``scores`` and their arg-max, ``label``: the graph's outputs. ``raw``: the scores before calibration, whose
    arg-max is the same class (one positive factor per row keeps the order) without float32 ties of nearly flat
    probabilities."""
    g.op("Identity", [scores], SCORES)
    g.op("ArgMax", [raw or SCORES], LABEL, axis=1, keepdims=0)
    return [
        helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["batch", k]),
        helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch"]),
    ]


def _converted(g: Graph, x: str, clf, head: Head, width: int, opset: int, ir_version: int) -> onnx.ModelProto:
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
    # a random forest's thresholds are midpoints between float32 values, kept in float64: rounded to float, one can
    # land on a feature's value and send its row the other way, so its trees compare in double as scikit-learn does.
    # Extra trees draw theirs uniformly (a float32 value falls between a threshold and its rounding about once in
    # 10^7 comparisons) and skl2onnx cannot give them double input (its output type is then wrong): in float, like
    # the rest, under check_head like every head
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
    post = Graph("head/post/")
    s = post.op("Cast", [probabilities.name], to=TensorProto.FLOAT)
    if kind == "SVC" and len(head.classes) == 2 and not hasattr(clf, "predict_proba"):
        s = post.op("Neg", [s])  # skl2onnx writes a binary SVC's decision as [d, -d]; Bundle.scores as [-d, d]
    tail = post.model(
        [probabilities], _finish(post, _calibrated(post, s, head), len(head.classes), s), opset, ir_version
    )
    pre.graph.ClearField("output")
    pre.graph.output.extend([clf_in])
    joined = compose.merge_models(pre, converted, io_map=[(clf_in.name, clf_in.name)], outputs=[probabilities.name])
    return used_opsets(compose.merge_models(joined, tail, io_map=[(probabilities.name, probabilities.name)]))


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
    if head.reference is not None:
        ref = np.asarray(head.reference(X)[0], dtype=np.float64)
    elif hasattr(head.pipeline, "predict_proba"):
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
    checked: dict[str, Any] = {"rows": int(len(X)), "max_difference": float(diff.max())}
    if head.familiarity is not None:
        checked["familiarity"] = _check_familiarity(session, head, X)
    return checked


def _check_familiarity(session, head: Head, X: np.ndarray) -> dict:
    """The graph's familiarity against ``Familiarity.p_values`` on the training rows given, the kept rows (always in
    the model file: random rows alone would all land at the floor) and noisy copies of them. A row may be one step
    of ``1 / (n + 1)`` apart, where its distance ties a kept row's own within float32 rounding (a kept row's
    distance to another is both's); further apart is a bug, refused like a head that disagrees."""
    kept = np.asarray(head.familiarity.reference[:256], dtype=np.float32)
    # near copies (cosine about 0.95 to their row): new images between the kept ones, at every familiarity
    noise = np.random.default_rng(0).normal(0.0, 0.3 / np.sqrt(max(kept.shape[1], 1)), kept.shape).astype(np.float32)
    X = np.concatenate([X, kept, kept + noise])
    got = session.run([FAMILIARITY], {"features": X})[0].astype(np.float64)
    ref = np.asarray(head.familiarity.p_values(X), dtype=np.float64)
    step = 1.0 / (len(head.familiarity.calibration) + 1)
    diff = np.abs(got - ref)
    beyond = int((diff > step + 1e-6).sum())
    if beyond:
        raise NotExportable(
            type(_transform_steps(head.pipeline)[1]).__name__,
            f"the exported familiarity disagrees with featurebank's on {beyond} of {len(X)} rows by more than a step "
            f"(largest difference {diff.max():.3g})",
        )
    return {
        "rows": int(len(X)),
        "rows_a_step_apart": int((diff > 1e-6).sum()),
        "reference_rows": len(head.familiarity.calibration),
    }


def used_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
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
