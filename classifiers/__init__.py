"""Classical classifiers on cached embeddings: the zoo, cross-validation reports, model files.

The names below are imported on first use, so that ``cv`` and ``classifiers`` do not wait for torch.
"""

from embedder.kernel.lazy import lazy_attributes

_EXPORTS = {
    "Bundle": "bundle",
    "evaluate": "bundle",
    "load_bundle": "bundle",
    "predict": "bundle",
    "predict_imagenet": "bundle",
    "pseudo_labels": "bundle",
    "SemiSupervised": "semi",
    "save_bundle": "bundle",
    "train": "bundle",
    "convert": "modelfile",
    "trust_types": "modelfile",
    "CVReport": "crossval",
    "cross_validate": "crossval",
    "make_splits": "crossval",
    "report_dict": "report.writer",
    "Selection": "selection",
    "select": "selection",
    "labels_of": "labels",
    "read_labels": "labels",
    "write_report": "report.writer",
    "ClassifierSpec": "zoo",
    "list_classifiers": "zoo",
    "make_classifier": "zoo",
    "parse_spec": "zoo",
    "register_classifier": "zoo",
    "unregister_classifier": "zoo",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
