"""Classical classifiers on cached embeddings: the zoo, cross-validation reports, model files.

The names below are imported on first use, so that ``cv`` and ``classifiers`` do not wait for torch.
"""

from typing import TYPE_CHECKING

from embedder.kernel.lazy import lazy_attributes, lazy_dir

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
__dir__ = lazy_dir(globals(), _EXPORTS)

if TYPE_CHECKING:  # the real names, for type checkers and editors; at run time each is imported on first use
    from classifiers.report.writer import report_dict, write_report

    from .bundle import Bundle, evaluate, load_bundle, predict, predict_imagenet, pseudo_labels, save_bundle, train
    from .crossval import CVReport, cross_validate, make_splits
    from .labels import labels_of, read_labels
    from .modelfile import convert, trust_types
    from .selection import Selection, select
    from .semi import SemiSupervised
    from .zoo import (
        ClassifierSpec,
        list_classifiers,
        make_classifier,
        parse_spec,
        register_classifier,
        unregister_classifier,
    )
